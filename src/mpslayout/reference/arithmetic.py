"""MPSCNNAdd, MPSCNNSubtract, MPSCNNMultiply and MPSCNNDivide (MPSCNNMath.h).

``result = clamp((primaryScale*x) OP (secondaryScale*y) + bias, minimumValue,
maximumValue)`` per destination element, where ``x`` and ``y`` are read with the
broadcast strides of each source: destination pixel (px, py), feature channel f reads
the primary at ``(px*primaryStrideInPixelsX, py*primaryStrideInPixelsY,
f*primaryStrideInFeatureChannels)`` and the secondary likewise. The only strides MPS
supports are 0 and 1: stride 0 reads column 0, row 0 or feature channel 0 everywhere
(all three 0 make the source a scalar), stride 1 reads the same position. Images are
processed image by image, so both sources have the destination's batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import F8, _finish, _out_dtype
from .image import Image

__all__ = ["ARITHMETIC", "arithmetic"]

ARITHMETIC = ("add", "subtract", "multiply", "divide")
Strides = tuple[int, int, int]


def _strides(v: Any, name: str) -> Strides:
    try:
        sx, sy, sc = (int(t) for t in v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be (x, y, feature_channels), got {v!r}") from None
    if any(s not in (0, 1) for s in (sx, sy, sc)):
        raise ValueError(f"{name}: MPS supports broadcast strides 0 or 1 only, got {v!r}")
    return sx, sy, sc


def _extent(a: Image, b: Image, sa: Strides, sb: Strides) -> tuple[int, int, int]:
    """Destination (H, W, C): the size of a source read with stride 1 on that axis."""
    out = []
    for axis, (ea, eb), (ta, tb) in zip(("width", "height", "channels"),
                                        ((a.width, b.width), (a.height, b.height),
                                         (int(a.channels), int(b.channels))),
                                        zip(sa, sb)):
        sizes = {e for e, t in ((ea, ta), (eb, tb)) if t == 1}
        if len(sizes) > 1:
            raise ValueError(f"both sources are read with stride 1 along {axis} but have "
                             f"{ea} and {eb}")
        out.append(sizes.pop() if sizes else 1)
    w, h, c = out
    return h, w, c


def _read(img: Image, s: Strides, h: int, w: int, c: int) -> np.ndarray:
    x = img.nhwc()
    sx, sy, sc = s
    need = ((img.height, h, sy, "height"), (img.width, w, sx, "width"),
            (int(img.channels), c, sc, "channels"))
    for have, want, stride, axis in need:
        if stride and have < want:
            raise ValueError(f"a source of {axis} {have} read with stride 1 cannot cover "
                             f"the destination's {want}")
    x = x[:, :h if sy else 1, :w if sx else 1, :c if sc else 1]
    return x


def arithmetic(op: str, primary: Image, secondary: Image, *,
               primary_strides: Sequence[int] = (1, 1, 1),
               secondary_strides: Sequence[int] = (1, 1, 1), primary_scale: float = 1.0,
               secondary_scale: float = 1.0, bias: float = 0.0,
               minimum: float = -np.inf, maximum: float = np.inf,
               dest_shape: Sequence[int] | None = None, out_dtype: Any = None) -> Image:
    """MPSCNNArithmetic ``op`` ("add", "subtract", "multiply", "divide") of two images with
    broadcast strides ``(x, y, feature_channels)``, each 0 or 1 (module docstring).

    ``dest_shape`` = (H, W, C) of the destination; by default the extent of the sources
    read with stride 1 on each axis (1 where both have stride 0). With all strides 1 it
    equals ``clip(ps*a OP ss*b + bias, minimum, maximum)`` on same-shaped images.
    """
    if op not in ARITHMETIC:
        raise ValueError(f"op must be one of {ARITHMETIC}, got {op!r}")
    sa = _strides(primary_strides, "primary_strides")
    sb = _strides(secondary_strides, "secondary_strides")
    if primary.batch != secondary.batch:
        raise ValueError(f"MPS arithmetic reads the sources image by image: batch "
                         f"{primary.batch} and {secondary.batch} differ")
    h, w, c = (_extent(primary, secondary, sa, sb) if dest_shape is None
               else (int(v) for v in dest_shape))
    x = float(primary_scale) * _read(primary, sa, h, w, c)
    y = float(secondary_scale) * _read(secondary, sb, h, w, c)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
             "divide": np.divide}[op](x, y)
        r = np.clip(r + float(bias), float(minimum), float(maximum))
    r = np.broadcast_to(r, (primary.batch, h, w, c)).astype(F8)
    return _finish(r, _out_dtype(primary, out_dtype))
