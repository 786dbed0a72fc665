"""MPSCNNUpsamplingNearest and MPSCNNUpsamplingBilinear: enlarge by integer factors
(``integerScaleFactorX/Y`` >= 1, MPSCNNUpsampling.h).

MPSCNNUpsampling.h fixes the factors and the ``alignCorners`` flag but not the sampling
coordinate; the coordinates below are the two conventions the flag names, as every
framework that has the flag defines them (destination index ``o``, factor ``s``, source
size ``n``, destination size ``m = n*s``):

- nearest: source ``floor(o / s)``;
- bilinear, alignCorners NO: source coordinate ``(o + 0.5)/s - 0.5`` (pixel centres
  aligned), clamped to ``[0, n - 1]``;
- bilinear, alignCorners YES: ``o * (n - 1)/(m - 1)`` (corner pixels aligned; 0 if m = 1).

Bilinear weights are the distances to the two neighbouring source pixels on each axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import _finish, _out_dtype, _pair
from .image import Image

__all__ = ["bilinear_coordinates", "upsampling"]


def bilinear_coordinates(n: int, s: int, align_corners: bool) -> np.ndarray:
    """The source coordinate of each of the ``n*s`` destination positions (docstring)."""
    m = n * s
    o = np.arange(m, dtype=np.float64)
    if align_corners:
        return o * ((n - 1) / (m - 1)) if m > 1 else np.zeros(m)
    return np.clip((o + 0.5) / s - 0.5, 0.0, n - 1)


def _lerp_axis(x: np.ndarray, axis: int, s: int, align_corners: bool) -> np.ndarray:
    n = x.shape[axis]
    pos = bilinear_coordinates(n, s, align_corners)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    t = pos - lo
    shape = [1] * x.ndim
    shape[axis] = -1
    t = t.reshape(shape)
    return np.take(x, lo, axis=axis) * (1.0 - t) + np.take(x, hi, axis=axis) * t


def upsampling(src: Image, mode: str, *, scale: Sequence[int], align_corners: bool = False,
               out_dtype: Any = None) -> Image:
    """MPSCNNUpsampling ``mode`` ("nearest" or "bilinear") by ``scale`` = (sx, sy).

    nearest equals ``x.repeat(sy, axis=1).repeat(sx, axis=2)`` on NHWC.
    """
    sx, sy = _pair(scale, "scale", 1)
    x = src.nhwc()
    if mode == "nearest":
        y = x.repeat(sy, axis=1).repeat(sx, axis=2)
    elif mode == "bilinear":
        y = _lerp_axis(_lerp_axis(x, 1, sy, bool(align_corners)), 2, sx, bool(align_corners))
    else:
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    return _finish(y, _out_dtype(src, out_dtype))
