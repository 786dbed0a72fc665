"""Keras convolutions beyond Conv2D: Conv1D (an MPS convolution of kernel height 1 whose
width axis is the sequence, docs/layouts.md section 1) and SeparableConv1D/2D, which
are two MPS layers: the depthwise convolution ``NAME/depthwise`` (no bias, no activation),
then the 1x1 pointwise convolution ``NAME`` with the layer's bias, activation and any
batch norm folded into it. Called by the Keras reader with itself (for variables, folds
and the plan) and the layer's node.
"""

from __future__ import annotations

from typing import Any

from ... import geometry as mf
from ...attrs import as_int
from ...plan import Layer, SkipLayer, folded_bias
from .graph import Node, conv_pads, pair, shape_hwc

__all__ = ["CLASSES", "ONE_D", "axes", "conv1d", "separable"]

ONE_D = frozenset(("Conv1D", "SeparableConv1D"))
CLASSES = ONE_D | {"SeparableConv2D"}


def _one(n: Node, key: str) -> int:
    """A 1-D layer's stride or dilation: one int, or a list of one."""
    v = n.cfg.get(key, 1)
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise ValueError(f"layer {n.name!r}: {key} {v} of a 1-D convolution must hold "
                             "one value")
        v = v[0]
    return as_int(v, f"layer {n.name!r}: {key}", minimum=1)


def _pads_1d(n: Node, length: Any, k: int, s: int, d: int) -> tuple[int, int] | None:
    padding = n.cfg.get("padding", "valid")
    if padding == "causal":  # everything on the left: y[t] reads x[t - (k-1)*d .. t]
        return (k - 1) * d, 0
    return conv_pads(padding, length, k, s, d)


def axes(n: Node, k: tuple[int, int]) -> dict[str, Any]:
    """(strides, dilations, (top, left, bottom, right) pads, input (H, W), output (H, W))
    of a 1-D or 2-D Keras convolution with kernel ``k`` = (kH, kW); a 1-D one's sequence is
    the width and its height 1. Pads are None when they need an unknown size."""
    if n.cls in ONE_D:
        s, d = (1, _one(n, "strides")), (1, _one(n, "dilation_rate"))
        shape = n.in_shape
        length = shape[1] if isinstance(shape, list) and len(shape) == 3 and \
            isinstance(shape[1], int) else None
        px = _pads_1d(n, length, k[1], s[1], d[1])
        pads = None if px is None else (0, px[0], 0, px[1])
        in_hw: tuple[Any, Any] = (1, length)
    else:
        s, d = pair(n, "strides"), pair(n, "dilation_rate")
        hwc = shape_hwc(n.in_shape, n.cfg.get("data_format", "channels_last"))
        in_hw = (None, None) if hwc is None else (hwc[0], hwc[1])
        py = conv_pads(n.cfg.get("padding", "valid"), in_hw[0], k[0], s[0], d[0])
        px = conv_pads(n.cfg.get("padding", "valid"), in_hw[1], k[1], s[1], d[1])
        pads = None if py is None or px is None else (py[0], px[0], py[1], px[1])
    if pads is None:
        raise SkipLayer(f"padding={n.cfg.get('padding')!r} with strides {list(s)} needs the "
                        "input size, which the saved config does not give: pass --input-dims")
    out_hw = tuple(mf.conv_out(in_hw[i], k[i], s[i], d[i], (pads[i], pads[i + 2]))
                   for i in range(2))
    return {"stride": s, "dilation": d, "pads": pads, "in_hw": in_hw, "out_hw": out_hw}


_NOTE_1D = ("a Conv1D: an MPS convolution of kernel height 1, the sequence along the width "
            "(the (N, L, C) input as an image 1 pixel high and L wide)")


