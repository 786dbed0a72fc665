"""MPSNNPad (MPSNNGraphNodes.h's MPSNNPadNode; MPSCNNKernel.h's MPSNNPad): enlarge an
image by ``paddingSizeBefore``/``paddingSizeAfter`` pixels, reading outside the source by
the kernel's ``MPSImageEdgeMode`` (MPSCoreTypes.h):

=================  ===================================================  ================
mode               source index read for out-of-range ``i`` (size n)    ONNX Pad mode
=================  ===================================================  ================
zero / constant    none: the fill value (0 for zero, ``fillValue``)     constant
clamp              ``clip(i, 0, n - 1)``                                 edge
mirror             reflect about the edge pixel centres (edge not       reflect
                   repeated): period ``2 (n - 1)``
=================  ===================================================  ================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import _finish, _gather, _out_dtype, _padded
from .image import Image

__all__ = ["EDGE_MODES", "pad"]

EDGE_MODES = ("zero", "constant", "clamp", "mirror")


def _source_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each of the ``before + n + after`` output positions, the source index it reads
    (``n``, the fill row or column of ``_padded``, where it reads the fill value)."""
    i = np.arange(-before, n + after)
    if mode in ("zero", "constant"):
        return np.where((i >= 0) & (i < n), i, n)
    if mode == "clamp":
        return np.clip(i, 0, n - 1)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    r = np.mod(i, period)
    return np.where(r < n, r, period - r)


def pad(src: Image, before: tuple[int, int], after: tuple[int, int], mode: str = "zero",
        fill: float = 0.0, *, out_dtype: Any = None) -> Image:
    """MPSNNPad of ``src`` by ``before``/``after`` = (top, left)/(bottom, right) pixels,
    edge mode ``mode`` (module docstring), ``fill`` for "constant".

    Equals ``np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), {"zero": "constant", "constant":
    "constant", "clamp": "edge", "mirror": "reflect"}[mode], ...)`` on the NHWC float64
    values, rounded once to the storage type.
    """
    if mode not in EDGE_MODES:
        raise ValueError(f"mode must be one of {EDGE_MODES}, got {mode!r}")
    sizes = (*before, *after)
    if any(int(p) != p or p < 0 for p in sizes):
        raise ValueError(f"before and after must be pixel counts >= 0, got {before}, {after}")
    x = src.nhwc()
    if mode == "mirror" and any(p >= n for p, n in zip(sizes, (x.shape[1], x.shape[2]) * 2)
                                if n > 1):
        raise ValueError(f"mirror padding {sizes} needs each pad smaller than the image "
                         f"({x.shape[1]}x{x.shape[2]})")
    value = 0.0 if mode == "zero" else float(fill)
    rows = _source_index(x.shape[1], int(before[0]), int(after[0]), mode)
    cols = _source_index(x.shape[2], int(before[1]), int(after[1]), mode)
    return _finish(_gather(_padded(x, value), rows, cols), _out_dtype(src, out_dtype))
