"""ONNX operators along the feature channels as MPS kernels: ReduceMean/Sum/Max/Min,
Softmax/LogSoftmax, Concat and InstanceNormalization."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .image import Image
from .normalization import instance_normalization
from .onnx_kernel import (
    F32,
    Kernel,
    NodeView,
    NotExpressible,
    attr,
    linear_kernel,
)
from .onnx_windows import global_pool
from .shape import concatenate
from .softmax import log_softmax, reduce_channels, softmax

__all__ = ["BUILDERS"]


def _channel_axis(rank: int) -> int:
    """The axis that is the image's feature channels: 1 of NCHW and (N, K), 2 of (N, T, C)."""
    return 2 if rank == 3 else 1


def _reduce(node: NodeView) -> Kernel:
    """ReduceMean/Sum/Max/Min over the feature channels only, keepdims:
    MPSNNReduceFeatureChannelsMean/Sum/Max/Min."""
    shape = node.shape(node.inputs[0])
    if shape is None or len(shape) not in (2, 3, 4):
        raise NotExpressible("a reduction of a tensor that is not (N, K), (N, T, C) or NCHW")
    axes = attr(node, "axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        c = node.const(node.inputs[1])
        axes = None if c is None else [int(v) for v in np.ravel(c)]
    keep = int(attr(node, "keepdims", 1))
    kind = node.op[len("Reduce"):]  # Mean, Sum, Max or Min
    if axes is not None and len(shape) == 4 and sorted(int(a) % 4 for a in axes) == [2, 3] \
            and keep and kind in ("Mean", "Max"):
        return global_pool(node, "average" if kind == "Mean" else "max")
    if axes is None or sorted(int(a) % len(shape) for a in axes) != [_channel_axis(len(shape))]:
        raise NotExpressible(f"a reduction over axes {axes}: MPSNNReduceFeatureChannels "
                             "reduces the feature channels only")
    if not keep:
        raise NotExpressible("keepdims=0: MPS keeps the reduced channel")
    mode = kind.lower()
    # a max or min rounds nothing; a mean or sum adds up C terms
    terms = 1 if mode in ("max", "min") else int(shape[_channel_axis(len(shape))])
    return linear_kernel(f"MPSNNReduceFeatureChannels{kind}", [node.inputs[0]],
                         lambda xs, dt: reduce_channels(xs[0], mode, out_dtype=dt), terms)


def _softmax(node: NodeView) -> Kernel:
    shape = node.shape(node.inputs[0])
    if shape is None or len(shape) not in (2, 3, 4):
        raise NotExpressible("a softmax of a tensor that is not (N, K), (N, T, C) or NCHW")
    axis = int(attr(node, "axis", -1 if node.opset >= 13 else 1)) % len(shape)
    if axis != _channel_axis(len(shape)):
        raise NotExpressible(f"a softmax along axis {axis}: MPSCNNSoftMax runs along "
                             "feature channels")
    if node.opset < 13 and len(shape) > 2 and int(np.prod(shape[axis + 1:])) != 1:
        raise NotExpressible("a softmax over C*H*W (opset < 13 flattens from the axis on)")
    if node.op == "LogSoftmax":
        return Kernel("MPSCNNLogSoftMax", [node.inputs[0]],
                      lambda xs, dt: log_softmax(xs[0], out_dtype=dt),
                      lambda xs, ds: np.broadcast_to(2 * ds[0].max(axis=3, keepdims=True),
                                                     ds[0].shape))

    def bound(xs: list[Image], ds: list[np.ndarray]) -> np.ndarray:
        # each ratio s_i'/s_i lies within e^(+-2 max|d|)
        s = softmax(xs[0], out_dtype=F32).nhwc()
        return s * np.expm1(2 * ds[0].max(axis=3, keepdims=True))

    return Kernel("MPSCNNSoftMax", [node.inputs[0]],
                  lambda xs, dt: softmax(xs[0], out_dtype=dt), bound)


def _concat(node: NodeView) -> Kernel:
    out = node.shape(node.outputs[0])
    rank = len(out) if out is not None else 0
    if rank not in (2, 4) or int(attr(node, "axis", 1)) % rank != 1:
        raise NotExpressible("a concatenation not along channels")
    ins = [t for t in node.inputs if t]
    if any(node.const(t) is not None for t in ins):
        raise NotExpressible("a concatenation with a constant")
    return linear_kernel("MPSCNNConcatenation (destinationFeatureChannelOffset)", ins,
                         lambda xs, dt: concatenate(xs, out_dtype=dt))


def _instance_norm(node: NodeView) -> Kernel:
    g, b = node.const(node.inputs[1]), node.const(node.inputs[2])
    if g is None or b is None:
        raise NotExpressible("InstanceNormalization with a scale or bias not constant")
    eps = float(attr(node, "epsilon", 1e-5))
    shape = node.shape(node.inputs[0])
    if shape is None or len(shape) != 4:
        raise NotExpressible("an instance normalization of a tensor that is not 4-D")

    def bound(xs: list[Image], ds: list[np.ndarray]) -> np.ndarray:
        x = xs[0].nhwc()
        sd = np.sqrt(x.var(axis=(1, 2), keepdims=True) + eps)
        dmax = ds[0].max(axis=(1, 2), keepdims=True)
        z = np.abs(x - x.mean(axis=(1, 2), keepdims=True)) / sd
        # d mean <= dmax, d sd <= dmax: |d y| <= |g|/sd * (|d| + dmax + |z|*dmax) / (1 - dmax/sd)
        room = np.maximum(1.0 - dmax / sd, 1e-300)
        return np.abs(g) / sd * (ds[0] + dmax * (1 + z)) / room

    return Kernel("MPSCNNInstanceNormalization", [node.inputs[0]],
                  lambda xs, dt: instance_normalization(xs[0], g, b, epsilon=eps,
                                                        out_dtype=dt), bound)


BUILDERS: dict[str, Callable[[NodeView], Kernel]] = {
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"), _reduce),
    "Softmax": _softmax, "LogSoftmax": _softmax,
    "Concat": _concat,
    "InstanceNormalization": _instance_norm,
}
