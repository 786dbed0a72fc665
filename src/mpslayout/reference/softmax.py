"""MPSCNNSoftMax and MPSCNNLogSoftMax: along the feature channels of each pixel
(MPSCNNSoftMax.h)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import _finish, _out_dtype
from .image import Image

__all__ = ["log_softmax", "softmax"]


def softmax(src: Image, *, out_dtype: Any = None) -> Image:
    """``e^(x_c - max) / sum_k e^(x_k - max)`` over the channels c of each pixel."""
    x = src.nhwc()
    e = np.exp(x - x.max(axis=3, keepdims=True))
    return _finish(e / e.sum(axis=3, keepdims=True), _out_dtype(src, out_dtype))


def log_softmax(src: Image, *, out_dtype: Any = None) -> Image:
    """``x_c - max - log(sum_k e^(x_k - max))`` over the channels of each pixel."""
    x = src.nhwc()
    z = x - x.max(axis=3, keepdims=True)
    return _finish(z - np.log(np.exp(z).sum(axis=3, keepdims=True)),
                   _out_dtype(src, out_dtype))
