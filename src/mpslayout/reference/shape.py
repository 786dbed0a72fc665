"""Kernels that move values without arithmetic: concatenation along channels (whole
4-channel slices, as MPS writes them) and MPSNNReshape (HWC order, section 6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import F8, _finish, _out_dtype
from .image import Image


def reshape(src: Image, shape: Sequence[int], *, out_dtype: Any = None) -> Image:
    """MPSNNReshape to (H, W, C), element order channels fastest (HWC, section 6):
    destination (y, x, c) is value ``(y*W + x)*C + c`` of the source read in HWC order."""
    h, w, c = (int(v) for v in shape)
    if h * w * c != src.height * src.width * int(src.channels):
        raise ValueError(f"cannot reshape a {src.height}x{src.width}x{src.channels} image to "
                         f"{h}x{w}x{c}")
    return _finish(src.nhwc().reshape(src.batch, h, w, c), _out_dtype(src, out_dtype))


def concatenate(images: Sequence[Image], *, offsets: Sequence[int] | None = None,
                out_dtype: Any = None) -> Image:
    """Concatenation along channels, as MPS does it: each source is written into one
    destination at ``destinationFeatureChannelOffset`` (by default the running sum of the
    channel counts). MPS writes whole slices, so every offset must be a multiple of 4."""
    imgs = list(images)
    if not imgs:
        raise ValueError("concatenate needs at least one image")
    if offsets is None:
        offs, total = [], 0
        for im in imgs:
            offs.append(total)
            total += int(im.channels)
    else:
        offs = [int(o) for o in offsets]
        if len(offs) != len(imgs):
            raise ValueError(f"{len(offs)} offsets for {len(imgs)} images")
    for i, (im, off) in enumerate(zip(imgs, offs)):
        if off % 4:
            raise ValueError(
                f"image {i} would start at channel {off}: MPS writes a destination feature "
                "channel offset in whole 4-channel slices, so it must be a multiple of 4 "
                "(pad the channels before it to a multiple of 4)")
        if im.shape[:3] != imgs[0].shape[:3]:
            raise ValueError(f"image {i} is {im.shape[:3]} (N, H, W), image 0 "
                             f"{imgs[0].shape[:3]}")
    c = max(off + int(im.channels) for im, off in zip(imgs, offs))
    n, h, w = imgs[0].shape[:3]
    out = np.zeros((n, h, w, c), F8)
    written = np.zeros(c, bool)
    for im, off in zip(imgs, offs):
        sl = slice(off, off + int(im.channels))
        if written[sl].any():
            raise ValueError(f"images overlap at channel offset {off}")
        written[sl] = True
        out[..., sl] = im.nhwc()
    return _finish(out, _out_dtype(imgs[0], out_dtype))