def conv1d(r: Any, n: Node) -> None:
    """A Keras Conv1D, kernel (K, I/groups, O), as a Conv2D of kernel (1, K)."""
    refs = r.vars(n)
    if "kernel" not in refs or len(refs["kernel"].shape) != 3:
        raise SkipLayer("no 3-D kernel found")
    k, ig, o = refs["kernel"].shape
    groups = as_int(n.cfg.get("groups", 1), f"layer {n.name!r}: groups", minimum=1)
    a = axes(n, (1, k))
    last, scale, shift = r.fold(n, o)
    geo = mf.conv_geometry(kh=1, kw=k, cin=ig * groups, cout=o, groups=groups,
                           stride=a["stride"], dilation=a["dilation"], pads=a["pads"],
                           in_hw=a["in_hw"], out_hw=a["out_hw"])
    w = refs["kernel"]  # (K, I, O) stays 3-D: the target reads it as kernel height 1
    w_scale = None if scale is None else scale.reshape(1, 1, o)
    layer = Layer(n.name, "convolution", "conv", r.source(n, refs, last), w,
                  folded_bias(refs.get("bias"), o, n.name, scale, shift),
                  {"layout": "HWIO", "groups": groups}, geo, w_scale)
    layer.notes.append(_NOTE_1D)
    r.finish(layer, n, last)


def separable(r: Any, n: Node) -> None:
    """SeparableConv1D/2D: the depthwise layer ``NAME/depthwise``, then the pointwise
    1x1 convolution ``NAME`` (bias, activation, folded batch norm)."""
    refs = r.vars(n)
    one_d = n.cls in ONE_D
    rank = 3 if one_d else 4
    dw, pw = refs.get("kernel"), refs.get("pointwise_kernel")
    if dw is None or pw is None or len(dw.shape) != rank or len(pw.shape) != rank:
        raise SkipLayer(f"no {rank}-D depthwise and pointwise kernels found")
    kh, kw, cin, m = (1, *dw.shape) if one_d else dw.shape  # 1-D: kernel height 1
    o = pw.shape[-1]
    if tuple(pw.shape[:-1]) != (1,) * (rank - 2) + (cin * m,):
        raise SkipLayer(f"pointwise kernel {list(pw.shape)} does not read the {cin * m} "
                        "channels of the depthwise kernel")
    a = axes(n, (kh, kw))
    geo = mf.conv_geometry(kh=kh, kw=kw, cin=cin, cout=cin * m, groups=cin,
                           stride=a["stride"], dilation=a["dilation"], pads=a["pads"],
                           in_hw=a["in_hw"], out_hw=a["out_hw"])
    mid = f"{n.name}/depthwise"
    src = {"format": "keras", "layer": n.name, "node": mid, "part": "depthwise", "op": n.cls,
           "weights": dw.name, "bias": None, "activation": "linear", "output": mid}
    if m == 1:
        first = Layer(mid, "depthwise", "depthwise", src, dw, None, {"layout": "HWCM"}, geo)
    else:
        geo["groups"] = 1
        first = Layer(mid, "convolution", "expand_depthwise", src, dw, None,
                      {"layout": "HWCM"}, geo)
        first.notes.append(f"depthwise with depth_multiplier {m}: MPS depthwise takes "
                           "multiplier 1 only, so this is an ordinary convolution whose "
                           "weights are zero outside each channel")
    first.notes.append(f"the depthwise half of {n.cls} {n.name!r}: no bias; the pointwise "
                       f"layer {n.name!r} follows it" + (f"; {_NOTE_1D}" if one_d else ""))
    r.plan.layers.append(first)
    last, scale, shift = r.fold(n, o)
    pgeo = mf.conv_geometry(kh=1, kw=1, cin=cin * m, cout=o, groups=1, stride=(1, 1),
                            dilation=(1, 1), pads=(0, 0, 0, 0), in_hw=a["out_hw"],
                            out_hw=a["out_hw"])
    psrc = r.source(n, {"kernel": pw, **({"bias": refs["bias"]} if "bias" in refs else {})},
                    last)
    psrc["node"], psrc["part"] = n.name, "pointwise"
    w_scale = None if scale is None else scale.reshape(*([1] * (rank - 1)), o)
    second = Layer(n.name, "convolution", "conv", psrc, pw,
                   folded_bias(refs.get("bias"), o, n.name, scale, shift),
                   {"layout": "HWIO", "groups": 1}, pgeo, w_scale)
    second.notes.append(f"the pointwise half of {n.cls} {n.name!r}: a 1x1 convolution of "
                        f"the depthwise layer {mid!r}'s output")
    r.finish(second, n, last)
