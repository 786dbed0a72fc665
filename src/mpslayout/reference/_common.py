"""What every reference kernel shares: argument checks, the float64 working copy, the
single rounding to the storage type, and the source index of a kernel tap (docs/layouts.md
section 1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .image import Image, storage_dtype, to_slices

Pair = tuple[int, int]
F8 = np.float64


def _pair(v: Any, name: str, minimum: int | None = None) -> Pair:
    try:
        x, y = (int(t) for t in v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (x, y) pair of ints, got {v!r}") from None
    if minimum is not None and (x < minimum or y < minimum):
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return x, y


def _out_dtype(src: Image, out_dtype: Any) -> np.dtype:
    return src.dtype if out_dtype is None else storage_dtype(out_dtype)


def _finish(acc: np.ndarray, out_dtype: np.dtype) -> Image:
    """Round a float64 NHWC result once to the storage type, padding channels zero."""
    return Image(to_slices(acc, out_dtype), int(acc.shape[3]))


def _weights(w: Any, ndim: int, name: str) -> np.ndarray:
    a = np.asarray(w)
    if a.ndim != ndim or a.dtype.kind != "f":
        raise ValueError(f"{name} must be a {ndim}-D float array, got {a.dtype}{list(a.shape)}")
    return a.astype(F8)


def _bias(b: Any, n: int) -> np.ndarray | None:
    return None if b is None else _vector(b, n, "bias")


def _vector(v: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.shape != (n,) or a.dtype.kind != "f":
        raise ValueError(f"{name} must be a float vector of length {n}, got "
                         f"{a.dtype}{list(a.shape)}")
    return a.astype(F8)


def _padded(x: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """NHWC with one extra row and column of ``fill``: the target of out-of-range taps."""
    n, h, w, c = x.shape
    xp = np.full((n, h + 1, w + 1, c), fill, x.dtype)
    xp[:, :h, :w] = x
    return xp


def _conv_index(n_out: int, n_in: int, k: int, stride: int, offset: int, dilation: int,
                tap: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index of ``tap`` for every destination index along one axis (section 1):
    ``o*stride + offset - (k/2)*dilation + tap*dilation``; out-of-range ones -> ``n_in``."""
    pos = np.arange(n_out) * stride + offset - (k // 2) * dilation + tap * dilation
    valid = (pos >= 0) & (pos < n_in)
    return np.where(valid, pos, n_in), valid


def _transposed_index(n_out: int, n_in: int, k: int, stride: int, kernel_offset: int,
                      dilation: int, tap: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index of ``tap`` in a transposed convolution: position
    ``o + kernelOffset - (k/2)*d + tap*d`` of the stride-dilated source, which holds
    source pixel ``p/stride`` where ``p % stride == 0`` and zeros elsewhere."""
    pos = np.arange(n_out) + kernel_offset - (k // 2) * dilation + tap * dilation
    src = pos // stride
    valid = (pos >= 0) & (pos % stride == 0) & (src < n_in)
    return np.where(valid, src, n_in), valid


def _gather(xp: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """(N, OH, OW, C) slab of padded NHWC ``xp`` at rows ``iy`` and columns ``ix``."""
    return xp[:, iy[:, None], ix[None, :], :]


def _check_dest(dest_size: Any) -> Pair:
    return _pair(dest_size, "dest_size", minimum=1)
