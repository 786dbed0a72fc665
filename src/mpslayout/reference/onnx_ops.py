"""The one table from an ONNX operator to the MPS kernel that computes it.

:data:`TABLE` maps an ONNX op type to a builder. A builder reads the node (attributes,
constant operands, shapes) and returns a :class:`Kernel`: the MPS kernel's name, which of
the node's inputs are images, how to run it on reference images, and how far its result
can move when its inputs move (for the tolerance). A node MPS cannot compute as it is
raises :class:`NotExpressible` with the reason. Graphs are ONNX graphs with NCHW
semantics; a Keras model is translated to one before it gets here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .arithmetic import arithmetic
from .image import Image
from .neurons import LIPSCHITZ, MONOTONE, neuron
from .normalization import instance_normalization
from .pooling import pooling
from .resampling import bilinear_coordinates, upsampling
from .shape import concatenate
from .softmax import log_softmax, reduce_channels, softmax

__all__ = ["TABLE", "Kernel", "NodeView", "NotExpressible", "build"]

F32 = np.dtype(np.float32)


class NotExpressible(Exception):
    """The node is an operator MPSCNN has a kernel for, but not in this form (the reason)."""


class NodeView(Protocol):
    """What a builder may ask of a graph node."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int

    def const(self, tensor: str) -> np.ndarray | None: ...

    def shape(self, tensor: str) -> tuple[int, ...] | None: ...


Run = Callable[[list[Image], Any], Image]
Bound = Callable[[list[Image], list[np.ndarray]], np.ndarray]


@dataclass
class Kernel:
    """An MPS kernel bound to one node.

    ``run(images, out_dtype)``: the result. ``bound(images, deltas)``: an NHWC bound on
    how much the result moves when each input image moves by at most ``deltas`` (NHWC,
    element by element). ``magnitude(images)``: NHWC sum of the absolute values of the
    terms each output sums (what rounding of a sum is relative to), with ``terms`` terms.
    ``stores``: roundings to the image type inside the kernel (a HardSwish stores its
    HardSigmoid).
    """

    mps: str
    images: list[str]
    run: Run
    bound: Bound
    magnitude: Callable[[list[Image]], np.ndarray] | None = None
    terms: int = 1
    stores: int = 1


def _abs(img: Image) -> Image:
    return Image(np.abs(img.data).astype(np.float32), img.channels)


def _img(a: np.ndarray) -> Image:
    return Image.from_nhwc(a, np.float32)


def _linear(mps: str, images: list[str], run: Run, terms: int = 1) -> Kernel:
    """A kernel linear in its inputs with non-negative coefficients, or a max of them:
    ``|f(x + d) - f(x)| <= f(|d|)``."""
    return Kernel(mps, images, run,
                  lambda xs, ds: run([_img(d) for d in ds], F32).nhwc(),
                  lambda xs: run([_abs(x) for x in xs], F32).nhwc(), terms)


def _attr(node: NodeView, key: str, default: Any) -> Any:
    v = node.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


# ----------------------------------------------------------------------- neurons


def _neuron_kernel(mps: str, x: str, kind: str, a: Any = 0.0, b: float = 0.0,
                   c: float = 0.0) -> Kernel:
    def run(xs: list[Image], dt: Any) -> Image:
        return neuron(xs[0], kind, a=a, b=b, c=c, out_dtype=dt)

    def bound(xs: list[Image], ds: list[np.ndarray]) -> np.ndarray:
        x, d = xs[0].nhwc(), ds[0]
        if kind in MONOTONE:
            f0 = run(xs, F32).nhwc()
            up = neuron(_img(x + d), kind, a=a, b=b, c=c, out_dtype=F32).nhwc()
            dn = neuron(_img(x - d), kind, a=a, b=b, c=c, out_dtype=F32).nhwc()
            with np.errstate(invalid="ignore"):
                out = np.maximum(np.abs(up - f0), np.abs(dn - f0))
            return np.where(np.isnan(out), np.inf, out)
        lip = LIPSCHITZ(kind, a, b, c)
        return d * (np.inf if lip is None else lip)

    return Kernel(mps, [x], run, bound)


