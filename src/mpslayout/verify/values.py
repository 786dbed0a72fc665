"""Tensors as the executor holds them: MPS images, and the way back to the oracle's
shapes: 4-D NCHW; (N, K) for a flattened image or a vector (a 1x1 image of K channels);
(N, T, C) for a sequence (an image 1 pixel high and T wide, of C channels); (N, C, L) for a
channel-first sequence (a Conv1d's, :mod:`.sequences`: an image 1 pixel high and L wide, of
C channels, ``flat`` "NCW")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import reference as R

__all__ = ["Val", "as_image", "as_oracle", "as_val"]


@dataclass
class Val:
    """An MPS image; ``flat`` when the graph's tensor is that image flattened (2-D), in
    ``flat`` order ("CHW" or "HWC"), or "NCW" when it is a channel-first 3-D sequence."""

    image: R.Image | None
    flat: str | None = None


def as_val(a: np.ndarray, storage: np.dtype, ncw: bool = False) -> Val:
    """The oracle's value as an image (module docstring); ``ncw``: a 3-D ``a`` is
    (N, C, L)."""
    if a.dtype.kind != "f" or a.size == 0:
        return Val(None)
    if a.ndim == 3 and ncw:
        return Val(R.Image.from_nchw(a[:, :, None, :], storage), "NCW")
    if a.ndim == 4:
        return Val(R.Image.from_nchw(a, storage))
    if a.ndim == 3:
        return Val(R.Image.from_nhwc(a[:, None], storage))
    if a.ndim == 2:
        return Val(R.Image.from_nchw(a.reshape(*a.shape, 1, 1), storage), "CHW")
    return Val(None)


def as_image(nhwc: np.ndarray) -> R.Image:
    """A float32 image of a float64 NHWC bound (inf stays inf)."""
    with np.errstate(over="ignore"):
        return R.Image.from_nhwc(nhwc, np.float32)


def as_oracle(v: Val, like: np.ndarray) -> np.ndarray | None:
    """The reference value in the shape of the oracle's tensor, float64; None if the two
    cannot be matched."""
    if v.image is None:
        return None
    img = v.image
    if like.ndim == 4:
        a = img.nchw()
    elif like.ndim == 3 and v.flat == "NCW":
        if img.height != 1:
            return None
        a = img.nchw()[:, :, 0, :]
    elif like.ndim == 3:
        a = img.nhwc().reshape(img.batch, img.height * img.width, img.channels)
    elif like.ndim == 2:
        a = (img.nhwc() if v.flat == "HWC" else img.nchw()).reshape(img.batch, -1)
    else:
        return None
    return a if a.shape == like.shape else None
