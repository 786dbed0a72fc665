"""ONNX pointwise operators as MPS kernels: activations (MPSCNNNeuron types, a clamp,
HardSwish as HardSigmoid then Multiply) and Add/Sub/Mul/Div as MPSCNN arithmetic with
broadcast strides (MPSCNNMath.h)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .arithmetic import arithmetic
from .image import Image
from .neurons import LIPSCHITZ, MONOTONE, neuron
from .onnx_kernel import (
    F32,
    Kernel,
    NodeView,
    NotExpressible,
    abs_image,
    attr,
    float_image,
)

__all__ = ["ARITHMETIC_OPS", "BUILDERS", "arithmetic_kernel", "broadcast_strides", "constant_image",
           "gelu_kernel"]


def _neuron_kernel(mps: str, x: str, kind: str, a: Any = 0.0, b: float = 0.0,
                   c: float = 0.0) -> Kernel:
    def run(xs: list[Image], dt: Any) -> Image:
        return neuron(xs[0], kind, a=a, b=b, c=c, out_dtype=dt)

    def bound(xs: list[Image], ds: list[np.ndarray]) -> np.ndarray:
        x, d = xs[0].nhwc(), ds[0]
        if kind in MONOTONE:
            f0 = run(xs, F32).nhwc()
            up = neuron(float_image(x + d), kind, a=a, b=b, c=c, out_dtype=F32).nhwc()
            dn = neuron(float_image(x - d), kind, a=a, b=b, c=c, out_dtype=F32).nhwc()
            with np.errstate(invalid="ignore"):
                out = np.maximum(np.abs(up - f0), np.abs(dn - f0))
            return np.where(np.isnan(out), np.inf, out)
        lip = LIPSCHITZ(kind, a, b, c)
        return d * (np.inf if lip is None else lip)

    return Kernel(mps, [x], run, bound)


_SIMPLE_NEURONS: dict[str, tuple[str, str, Callable[[NodeView], tuple[Any, float, float]]]] = {
    "Relu": ("MPSCNNNeuronReLU", "relu", lambda n: (0.0, 0.0, 0.0)),
    "LeakyRelu": ("MPSCNNNeuronReLU", "relu",
                  lambda n: (float(attr(n, "alpha", 0.01)), 0.0, 0.0)),
    "Sigmoid": ("MPSCNNNeuronSigmoid", "sigmoid", lambda n: (0.0, 0.0, 0.0)),
    "HardSigmoid": ("MPSCNNNeuronHardSigmoid", "hard_sigmoid",
                    lambda n: (float(attr(n, "alpha", 0.2)), float(attr(n, "beta", 0.5)),
                               0.0)),
    "Tanh": ("MPSCNNNeuronTanH", "tanh", lambda n: (1.0, 1.0, 0.0)),
    "Elu": ("MPSCNNNeuronELU", "elu", lambda n: (float(attr(n, "alpha", 1.0)), 0.0, 0.0)),
    "Softplus": ("MPSCNNNeuronSoftPlus", "soft_plus", lambda n: (1.0, 1.0, 0.0)),
    "Softsign": ("MPSCNNNeuronSoftSign", "soft_sign", lambda n: (0.0, 0.0, 0.0)),
    "Abs": ("MPSCNNNeuronAbsolute", "absolute", lambda n: (0.0, 0.0, 0.0)),
    "Exp": ("MPSCNNNeuronExponential", "exponential", lambda n: (1.0, 0.0, -1.0)),
    "Log": ("MPSCNNNeuronLogarithm", "logarithm", lambda n: (1.0, 0.0, -1.0)),
    "Neg": ("MPSCNNNeuronLinear", "linear", lambda n: (-1.0, 0.0, 0.0)),
    "Sqrt": ("MPSCNNNeuronPower", "power", lambda n: (1.0, 0.0, 0.5)),
    "Reciprocal": ("MPSCNNNeuronPower", "power", lambda n: (1.0, 0.0, -1.0)),
}


def _simple_neuron(node: NodeView) -> Kernel:
    mps, kind, params = _SIMPLE_NEURONS[node.op]
    return _neuron_kernel(mps, node.inputs[0], kind, *params(node))


def gelu_kernel(x: str) -> Kernel:
    """MPSCNNNeuronGeLU of image ``x``: ``0.5 * x * (1 + erf(x / sqrt(2)))``."""
    return _neuron_kernel("MPSCNNNeuronGeLU", x, "gelu")


def _gelu(node: NodeView) -> Kernel:
    if attr(node, "approximate", "none") != "none":
        raise NotExpressible("Gelu with approximate='tanh': MPSCNNNeuronGeLU is the erf form")
    return gelu_kernel(node.inputs[0])


def _prelu(node: NodeView) -> Kernel:
    slope = node.const(node.inputs[1])
    if slope is None:
        raise NotExpressible("PRelu with a slope that is not a constant")
    out = node.shape(node.outputs[0])
    c = out[1] if out is not None and len(out) >= 2 else 1
    s = np.asarray(slope, np.float64)
    if s.size == 1:
        return _neuron_kernel("MPSCNNNeuronReLU", node.inputs[0], "relu", float(s.ravel()[0]))
    rank = len(out or ())
    if node.opset >= 7 and rank:  # numpy broadcasting: [C] alone reads the last axis
        padded = (1,) * (rank - s.ndim) + tuple(s.shape)
        per_channel = len(padded) == rank and rank >= 2 and padded[1] == c and all(
            d == 1 for k, d in enumerate(padded) if k != 1)
    else:  # opset 6 and older: one slope per channel (axis 1) by definition
        per_channel = s.size == c
    if not per_channel:
        raise NotExpressible(f"PRelu slope of shape {list(s.shape)} is not one per channel"
                             + (f" of a {rank}-D input (it broadcasts along the last axes)"
                                if rank else ""))
    return _neuron_kernel("MPSCNNNeuronPReLU", node.inputs[0], "prelu", s.reshape(-1))


def _pow(node: NodeView) -> Kernel:
    e = node.const(node.inputs[1])
    if e is None or e.size != 1:
        raise NotExpressible("Pow with an exponent that is not a constant scalar")
    return _neuron_kernel("MPSCNNNeuronPower", node.inputs[0], "power", 1.0, 0.0,
                          float(np.asarray(e).ravel()[0]))


def _clip_bounds(node: NodeView) -> tuple[float, float]:
    if node.opset < 11:
        return float(attr(node, "min", -np.inf)), float(attr(node, "max", np.inf))
    lo, hi = -np.inf, np.inf
    for k, name in enumerate(node.inputs[1:3]):
        if not name:
            continue
        v = node.const(name)
        if v is None:
            raise NotExpressible("Clip with a bound that is not a constant")
        if k == 0:
            lo = float(np.asarray(v).ravel()[0])
        else:
            hi = float(np.asarray(v).ravel()[0])
    return lo, hi


def _clip(node: NodeView) -> Kernel:
    lo, hi = _clip_bounds(node)
    x = node.inputs[0]
    if lo == 0.0:  # ReLU6 and friends
        if math.isinf(hi):
            return _neuron_kernel("MPSCNNNeuronReLU", x, "relu")
        return _neuron_kernel("MPSCNNNeuronReLUN", x, "relun", 0.0, hi)

    # any other interval: an MPSCNNArithmetic's minimumValue/maximumValue clamp of x + 0
    def run(xs: list[Image], dt: Any) -> Image:
        zero = Image.from_nhwc(np.zeros((xs[0].batch, 1, 1, 1)), xs[0].dtype)
        return arithmetic("add", xs[0], zero, secondary_strides=(0, 0, 0), minimum=lo,
                          maximum=hi, out_dtype=dt)

    return Kernel("MPSCNNAdd (minimumValue/maximumValue clamp)", [x], run,
                  lambda xs, ds: ds[0])


def _hard_swish(node: NodeView) -> Kernel:
    """x * HardSigmoid(x) with a = 1/6, b = 1/2: MPSCNNNeuronHardSigmoid, then
    MPSCNNMultiply of x and its result (stored in the image type in between)."""
    x = node.inputs[0]
    a, b = float(attr(node, "alpha", 1.0 / 6.0)), float(attr(node, "beta", 0.5))

    def run(xs: list[Image], dt: Any) -> Image:
        h = neuron(xs[0], "hard_sigmoid", a=a, b=b)
        return arithmetic("multiply", xs[0], h, out_dtype=dt)

    def bound(xs: list[Image], ds: list[np.ndarray]) -> np.ndarray:
        # |d/dx x*clamp(a x + b, 0, 1)| <= max(1, 2*a*|x| + b) on the ramp
        xm = np.abs(xs[0].nhwc()) + ds[0]
        return ds[0] * np.maximum(1.0, 2 * a * xm + b)

    return Kernel("MPSCNNNeuronHardSigmoid + MPSCNNMultiply", [x], run, bound, stores=2)


# ----------------------------------------------------------------------- arithmetic


def _as_nchw_shape(shape: tuple[int, ...], rank: int) -> tuple[int, int, int, int] | None:
    """A tensor shape broadcast against an output of ``rank`` (2: (N, K) as 1x1 images of K
    channels; 3: (N, T, C) as images 1 high and T wide; 4: NCHW), as (N, C, H, W); None
    when it is not one of those."""
    if len(shape) > rank:
        return None
    full = (1,) * (rank - len(shape)) + tuple(shape)
    if rank == 4:
        return full  # type: ignore[return-value]
    if rank == 3:
        return full[0], full[2], 1, full[1]
    if rank == 2:
        return full[0], full[1], 1, 1
    return None


def broadcast_strides(operand: tuple[int, ...], out: tuple[int, ...]) -> tuple[int, int, int]:
    """MPS (x, y, feature_channels) strides reading ``operand`` into ``out`` (both NCHW or
    (N, K)), or :class:`NotExpressible` naming the axis MPS cannot broadcast."""
    rank = len(out)
    a, o = _as_nchw_shape(operand, rank), _as_nchw_shape(out, rank)
    if a is None or o is None:
        raise NotExpressible(f"a {rank}-D broadcast of shape {list(operand)} to {list(out)}: "
                             "MPS images are (N, H, W, C)")
    strides = []
    for axis, name in ((3, "width"), (2, "height"), (1, "channels")):
        if a[axis] == o[axis]:
            strides.append(1)
        elif a[axis] == 1:
            strides.append(0)
        else:
            raise NotExpressible(f"{name} {a[axis]} broadcast to {o[axis]}: MPS strides are "
                                 "0 or 1")
    return strides[0], strides[1], strides[2]


# ONNX op -> (reference arithmetic kind, MPS kernel)
ARITHMETIC_OPS = {"Add": ("add", "MPSCNNAdd"), "Sum": ("add", "MPSCNNAdd"),
                  "Sub": ("subtract", "MPSCNNSubtract"), "Mul": ("multiply", "MPSCNNMultiply"),
                  "Div": ("divide", "MPSCNNDivide")}


def constant_image(value: np.ndarray, rank: int, dtype: Any) -> Image:
    """An ONNX constant operand as the MPS image that holds it (the rules of
    :func:`_as_nchw_shape`)."""
    shp = _as_nchw_shape(tuple(np.shape(value)), rank)
    if shp is None:
        raise NotExpressible(f"a constant of shape {list(np.shape(value))}")
    a = np.asarray(value, np.float64)
    if rank == 3:
        full = a.reshape((1,) * (3 - a.ndim) + a.shape)
        return Image.from_nhwc(full[:, None], dtype)
    return Image.from_nchw(a.reshape(shp), dtype)


def arithmetic_kernel(op: str, mps: str, images: list[str], strides: list[tuple[int, ...]],
                      constants: dict[int, Image], out: tuple[int, ...]) -> Kernel:
    """MPSCNN arithmetic ``op`` on two operands: images named in ``images`` (None for an
    operand given in ``constants`` by position), read with ``strides``."""
    o = _as_nchw_shape(out, len(out))
    assert o is not None
    dest = (o[2], o[3], o[1])

    def operands(xs: list[Image]) -> list[Image]:
        it = iter(xs)
        ops = [constants[k] if k in constants else next(it) for k in range(2)]
        n = max(v.batch for v in ops)
        return [_batch(v, n) for v in ops]

    def apply(vals: list[Image], dt: Any, kind: str = op) -> Image:
        return arithmetic(kind, vals[0], vals[1], primary_strides=strides[0],
                          secondary_strides=strides[1], dest_shape=dest, out_dtype=dt)

    def run(xs: list[Image], dt: Any) -> Image:
        return apply(operands(xs), dt)

    def bound(xs: list[Image], ds: list[np.ndarray]) -> np.ndarray:
        vals = operands(xs)
        it = iter(ds)
        dd = [np.zeros(v.shape) if k in constants else next(it) for k, v in enumerate(vals)]
        av = [abs_image(v) for v in vals]
        di = [float_image(d) for d in dd]
        if op in ("add", "subtract"):
            return apply(di, F32, "add").nhwc()
        if op == "multiply":
            return (apply([av[0], di[1]], F32).nhwc() + apply([di[0], av[1]], F32).nhwc()
                    + apply(di, F32).nhwc())
        # divide: |(a+da)/(b+db) - a/b| <= (|da| + |a/b|*|db|) / (|b| - |db|)
        q = np.abs(apply(vals, F32).nhwc())
        bb = apply([float_image(np.ones(vals[0].shape)), av[1]], F32, "multiply").nhwc()
        db = apply([float_image(np.ones(vals[0].shape)), di[1]], F32, "multiply").nhwc()
        da = apply([di[0], float_image(np.ones(vals[1].shape))], F32, "multiply").nhwc()
        room = bb - db
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(room > 0, (da + q * db) / np.where(room > 0, room, 1.0), np.inf)

    def magnitude(xs: list[Image]) -> np.ndarray:
        # what rounding is relative to: |a| + |c| for a sum or difference (a constant's
        # own rounding moves y by up to u*|c|, however small y is), |y| otherwise
        av = [abs_image(v) for v in operands(xs)]
        return apply(av, F32, "add" if op in ("add", "subtract") else op).nhwc()

    return Kernel(mps, images, run, bound, magnitude)


def _batch(img: Image, n: int) -> Image:
    """A constant image repeated to ``n`` images (MPS reads the secondary image by image)."""
    if img.batch == n:
        return img
    return Image.from_nhwc(np.repeat(img.nhwc(), n, axis=0), img.dtype)


def _arith(node: NodeView) -> Kernel:
    if len([t for t in node.inputs if t]) != 2:
        raise NotExpressible(f"{node.op} of {len(node.inputs)} operands: MPS arithmetic "
                             "takes two")
    op, mps = ARITHMETIC_OPS[node.op]
    out = node.shape(node.outputs[0])
    if out is None or len(out) not in (2, 3, 4):
        raise NotExpressible(f"a result of shape {out}: MPS images hold NCHW, (N, T, C) or "
                             "(N, K) tensors")
    images, strides, constants = [], [], {}
    for k, t in enumerate(node.inputs[:2]):
        value = node.const(t)
        shape = tuple(np.shape(value)) if value is not None else node.shape(t)
        if shape is None:
            raise NotExpressible(f"the shape of operand {t!r} is unknown")
        strides.append(broadcast_strides(shape, out))
        if value is not None:
            if value.dtype.kind != "f":
                raise NotExpressible(f"a constant operand of type {value.dtype}")
            constants[k] = constant_image(value, len(out), np.float32)
        else:
            full = _as_nchw_shape(shape, len(out))
            if full is not None and full[0] != out[0]:
                raise NotExpressible("a batch broadcast: MPS arithmetic reads the sources "
                                     "image by image")
            images.append(t)
    if not images:
        raise NotExpressible("both operands are constants (folded by any exporter)")
    return arithmetic_kernel(op, mps, images, strides, constants, out)


BUILDERS: dict[str, Callable[[NodeView], Kernel]] = {
    **dict.fromkeys(_SIMPLE_NEURONS, _simple_neuron),
    "Gelu": _gelu, "PRelu": _prelu, "Pow": _pow, "Clip": _clip, "HardSwish": _hard_swish,
    **dict.fromkeys(ARITHMETIC_OPS, _arith),
}