_SIMPLE_NEURONS: dict[str, tuple[str, str, Callable[[NodeView], tuple[Any, float, float]]]] = {
    "Relu": ("MPSCNNNeuronReLU", "relu", lambda n: (0.0, 0.0, 0.0)),
    "LeakyRelu": ("MPSCNNNeuronReLU", "relu",
                  lambda n: (float(_attr(n, "alpha", 0.01)), 0.0, 0.0)),
    "Sigmoid": ("MPSCNNNeuronSigmoid", "sigmoid", lambda n: (0.0, 0.0, 0.0)),
    "HardSigmoid": ("MPSCNNNeuronHardSigmoid", "hard_sigmoid",
                    lambda n: (float(_attr(n, "alpha", 0.2)), float(_attr(n, "beta", 0.5)),
                               0.0)),
    "Tanh": ("MPSCNNNeuronTanH", "tanh", lambda n: (1.0, 1.0, 0.0)),
    "Elu": ("MPSCNNNeuronELU", "elu", lambda n: (float(_attr(n, "alpha", 1.0)), 0.0, 0.0)),
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


def _gelu(node: NodeView) -> Kernel:
    if _attr(node, "approximate", "none") != "none":
        raise NotExpressible("Gelu with approximate='tanh': MPSCNNNeuronGeLU is the erf form")
    return _neuron_kernel("MPSCNNNeuronGeLU", node.inputs[0], "gelu")


def _prelu(node: NodeView) -> Kernel:
    slope = node.const(node.inputs[1])
    if slope is None:
        raise NotExpressible("PRelu with a slope that is not a constant")
    out = node.shape(node.outputs[0])
    c = out[1] if out is not None and len(out) >= 2 else 1
    s = np.asarray(slope, np.float64)
    if s.size == 1:
        return _neuron_kernel("MPSCNNNeuronReLU", node.inputs[0], "relu", float(s.ravel()[0]))
    if s.size != c or (s.ndim >= 1 and s.ndim == len(out or ()) and s.shape[0] != 1):
        raise NotExpressible(f"PRelu slope of shape {list(s.shape)} is not one per channel")
    return _neuron_kernel("MPSCNNNeuronPReLU", node.inputs[0], "prelu", s.reshape(-1))


def _pow(node: NodeView) -> Kernel:
    e = node.const(node.inputs[1])
    if e is None or e.size != 1:
        raise NotExpressible("Pow with an exponent that is not a constant scalar")
    return _neuron_kernel("MPSCNNNeuronPower", node.inputs[0], "power", 1.0, 0.0,
                          float(np.asarray(e).ravel()[0]))


def _clip_bounds(node: NodeView) -> tuple[float, float]:
    if node.opset < 11:
        return float(_attr(node, "min", -np.inf)), float(_attr(node, "max", np.inf))
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
    a, b = float(_attr(node, "alpha", 1.0 / 6.0)), float(_attr(node, "beta", 0.5))

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


_ARITH = {"Add": ("add", "MPSCNNAdd"), "Sum": ("add", "MPSCNNAdd"),
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
        av = [_abs(v) for v in vals]
        di = [_img(d) for d in dd]
        if op in ("add", "subtract"):
            return apply(di, F32, "add").nhwc()
        if op == "multiply":
            return (apply([av[0], di[1]], F32).nhwc() + apply([di[0], av[1]], F32).nhwc()
                    + apply(di, F32).nhwc())
        # divide: |(a+da)/(b+db) - a/b| <= (|da| + |a/b|*|db|) / (|b| - |db|)
        q = np.abs(apply(vals, F32).nhwc())
        bb = apply([_img(np.ones(vals[0].shape)), av[1]], F32, "multiply").nhwc()
        db = apply([_img(np.ones(vals[0].shape)), di[1]], F32, "multiply").nhwc()
        da = apply([di[0], _img(np.ones(vals[1].shape))], F32, "multiply").nhwc()
        room = bb - db
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(room > 0, (da + q * db) / np.where(room > 0, room, 1.0), np.inf)

    return Kernel(mps, images, run, bound)


def _batch(img: Image, n: int) -> Image:
    """A constant image repeated to ``n`` images (MPS reads the secondary image by image)."""
    if img.batch == n:
        return img
    return Image.from_nhwc(np.repeat(img.nhwc(), n, axis=0), img.dtype)


def _arith(node: NodeView) -> Kernel:
    if len([t for t in node.inputs if t]) != 2:
        raise NotExpressible(f"{node.op} of {len(node.inputs)} operands: MPS arithmetic "
                             "takes two")
    op, mps = _ARITH[node.op]
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


# ----------------------------------------------------------------------- pooling


def _auto_pads(auto: str, size: tuple[int, int], k: tuple[int, int], s: tuple[int, int],
               d: tuple[int, int]) -> list[int]:
    pads = [0, 0, 0, 0]
    for j, (n, kk, ss, dd) in enumerate(zip(size, k, s, d)):
        total = max((-(-n // ss) - 1) * ss + (kk - 1) * dd + 1 - n, 0)
        begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
        pads[j], pads[j + 2] = begin, total - begin
    return pads


def _pool(node: NodeView) -> Kernel:
    src, out = node.shape(node.inputs[0]), node.shape(node.outputs[0])
    if src is None or out is None or len(src) != 4 or len(out) != 4:
        raise NotExpressible("pooling of a tensor that is not 4-D")
    mode = "max" if "Max" in node.op else "average"
    h, w = src[2], src[3]
    if node.op.startswith("Global"):
        kh, kw, st, dl, pads, zero = h, w, (1, 1), (1, 1), [0, 0, 0, 0], (0, 0)
    else:
        kh, kw = (int(v) for v in node.attrs["kernel_shape"])
        sy, sx = (int(v) for v in _attr(node, "strides", [1, 1]))
        dy, dx = (int(v) for v in _attr(node, "dilations", [1, 1]))
        st, dl = (sx, sy), (dx, dy)
        auto = str(_attr(node, "auto_pad", "NOTSET"))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            if dy > 1 or dx > 1:  # ONNX Runtime leaves the dilation out of the padding
                raise NotExpressible(f"auto_pad={auto} with dilations: ONNX Runtime and the "
                                     "ONNX specification disagree on its padding")
            pads = _auto_pads(auto, (h, w), (kh, kw), (sy, sx), (dy, dx))
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        else:
            pads = [int(v) for v in _attr(node, "pads", [0, 0, 0, 0])]
        zero = (0, 0)
        if mode == "average" and int(_attr(node, "count_include_pad", 0)):
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise NotExpressible("count_include_pad with asymmetric padding: no "
                                     "MPSCNNPoolingAverage zeroPadSize expresses it")
            zero = (pads[1], pads[0])
    args = {"kernel": (kw, kh), "dest_size": (out[3], out[2]),
            "offset": ((kw // 2) * dl[0] - pads[1], (kh // 2) * dl[1] - pads[0]),
            "strides": st, "dilation": dl, "zero_pad_size": zero}
    mps = "MPSCNNPoolingMax" if mode == "max" else "MPSCNNPoolingAverage"
    return _linear(mps, [node.inputs[0]],
                   lambda xs, dt: pooling(xs[0], mode, out_dtype=dt, **args),
                   kh * kw if mode == "average" else 1)


# ----------------------------------------------------------------------- resampling


def _onnx_coordinates(node: NodeView, n: int, m: int, s: float) -> np.ndarray:
    """The source coordinate ONNX's Resize gives destination positions 0..m-1 (the
    specification's coordinate_transformation_mode formulas)."""
    mode = str(_attr(node, "coordinate_transformation_mode", "half_pixel"))
    if node.op == "Upsample" or node.opset < 11:
        mode = "asymmetric"
    o = np.arange(m, dtype=np.float64)
    if mode == "half_pixel":
        return (o + 0.5) / s - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / s - 0.5 if m > 1 else np.zeros(m)
    if mode == "align_corners":
        return o * (n - 1) / (m - 1) if m > 1 else np.zeros(m)
    if mode == "asymmetric":
        return o / s
    raise NotExpressible(f"coordinate_transformation_mode={mode!r}")


def _nearest_index(node: NodeView, pos: np.ndarray, s: float) -> np.ndarray:
    rule = str(_attr(node, "nearest_mode", "round_prefer_floor"))
    if node.op == "Upsample" or node.opset < 11:
        rule = "floor"  # the older operators sample with floor
    if rule == "floor":
        return np.floor(pos)
    if rule == "ceil":
        return np.ceil(pos)
    if rule == "round_prefer_ceil":
        return np.floor(pos + 0.5)
    return np.ceil(pos - 0.5)  # round_prefer_floor


def _resize(node: NodeView) -> Kernel:
    src, out = node.shape(node.inputs[0]), node.shape(node.outputs[0])
    if src is None or out is None or len(src) != 4 or len(out) != 4:
        raise NotExpressible("a resize of a tensor that is not 4-D")
    if src[:2] != out[:2]:
        raise NotExpressible("a resize of the batch or channel axis")
    factors = []
    for n, m in ((src[2], out[2]), (src[3], out[3])):
        if m % n or m < n:
            raise NotExpressible(f"a resize from {n} to {m}: MPSCNNUpsampling enlarges by "
                                 "integer factors")
        factors.append(m // n)
    mode = str(_attr(node, "mode", "nearest"))
    x = node.inputs[0]
    if mode == "nearest":
        for n, s in ((src[2], factors[0]), (src[3], factors[1])):
            idx = np.clip(_nearest_index(node, _onnx_coordinates(node, n, n * s, s), s),
                          0, n - 1)
            if not np.array_equal(idx, np.arange(n * s) // s):
                raise NotExpressible(
                    f"nearest with coordinate_transformation_mode="
                    f"{_attr(node, 'coordinate_transformation_mode', 'half_pixel')!r} and "
                    f"nearest_mode={_attr(node, 'nearest_mode', 'round_prefer_floor')!r} "
                    "does not read floor(o/s), what MPSCNNUpsamplingNearest reads")
        return _linear("MPSCNNUpsamplingNearest", [x],
                       lambda xs, dt: upsampling(xs[0], "nearest", scale=factors[::-1],
                                                 out_dtype=dt))
    if mode not in ("linear", "bilinear"):
        raise NotExpressible(f"mode={mode!r}: MPSCNNUpsampling is nearest or bilinear")
    for align in (False, True):
        if all(np.allclose(np.clip(_onnx_coordinates(node, n, n * s, s), 0, n - 1),
                           bilinear_coordinates(n, s, align), rtol=0, atol=1e-9)
               for n, s in ((src[2], factors[0]), (src[3], factors[1]))):
            return _linear(f"MPSCNNUpsamplingBilinear (alignCorners {'YES' if align else 'NO'})",
                           [x], lambda xs, dt, a=align: upsampling(
                               xs[0], "bilinear", scale=factors[::-1], align_corners=a,
                               out_dtype=dt), 4)
    raise NotExpressible(
        f"linear with coordinate_transformation_mode="
        f"{_attr(node, 'coordinate_transformation_mode', 'half_pixel')!r}: neither "
        "alignment of MPSCNNUpsamplingBilinear samples there")


# ----------------------------------------------------------------------- the rest


def _channel_axis(rank: int) -> int:
    """The axis that is the image's feature channels: 1 of NCHW and (N, K), 2 of (N, T, C)."""
    return 2 if rank == 3 else 1


def _reduce(node: NodeView) -> Kernel:
    """ReduceMean/Sum/Max/Min over the feature channels only, keepdims:
    MPSNNReduceFeatureChannelsMean/Sum/Max/Min."""
    shape = node.shape(node.inputs[0])
    if shape is None or len(shape) not in (2, 3, 4):
        raise NotExpressible("a reduction of a tensor that is not (N, K), (N, T, C) or NCHW")
    axes = _attr(node, "axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        c = node.const(node.inputs[1])
        axes = None if c is None else [int(v) for v in np.ravel(c)]
    if axes is None or sorted(int(a) % len(shape) for a in axes) != [_channel_axis(len(shape))]:
        raise NotExpressible(f"a reduction over axes {axes}: MPSNNReduceFeatureChannels "
                             "reduces the feature channels only")
    if not int(_attr(node, "keepdims", 1)):
        raise NotExpressible("keepdims=0: MPS keeps the reduced channel")
    mode = node.op[len("Reduce"):].lower()
    mps = f"MPSNNReduceFeatureChannels{node.op[len('Reduce'):]}"
    if mode in ("max", "min"):
        return _linear(mps, [node.inputs[0]],
                       lambda xs, dt: reduce_channels(xs[0], mode, out_dtype=dt))
    c = int(shape[_channel_axis(len(shape))])
    k = _linear(mps, [node.inputs[0]],
                lambda xs, dt: reduce_channels(xs[0], mode, out_dtype=dt), c)
    return k


def _softmax(node: NodeView) -> Kernel:
    shape = node.shape(node.inputs[0])
    if shape is None or len(shape) not in (2, 3, 4):
        raise NotExpressible("a softmax of a tensor that is not (N, K), (N, T, C) or NCHW")
    axis = int(_attr(node, "axis", -1 if node.opset >= 13 else 1)) % len(shape)
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
    if rank not in (2, 4) or int(_attr(node, "axis", 1)) % rank != 1:
        raise NotExpressible("a concatenation not along channels")
    ins = [t for t in node.inputs if t]
    if any(node.const(t) is not None for t in ins):
        raise NotExpressible("a concatenation with a constant")
    return _linear("MPSCNNConcatenation (destinationFeatureChannelOffset)", ins,
                   lambda xs, dt: concatenate(xs, out_dtype=dt))


def _instance_norm(node: NodeView) -> Kernel:
    g, b = node.const(node.inputs[1]), node.const(node.inputs[2])
    if g is None or b is None:
        raise NotExpressible("InstanceNormalization with a scale or bias not constant")
    eps = float(_attr(node, "epsilon", 1e-5))
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


TABLE: dict[str, Callable[[NodeView], Kernel]] = {
    **dict.fromkeys(_SIMPLE_NEURONS, _simple_neuron),
    "Gelu": _gelu, "PRelu": _prelu, "Pow": _pow, "Clip": _clip, "HardSwish": _hard_swish,
    **dict.fromkeys(_ARITH, _arith),
    **dict.fromkeys(("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"), _pool),
    "Resize": _resize, "Upsample": _resize,
    "Softmax": _softmax, "LogSoftmax": _softmax,
    "Concat": _concat,
    "InstanceNormalization": _instance_norm,
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"), _reduce),
}


def build(node: NodeView) -> Kernel | None:
    """The MPS kernel for ``node``; None when MPSCNN has none; raises
    :class:`NotExpressible` when it has one but not for this node's form."""
    builder = TABLE.get(node.op)
    return None if builder is None else builder(node)
