"""The Python side of every engine call: input and dtype checks, ``out=``, threads.

Every public converter ends in :func:`run`, which hands one box description (extents and
byte strides on both sides, blocked axes, cast) to the C++ engine.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

import numpy as np

from . import _core

__all__ = ["get_threads", "permute", "set_threads"]

MAX_NDIM = 8
MAX_THREADS = 1024  # the pool caps workers at 256; this bound keeps C ints safe

_F2 = np.dtype(np.float16)
_F4 = np.dtype(np.float32)
_F8 = np.dtype(np.float64)
_U1 = np.dtype(np.uint8)

_F = TypeVar("_F", bound=Callable[..., Any])


def fast_path(kind: str) -> Callable[[_F], _F]:
    """Decorator: the function, answered in C++ for its common call (``_core.FastPath``).

    The common call (an ndarray of a plain native dtype, the default or a named layout, no
    other options than ``dtype``, ``out`` and ``threads``) runs no Python bytecode, which
    with cold caches costs more than copying a small weight. Every other call goes to the
    decorated function unchanged. ``kind``: ``"permute"``, ``"conv"``, ``"depthwise"``,
    ``"fc"`` or ``"dense_reshape"`` (``target="rows"`` without a bias).
    """

    def wrap(fn: _F) -> _F:
        fast = _core.FastPath(fn, kind)
        functools.update_wrapper(fast, fn)
        return fast  # type: ignore[no-any-return]

    return wrap


MPS_KEEP = _MPS_KEEP = frozenset((_F4, _F2, _U1))
_lock = threading.Lock()
_threads: int | None = None


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_CPUS = _cpu_count()


def _is_bf16(dt: np.dtype) -> bool:
    return dt.itemsize == 2 and dt.name == "bfloat16"


def _cast_code(src: np.dtype, dst: np.dtype) -> int | None:
    """Engine code for a src -> dst element conversion, or None if not supported."""
    if src == dst:
        return _core.CAST_NONE
    if src == _F4 and dst == _F2:
        return _core.CAST_F32_F16
    if src == _F2 and dst == _F4:
        return _core.CAST_F16_F32
    if src == _F8 and dst == _F4:
        return _core.CAST_F64_F32
    if src == _F4 and _is_bf16(dst):
        return _core.CAST_F32_BF16
    if _is_bf16(src) and dst == _F4:
        return _core.CAST_BF16_F32
    return None


SUPPORTED_CASTS = (
    "float32->float16, float16->float32, float64->float32, float32->bfloat16, bfloat16->float32"
)


def set_threads(n: int | None) -> None:
    """Set the default number of threads for every conversion (None: back to the default).

    The default, when unset, is the environment variable ``MPSLAYOUT_NUM_THREADS`` if set,
    else the number of CPUs this process may run on.
    """
    global _threads
    if n is not None:
        n = _check_threads(n, "n")
    with _lock:
        _threads = n
        # the C++ fast path's threads=None; 0 sends it to the full path, which resolves it
        _core.set_default_threads(n if n is not None else _env_threads or 0)


def get_threads() -> int:
    """The number of threads a conversion uses when ``threads=None``.

    That is the value given to :func:`set_threads`, else ``MPSLAYOUT_NUM_THREADS`` (read
    once, at first use), else the number of CPUs this process may run on.
    """
    if _threads is not None:
        return _threads
    global _env_threads
    if _env_threads is None:
        _env_threads = _threads_from_env()
        with _lock:
            if _threads is None:
                _core.set_default_threads(_env_threads)
    return _env_threads


_env_threads: int | None = None


def _threads_from_env() -> int:
    env = os.environ.get("MPSLAYOUT_NUM_THREADS", "").strip()
    if not env:
        return _CPUS
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"MPSLAYOUT_NUM_THREADS must be a positive integer, got {env!r}")
    return n


def resolve_threads(threads: Any) -> int:
    """``threads=`` as a count: None means :func:`get_threads`."""
    return get_threads() if threads is None else _check_threads(threads)


def _check_threads(n: Any, name: str = "threads") -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int or None, got {type(n).__name__}")
    if n < 1 or n > MAX_THREADS:
        raise ValueError(f"{name} must be an int from 1 to {MAX_THREADS} or None, got {n}")
    return int(n)


_PLAIN = frozenset(
    np.dtype(t)
    for t in (
        np.float32,
        np.float16,
        np.float64,
        np.uint8,
        np.int8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.int64,
        np.uint64,
        np.bool_,
    )
)


def as_input(x: Any, name: str) -> np.ndarray:
    """``x`` as an ndarray whose elements the engine can move (1, 2, 4 or 8 bytes)."""
    a = x if type(x) is np.ndarray else np.asarray(x)
    dt = a.dtype
    if dt in _PLAIN and a.ndim <= MAX_NDIM:  # fast path for the usual numeric arrays
        return a
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise TypeError(f"{name} has dtype {dt}, which mpslayout cannot convert")
    # ml_dtypes' types (bfloat16, float8) have kind 'V' but a scalar type of their own
    raw_void = dt.kind == "V" and dt.type is np.void
    if raw_void or dt.kind in "USMm" or dt.itemsize not in (1, 2, 4, 8):
        raise TypeError(
            f"{name} has dtype {dt}; mpslayout moves numeric elements of 1, 2, 4 or 8 bytes"
        )
    if a.ndim > MAX_NDIM:
        raise ValueError(f"{name} has {a.ndim} dimensions; at most {MAX_NDIM} are supported")
    return a


def _same_dtype(dtype: Any, src: np.dtype) -> bool:
    try:
        return np.dtype(dtype) == src
    except TypeError:
        return False  # reported below, with the message for a bad dtype


def resolve_dtype(
    a: np.ndarray, dtype: Any, name: str, *, mps: bool
) -> tuple[np.ndarray, np.dtype, int]:
    """Returns (source array, output dtype, cast code).

    ``mps=True`` applies the converters' default: float32/float16/bfloat16/uint8 are kept,
    float64 becomes float32, and anything else is refused (MPS has no such weights).
    """
    src = a.dtype
    if dtype is None and src in _MPS_KEEP:  # fast path
        return a, src, _core.CAST_NONE
    if not src.isnative and src.itemsize > 1:
        if dtype is None and not mps:
            return a, src, _core.CAST_NONE  # bytes move unchanged, as numpy's transpose does
        if dtype is not None and _same_dtype(dtype, src):
            return a, src, _core.CAST_NONE  # asked for its own byte order: nothing to cast
        a = a.astype(src.newbyteorder("="))
        src = a.dtype
    if dtype is None:
        if not mps:
            return a, src, _core.CAST_NONE
        if src == _F8:
            return a, _F4, _core.CAST_F64_F32
        if src in (_F4, _F2, _U1) or _is_bf16(src):
            return a, src, _core.CAST_NONE
        raise TypeError(
            f"{name} has dtype {src}; MPS weights are float32, float16 or uint8 "
            "(float64 is converted to float32): cast it first or pass dtype="
        )
    if isinstance(dtype, str) and dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("dtype='bfloat16' needs the ml_dtypes package") from None
        dtype = ml_dtypes.bfloat16
    try:
        out_dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a numpy dtype, got {dtype!r}") from None
    code = _cast_code(src, out_dt)
    if code is None and not out_dt.isnative and out_dt.itemsize > 1:
        raise TypeError(
            f"cannot convert {name} from {src} to {out_dt}: the engine writes native byte "
            f"order; pass dtype={out_dt.newbyteorder('=')} and call .byteswap() on the result"
        )
    if code is None:
        raise TypeError(
            f"cannot convert {name} from {src} to {out_dt}: supported casts are {SUPPORTED_CASTS}"
        )
    return a, out_dt, code


def prepare_out(out: Any, shape: tuple[int, ...], dtype: np.dtype, src: np.ndarray) -> np.ndarray:
    """A fresh C-contiguous result, or ``out`` after checking it fits exactly.

    Overlap with the input is refused by the engine itself, before anything is written.
    """
    if out is None:
        return np.empty(shape, dtype=dtype)
    if type(out) is not np.ndarray and not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    flags = out.flags
    if not flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not flags.writeable:
        raise ValueError("out is read-only")
    return out


def check_overlap(out: np.ndarray, src: np.ndarray) -> None:
    """For results filled by numpy rather than the engine."""
    if out.size and src.size and np.may_share_memory(out, src):
        raise ValueError("out overlaps the input; pass a separate array")


def run(
    src: np.ndarray,
    out: np.ndarray,
    shape: Sequence[int],
    src_strides: Sequence[int],
    dst_strides: Sequence[int] | None = None,
    *,
    src_offset: int = 0,
    bounds: Sequence[tuple[int, int, int, int, bool]] = (),
    cast: int = 0,
    threads: int | None = None,
) -> np.ndarray:
    """Copy the box ``shape`` of ``src`` (byte strides, offset) into ``out`` and return it.

    ``dst_strides`` (bytes) defaults to the C-contiguous strides of ``shape`` in ``out``.
    """
    if threads is None:
        n = _threads if _threads is not None else get_threads()
    else:
        n = _check_threads(threads)
    # empty dst_strides: the engine uses the C-contiguous strides of `shape`
    _core.copy(src, out, shape, src_strides, dst_strides or (), src_offset, 0, bounds, cast, n)
    return out


_IDENTITY = [list(range(n)) for n in range(MAX_NDIM + 1)]


def normalize_axes(axes: Any, ndim: int, name: str = "axes") -> tuple[int, ...]:
    if type(axes) in (tuple, list) and len(axes) == ndim:
        try:
            if sorted(axes) == _IDENTITY[ndim] and all(type(a) is int for a in axes):
                return tuple(axes)  # the common case: non-negative Python ints
        except TypeError:
            pass
    try:
        seq = tuple(axes)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type(axes).__name__}") from None
    if len(seq) != ndim:
        raise ValueError(f"{name} must be a permutation of range({ndim}), got {seq}")
    result = []
    for ax in seq:
        if isinstance(ax, (bool, np.bool_)) or not isinstance(ax, (int, np.integer)):
            raise TypeError(f"{name} must be a sequence of ints, got {seq}")
        if not -ndim <= ax < ndim:
            raise ValueError(f"{name} must be a permutation of range({ndim}), got {seq}")
        result.append(int(ax) % ndim if ndim else 0)
    if len(set(result)) != ndim:
        raise ValueError(f"{name} must be a permutation of range({ndim}), got {seq}")
    return tuple(result)


@fast_path("permute")
def permute(
    x: Any,
    axes: Sequence[int],
    *,
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Permute the axes of ``x`` into a new C-contiguous array, optionally casting.

    Equals ``np.ascontiguousarray(np.transpose(x, axes)).astype(dtype)``, bit for bit
    (casts round as numpy's ``astype``). ``axes`` is a permutation of ``range(x.ndim)``.
    """
    a = as_input(x, "x")
    perm = normalize_axes(axes, a.ndim)
    a, out_dt, cast = resolve_dtype(a, dtype, "x", mps=False)
    sh, st = a.shape, a.strides
    shape = tuple([sh[p] for p in perm])
    result = prepare_out(out, shape, out_dt, a)
    return run(a, result, shape, [st[p] for p in perm], cast=cast, threads=threads)


def bfloat16_bits_to_float32(bits: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The float32 values of bfloat16 numbers given as their raw bits, without ml_dtypes.

    ``bits``: an unsigned 16-bit array (any strides, native or little-endian byte order).
    Equals ``(bits.astype(np.uint32) << 16).view(np.float32)`` (every bfloat16 value is
    exact in float32; NaN payloads and signs are kept), bit for bit what ml_dtypes'
    ``astype(np.float32)`` gives. Runs the engine's bfloat16 -> float32 path.
    """
    if bits.dtype.kind != "u" or bits.dtype.itemsize != 2:
        raise TypeError(f"bits must be uint16 (raw bfloat16), got {bits.dtype}")
    if not bits.dtype.isnative:
        bits = bits.astype(bits.dtype.newbyteorder("="))
    out = np.empty(bits.shape, np.float32)
    if out.size:
        run(bits, out, bits.shape, bits.strides, cast=_core.CAST_BF16_F32, threads=threads)
    return out
