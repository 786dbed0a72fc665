"""Kernels along the feature channels of each pixel: MPSCNNSoftMax, MPSCNNLogSoftMax
(MPSCNNSoftMax.h) and MPSNNReduceFeatureChannelsMean/Sum/Max/Min (MPSNNReduce.h)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import _finish, _out_dtype
from .image import Image

__all__ = ["log_softmax", "reduce_channels", "softmax"]


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


_REDUCE = {"mean": np.mean, "sum": np.sum, "max": np.max, "min": np.min}


def reduce_channels(src: Image, mode: str, *, out_dtype: Any = None) -> Image:
    """MPSNNReduceFeatureChannels``Mode``: a 1-channel image of the mean, sum, max or min
    over each pixel's channels: ``x.mean(axis=3, keepdims=True)`` (NHWC) for "mean"."""
    fn = _REDUCE.get(mode)
    if fn is None:
        raise ValueError(f"mode must be one of {tuple(_REDUCE)}, got {mode!r}")
    return _finish(fn(src.nhwc(), axis=3, keepdims=True), _out_dtype(src, out_dtype))
