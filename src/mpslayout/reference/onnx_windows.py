"""ONNX window operators as MPS kernels: pooling (MPSCNNPoolingMax/Average, global ones
as a window the size of the image) and Resize/Upsample (MPSCNNUpsamplingNearest/Bilinear
where ONNX's coordinates are the kernel's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .image import Image
from .onnx_kernel import (
    Kernel,
    NodeView,
    NotExpressible,
    attr,
    float_image,
    linear_kernel,
)
from .padding import pad
from .pooling import pooling
from .resampling import bilinear_coordinates, upsampling

__all__ = ["BUILDERS", "global_pool"]


def _auto_pads(auto: str, size: tuple[int, int], k: tuple[int, int], s: tuple[int, int],
               d: tuple[int, int]) -> list[int]:
    pads = [0, 0, 0, 0]
    for j, (n, kk, ss, dd) in enumerate(zip(size, k, s, d)):
        total = max((-(-n // ss) - 1) * ss + (kk - 1) * dd + 1 - n, 0)
        begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
        pads[j], pads[j + 2] = begin, total - begin
    return pads


def global_pool(node: NodeView, mode: str) -> Kernel:
    """A global ``mode`` ("max" or "average") pool of an NCHW tensor to 1x1: a window the
    size of the image; also what ReduceMean/ReduceMax over axes (2, 3), keepdims, is
    (the dynamo exporter's AdaptiveAvgPool2d(1))."""
    return _pool(node, mode)


def _as_2d(v: list[int], one_d: bool, fill: int) -> list[int]:
    """A 1-D pool's attribute (one value per axis, or begin/end pads) with the height
    axis of a 1 x L image added (``fill``: its value)."""
    if not one_d:
        return v
    return [fill, v[0], fill, v[1]] if len(v) == 2 else [fill, *v]


def _pool(node: NodeView, mode: str | None = None) -> Kernel:
    src, out = node.shape(node.inputs[0]), node.shape(node.outputs[0])
    one_d = src is not None and out is not None and len(src) == 3 and len(out) == 3
    if one_d:  # (N, C, L): an image 1 pixel high and L wide (a Conv1d's, docs/verify.md)
        src, out = (*src[:2], 1, src[2]), (*out[:2], 1, out[2])
    if src is None or out is None or len(src) != 4 or len(out) != 4:
        raise NotExpressible("pooling of a tensor that is not 4-D")
    glob = mode is not None or node.op.startswith("Global")
    mode = mode or ("max" if "Max" in node.op else "average")
    h, w = src[2], src[3]
    if glob:
        kh, kw, st, dl, pads, zero = h, w, (1, 1), (1, 1), [0, 0, 0, 0], (0, 0)
    else:
        kh, kw = _as_2d([int(v) for v in node.attrs["kernel_shape"]], one_d, 1)
        sy, sx = _as_2d([int(v) for v in attr(node, "strides", [1] * (1 if one_d else 2))],
                        one_d, 1)
        dy, dx = _as_2d([int(v) for v in attr(node, "dilations", [1] * (1 if one_d else 2))],
                        one_d, 1)
        st, dl = (sx, sy), (dx, dy)
        auto = str(attr(node, "auto_pad", "NOTSET"))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            if dy > 1 or dx > 1:  # ONNX Runtime leaves the dilation out of the padding
                raise NotExpressible(f"auto_pad={auto} with dilations: ONNX Runtime and the "
                                     "ONNX specification disagree on its padding")
            pads = _auto_pads(auto, (h, w), (kh, kw), (sy, sx), (dy, dx))
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        else:
            pads = _as_2d([int(v) for v in attr(node, "pads", [0] * (2 if one_d else 4))],
                          one_d, 0)
        zero = (0, 0)
        if mode == "average" and int(attr(node, "count_include_pad", 0)):
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise NotExpressible("count_include_pad with asymmetric padding: no "
                                     "MPSCNNPoolingAverage zeroPadSize expresses it")
            zero = (pads[1], pads[0])
    args = {"kernel": (kw, kh), "dest_size": (out[3], out[2]),
            "offset": ((kw // 2) * dl[0] - pads[1], (kh // 2) * dl[1] - pads[0]),
            "strides": st, "dilation": dl, "zero_pad_size": zero}
    mps = "MPSCNNPoolingMax" if mode == "max" else "MPSCNNPoolingAverage"
    return linear_kernel(mps, [node.inputs[0]],
                         lambda xs, dt: pooling(xs[0], mode, out_dtype=dt, **args),
                         kh * kw if mode == "average" else 1)


# ----------------------------------------------------------------------- resampling


def _before_resize_11(node: NodeView) -> bool:
    """Upsample, or Resize before opset 11: asymmetric coordinates, floor sampling."""
    return node.op == "Upsample" or node.opset < 11


def _coordinate_mode(node: NodeView) -> str:
    """coordinate_transformation_mode; Upsample and Resize before opset 11 are asymmetric."""
    if _before_resize_11(node):
        return "asymmetric"
    return str(attr(node, "coordinate_transformation_mode", "half_pixel"))


def _onnx_coordinates(node: NodeView, n: int, m: int, s: float) -> np.ndarray:
    """The source coordinate ONNX's Resize gives destination positions 0..m-1 (the
    specification's coordinate_transformation_mode formulas)."""
    mode = _coordinate_mode(node)
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
    rule = str(attr(node, "nearest_mode", "round_prefer_floor"))
    if _before_resize_11(node):
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
    mode = str(attr(node, "mode", "nearest"))
    x = node.inputs[0]
    if mode == "nearest":
        for n, s in ((src[2], factors[0]), (src[3], factors[1])):
            idx = np.clip(_nearest_index(node, _onnx_coordinates(node, n, n * s, s), s),
                          0, n - 1)
            if not np.array_equal(idx, np.arange(n * s) // s):
                raise NotExpressible(
                    f"nearest with coordinate_transformation_mode="
                    f"{_coordinate_mode(node)!r} and "
                    f"nearest_mode={attr(node, 'nearest_mode', 'round_prefer_floor')!r} "
                    "does not read floor(o/s), what MPSCNNUpsamplingNearest reads")
        return linear_kernel("MPSCNNUpsamplingNearest", [x],
                             lambda xs, dt: upsampling(xs[0], "nearest", scale=factors[::-1],
                                                       out_dtype=dt))
    if mode not in ("linear", "bilinear"):
        raise NotExpressible(f"mode={mode!r}: MPSCNNUpsampling is nearest or bilinear")
    for align in (False, True):
        if all(np.allclose(np.clip(_onnx_coordinates(node, n, n * s, s), 0, n - 1),
                           bilinear_coordinates(n, s, align), rtol=0, atol=1e-9)
               for n, s in ((src[2], factors[0]), (src[3], factors[1]))):
            name = f"MPSCNNUpsamplingBilinear (alignCorners {'YES' if align else 'NO'})"
            return linear_kernel(name, [x], lambda xs, dt, a=align: upsampling(
                xs[0], "bilinear", scale=factors[::-1], align_corners=a, out_dtype=dt), 4)
    raise NotExpressible(
        f"linear with coordinate_transformation_mode={_coordinate_mode(node)!r}: neither "
        "alignment of MPSCNNUpsamplingBilinear samples there")


_PAD_MODES = {"constant": "zero", "edge": "clamp", "reflect": "mirror"}


def _pad(node: NodeView) -> Kernel:
    """ONNX Pad of an NCHW image on its height and width: MPSNNPad with the edge mode of
    the ONNX mode (constant -> MPSImageEdgeModeZero/Constant, edge -> Clamp, reflect ->
    Mirror; :mod:`.padding`)."""
    src = node.shape(node.inputs[0])
    if src is None or len(src) != 4:
        raise NotExpressible("a Pad of a tensor that is not 4-D: MPSNNPad pads images")
    mode = str(attr(node, "mode", "constant"))
    if mode not in _PAD_MODES:
        raise NotExpressible(f"Pad mode {mode!r}: MPSImageEdgeMode has zero, constant, "
                             "clamp, mirror and mirror-with-edge")
    fill = 0.0
    if node.opset < 11:
        pads = [int(p) for p in attr(node, "pads", [])]
        fill = float(attr(node, "value", 0.0))
    else:
        ins = [*node.inputs, "", "", ""]
        p = node.const(ins[1])
        if p is None:
            raise NotExpressible("a Pad whose pads are not a constant")
        pads = [int(v) for v in np.asarray(p).ravel()]
        if ins[2]:
            v = node.const(ins[2])
            if v is None:
                raise NotExpressible("a Pad whose constant_value is not a constant")
            fill = float(np.asarray(v).ravel()[0]) if np.size(v) else 0.0
        if ins[3]:
            a = node.const(ins[3])
            if a is None:
                raise NotExpressible("a Pad whose axes are not a constant")
            full = [0] * 8
            for k, ax in enumerate(int(v) % 4 for v in np.asarray(a).ravel()):
                full[ax], full[ax + 4] = pads[k], pads[k + len(pads) // 2]
            pads = full
    if len(pads) != 8 or any(v < 0 for v in pads):
        raise NotExpressible(f"Pad pads {pads}: MPSNNPad adds pixels (no cropping)")
    if any(pads[k] for k in (0, 1, 4, 5)):
        raise NotExpressible(f"a Pad of the batch or channel axes (pads {pads}): MPSNNPad "
                             "pads height and width here")
    edge = "constant" if mode == "constant" and fill != 0.0 else _PAD_MODES[mode]
    before, after = (pads[2], pads[3]), (pads[6], pads[7])

    def run(xs: list[Image], dt: Any) -> Image:
        return pad(xs[0], before, after, edge, fill, out_dtype=dt)

    def bound(xs: list[Image], ds: list[np.ndarray]) -> np.ndarray:
        # each value is one source value or the fill: moves as that source value
        return pad(float_image(ds[0]), before, after, "zero" if edge == "constant" else edge,
                   out_dtype=np.float32).nhwc()

    return Kernel(f"MPSNNPad (MPSImageEdgeMode{edge.capitalize()})", [node.inputs[0]], run, bound)


BUILDERS: dict[str, Callable[[NodeView], Kernel]] = {
    **dict.fromkeys(("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"),
                    _pool),
    "Resize": _resize, "Upsample": _resize, "Pad": _pad,
}
