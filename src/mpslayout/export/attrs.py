"""Typed, checked reads of the hyper-parameters a model file gives (ONNX attributes, Keras
configs). A file that says ``strides = 0``, gives a list where an int belongs or a float
where a pair belongs is malformed: it is refused with a ValueError that names the layer and
the field, before any arithmetic on the value can fail with something less clear.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_float", "as_int", "as_pair", "as_text"]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def as_int(v: Any, where: str, *, minimum: int | None = None) -> int:
    """``v`` as an int (not a bool, float or list), at least ``minimum``."""
    if not _is_int(v):
        raise ValueError(f"{where} is {v!r}, not an integer")
    if minimum is not None and v < minimum:
        raise ValueError(f"{where} is {v}, must be >= {minimum}")
    return int(v)


def as_pair(v: Any, where: str, *, minimum: int | None = None,
            scalar: bool = False) -> tuple[int, int]:
    """``v`` as two ints (height, width); ``scalar=True`` also accepts one int for both."""
    if scalar and _is_int(v):
        n = as_int(v, where, minimum=minimum)
        return n, n
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"{where} is {v!r}, not a pair of integers (height, width)")
    return (as_int(v[0], f"{where}[0]", minimum=minimum),
            as_int(v[1], f"{where}[1]", minimum=minimum))


def as_float(v: Any, where: str) -> float:
    """``v`` as a finite float (ints accepted)."""
    if not (_is_int(v) or isinstance(v, (float, np.floating))) or not np.isfinite(v):
        raise ValueError(f"{where} is {v!r}, not a finite number")
    return float(v)


def as_text(v: Any, where: str) -> str:
    """``v`` as text; bytes must be UTF-8."""
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{where} is {v!r}, not UTF-8 text") from None
    if not isinstance(v, str):
        raise ValueError(f"{where} is {v!r}, not text")
    return v
