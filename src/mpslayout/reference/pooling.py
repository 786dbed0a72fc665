"""MPSCNNPoolingMax and MPSCNNPoolingAverage (global pooling is a window the size of the
source), windows placed like a convolution's (docs/layouts.md section 1, Convolution weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import F8, _check_dest, _conv_index, _finish, _gather, _out_dtype, _padded, _pair
from .image import Image


def pooling(src: Image, mode: str, *, kernel: Sequence[int], dest_size: Sequence[int],
            offset: Sequence[int] = (0, 0), strides: Sequence[int] = (1, 1),
            dilation: Sequence[int] = (1, 1), zero_pad_size: Sequence[int] = (0, 0),
            out_dtype: Any = None) -> Image:
    """MPSCNNPoolingMax / MPSCNNPoolingAverage over a ``kernel`` = (kW, kH) window placed
    like a convolution's (offset, strides, dilation). Taps outside the source are ignored:
    max of the taps inside, mean of the taps inside, except that an average also counts
    taps at most ``zero_pad_size`` = (x, y) pixels outside the source, as zeros."""
    if mode not in ("max", "average"):
        raise ValueError(f"mode must be 'max' or 'average', got {mode!r}")
    kw, kh = _pair(kernel, "kernel", 1)
    off, st = _pair(offset, "offset"), _pair(strides, "strides", 1)
    dil, (ow, oh) = _pair(dilation, "dilation", 1), _check_dest(dest_size)
    zx, zy = _pair(zero_pad_size, "zero_pad_size", 0)
    x = src.nhwc()
    n, c = src.batch, int(src.channels)
    xp = _padded(x, -np.inf if mode == "max" else 0.0)
    acc = np.full((n, oh, ow, c), -np.inf if mode == "max" else 0.0, F8)
    count = np.zeros((oh, ow), F8)
    for ty in range(kh):
        iy, vy = _conv_index(oh, src.height, kh, st[1], off[1], dil[1], ty)
        pos_y = np.arange(oh) * st[1] + off[1] - (kh // 2) * dil[1] + ty * dil[1]
        in_y = (pos_y >= -zy) & (pos_y < src.height + zy)
        for tx in range(kw):
            ix, vx = _conv_index(ow, src.width, kw, st[0], off[0], dil[0], tx)
            if mode == "max":
                if vy.any() and vx.any():
                    np.maximum(acc, _gather(xp, iy, ix), out=acc)
                continue
            pos_x = np.arange(ow) * st[0] + off[0] - (kw // 2) * dil[0] + tx * dil[0]
            in_x = (pos_x >= -zx) & (pos_x < src.width + zx)
            count += in_y[:, None] & in_x[None, :]
            if vy.any() and vx.any():
                acc += _gather(xp, iy, ix)
    if mode == "max":
        acc = np.where(np.isneginf(acc), 0.0, acc)  # a window wholly outside the source
    else:
        acc = acc / np.maximum(count, 1.0)[None, :, :, None]
    return _finish(acc, _out_dtype(src, out_dtype))
