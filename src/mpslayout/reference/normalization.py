"""MPSCNNBatchNormalization (inference, with the stored statistics) and
MPSCNNInstanceNormalization (statistics of each image and channel over its pixels)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import _finish, _out_dtype, _vector
from .image import Image

__all__ = ["batch_normalization", "instance_normalization"]


def batch_normalization(src: Image, gamma: Any, beta: Any, mean: Any, variance: Any, *,
                        epsilon: float, out_dtype: Any = None) -> Image:
    """MPSCNNBatchNormalization (inference): ``gamma*(x - mean)/sqrt(variance + epsilon) +
    beta`` per channel."""
    c = int(src.channels)
    g, b, m, v = (_vector(t, c, name) for t, name in
                  ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (variance, "variance")))
    y = (src.nhwc() - m) / np.sqrt(v + float(epsilon)) * g + b
    return _finish(y, _out_dtype(src, out_dtype))


def instance_normalization(src: Image, gamma: Any, beta: Any, *, epsilon: float,
                           out_dtype: Any = None) -> Image:
    """MPSCNNInstanceNormalization: ``gamma*(x - mean)/sqrt(var + epsilon) + beta`` with the
    mean and (population) variance of each image's channel over its H x W pixels."""
    c = int(src.channels)
    g, b = _vector(gamma, c, "gamma"), _vector(beta, c, "beta")
    x = src.nhwc()
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    return _finish((x - mean) / np.sqrt(var + float(epsilon)) * g + b,
                   _out_dtype(src, out_dtype))
