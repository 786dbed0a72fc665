from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__version__: str
CAST_NONE: int
CAST_F32_F16: int
CAST_F16_F32: int
CAST_F64_F32: int
CAST_F32_BF16: int
CAST_BF16_F32: int

def copy(
    src: np.ndarray,
    dst: np.ndarray,
    shape: Sequence[int],
    src_strides: Sequence[int],
    dst_strides: Sequence[int],
    src_offset: int = 0,
    dst_offset: int = 0,
    bounds: Sequence[tuple[int, int, int, int, bool]] = ...,
    cast: int = 0,
    threads: int = 1,
) -> None: ...
def plan(
    src: np.ndarray,
    dst: np.ndarray,
    shape: Sequence[int],
    src_strides: Sequence[int],
    dst_strides: Sequence[int],
    src_offset: int = 0,
    dst_offset: int = 0,
    bounds: Sequence[tuple[int, int, int, int, bool]] = ...,
    cast: int = 0,
) -> str: ...
def fast_permute(
    x: object, axes: object, out: object, threads: object, mode: int, dtype: object
) -> np.ndarray | None: ...

class FastPath:
    """A public converter whose common call is answered in C++ (engine.fast_path)."""

    __wrapped__: Callable[..., Any]
    def __init__(self, full: Callable[..., Any], kind: str) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

def set_default_threads(n: int) -> None: ...
def isa() -> str: ...
def available_isas() -> list[str]: ...
def hardware_threads() -> int: ...
