"""Each layer of an MLX export run by MLX's own operators on the CPU (``mx.conv_general``,
``mx.conv_transpose1d/2d/3d``, ``mx.matmul``, ``nn.BatchNorm``, ``nn.LSTM``/``GRU``/``RNN``)
from the file's tensors, on the oracle's input to that layer moved from channels-first to
MLX's channels-last, and the bound that float32 rounding (and float16/bfloat16 weights)
explains of the difference (docs/verify.md, "MLX exports").

Every function returns ``(y, explained)`` in the ORACLE's layout (channels first), so the
comparison needs no second transpose of the reference: ``explained`` is the tolerance
model's ``k*u32*M + u_w*M`` with ``M`` the same operator run on ``|x|``, ``|w|``, ``|b|``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .tolerance import U32

__all__ = ["run_layer", "weight_unit"]

_UNITS = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def weight_unit(dtype_name: str) -> float:
    """Unit roundoff of the exported weights against the model's float32 ones."""
    return _UNITS.get(dtype_name, 0.0)


def _mx() -> Any:
    import mlx.core as mx

    return mx


def _last(x: np.ndarray) -> np.ndarray:
    """Channels-first (N, C, *S) -> MLX's channels-last (N, *S, C)."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _first(y: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(y, -1, 1))


def _np(a: Any) -> np.ndarray:
    return np.asarray(_mx().array(a).astype(_mx().float32), dtype=np.float32)


def _f32(a: np.ndarray) -> Any:
    return _mx().array(np.asarray(a, dtype=np.float32))


def _pairs(geo: Mapping[str, Any], rank: int) -> tuple[list[int], list[int], list[int],
                                                         list[int]]:
    """(strides, dilations, pad begin, pad end) over ``rank`` spatial axes (1-D: width)."""
    s, d, p = geo.get("strides") or {}, geo.get("dilations") or {}, geo.get("padding") or {}
    axes = (("y", "top", "bottom"), ("x", "left", "right"))[-rank:] if rank <= 2 else None
    if axes is None:
        raise ValueError(f"{rank}-D spatial geometry is not recorded")
    return ([int(s.get(a, 1)) for a, _, _ in axes], [int(d.get(a, 1)) for a, _, _ in axes],
            [int(p.get(b, 0)) for _, b, _ in axes], [int(p.get(e, 0)) for _, _, e in axes])


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geo: Mapping[str, Any]
          ) -> np.ndarray:
    mx = _mx()
    stride, dil, lo, hi = _pairs(geo, w.ndim - 2)
    # MLX's grouped convolution: groups = input channels / the weight's channels per group
    # (a Keras depthwise with a multiplier, exported for MPS as a full convolution, is
    # MLX's (C*M, kH, kW, 1) weight with groups = C)
    groups = max(1, x.shape[1] // max(1, w.shape[-1]))
    y = mx.conv_general(_f32(_last(x)), _f32(w), stride=stride, padding=(lo, hi),
                        kernel_dilation=dil, groups=groups)
    if b is not None:
        y = y + _f32(b)
    return _first(_np(y))


def _conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                    geo: Mapping[str, Any]) -> np.ndarray:
    """``mx.conv_transpose{1,2}d`` with no padding (the full output), then the framework's
    begin/end padding cropped and its output padding appended (zeros, then the bias)."""
    mx = _mx()
    rank = w.ndim - 2
    stride, dil, lo, hi = _pairs(geo, rank)
    op = geo.get("output_padding") or {}
    extra = [int(op.get(a, 0)) for a in ("y", "x")[-rank:]]
    fn = {1: mx.conv_transpose1d, 2: mx.conv_transpose2d}[rank]
    args = (stride[0], 0, dil[0]) if rank == 1 else (tuple(stride), 0, tuple(dil))
    full = _np(fn(_f32(_last(x)), _f32(w), *args))
    # the framework's output is full[lo : len + extra - hi]; a negative pad (Keras writes
    # output padding so) or the output padding reaches past the full output: zeros there
    size = [full.shape[1 + k] + e - a - z for k, (a, z, e) in enumerate(zip(lo, hi, extra))]
    full = np.pad(full, [(0, 0)] + [(max(0, -a), max(0, n + a - full.shape[1 + k]))
                                    for k, (a, n) in enumerate(zip(lo, size))] + [(0, 0)])
    crop = [slice(max(0, a), max(0, a) + n) for a, n in zip(lo, size)]
    y = full[(slice(None), *crop, slice(None))]
    if b is not None:
        y = y + b.astype(np.float32)
    return _first(y)


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
            per_position: bool = False) -> np.ndarray:
    """``nn.Linear``: on the image flattened channels last (a Linear after a flatten), or
    with ``per_position`` on the channels of each position (a Keras Dense on an image)."""
    mx = _mx()
    if per_position:
        y = mx.matmul(_f32(_last(x)), _f32(w).T)
        return _first(_np(y + _f32(b) if b is not None else y))
    flat = x.reshape(x.shape[0], -1) if x.ndim == 2 else _last(x).reshape(x.shape[0], -1)
    y = mx.matmul(_f32(flat), _f32(w).T)
    if b is not None:
        y = y + _f32(b)
    return _np(y)


def _dequantized(arrays: Mapping[str, np.ndarray], names: Mapping[str, str],
                 q: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(the weights ``mx.dequantize`` gives, float32; how far each may lie from the
    model's: half a quantization step plus the float32 roundings of the affine map)."""
    mx = _mx()
    scales = arrays[names["scales"]]
    w = _np(mx.dequantize(mx.array(np.asarray(arrays[names["weight"]])),
                          mx.array(np.asarray(scales)),
                          mx.array(np.asarray(arrays[names["biases"]])),
                          group_size=int(q["group_size"]), bits=int(q["bits"])))
    step = np.repeat(np.abs(np.asarray(scales, np.float32)), int(q["group_size"]), axis=-1)
    return w, 0.5 * step + 4 * U32 * np.abs(w)


def _abs_bound(fn: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *rest: Any
               ) -> np.ndarray:
    return fn(np.abs(x), np.abs(w), None if b is None else np.abs(b), *rest)


def run_layer(rule: str, record: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
              x: np.ndarray, attrs: Mapping[str, Any], u_w: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """``(y, explained)`` of one convolution / transposed / fully connected / batch norm
    layer (``record``: the layer's entry in the file's metadata; ``arrays``: the file's
    tensors; ``x``: the oracle's input to it, channels first; ``attrs``: the ONNX node's
    attributes, for what the geometry does not hold: a batch norm's epsilon)."""
    names = record["tensors"]
    geo = record.get("geometry", {})
    w = np.asarray(arrays[names["weight"]], np.float32) if "weight" in names else None
    b = np.asarray(arrays[names["bias"]], np.float32) if "bias" in names else None
    if rule in ("conv", "depthwise", "expand_depthwise", "conv_subpixel"):
        assert w is not None
        if x.ndim == w.ndim - 1:  # a 1-D convolution over (N, C, L) read as 2-D, H = 1
            x = x[:, :, None]
        y = _conv(x, w, b, geo)
        m = _abs_bound(_conv, x, w, b, geo)
        k = int(np.prod(w.shape[1:]))
    elif rule == "transposed":
        assert w is not None
        y = _conv_transpose(x, w, b, geo)
        m = _abs_bound(_conv_transpose, x, w, b, geo)
        k = int(np.prod(w.shape[:-1])) // max(1, w.shape[0])
    elif rule in ("fc", "dense_reshape"):
        assert w is not None
        q = record.get("quantization")
        err = None
        if q is not None:  # nn.QuantizedLinear's arrays: run what MLX dequantizes
            w, err = _dequantized(arrays, names, q)
        per = x.ndim > 2 and not record.get("params", {}).get("input_shape") \
            and x.shape[1] == w.shape[1]
        y = _linear(x, w, b, per)
        m = _abs_bound(_linear, x, w, b, per)
        k = w.shape[1]
        if err is not None:  # each weight within half a step of the model's
            return y, (k + 1) * U32 * m + u_w * m + _linear(np.abs(x), err, None, per)
    elif rule == "batch_norm":
        return _batch_norm(names, arrays, x, float(attrs.get("epsilon", 1e-5)), u_w)
    else:
        raise ValueError(f"rule {rule!r} is not run by verify's MLX path")
    explained = (k + 1) * U32 * m + u_w * m
    return y, explained


def _batch_norm(names: Mapping[str, str], arrays: Mapping[str, np.ndarray], x: np.ndarray,
                eps: float, u_w: float) -> tuple[np.ndarray, np.ndarray]:
    """``nn.BatchNorm`` in eval mode; the bound: a few float32 roundings of each term, and
    the rounding of each of the four stored vectors (the square root halves the
    variance's)."""
    import mlx.nn as nn

    t = {k: np.asarray(arrays[v], np.float32) for k, v in names.items()}
    bn = nn.BatchNorm(t["weight"].shape[0], eps=eps)
    bn.load_weights([(k, _f32(v)) for k, v in t.items()])
    bn.eval()
    y = _first(_np(bn(_f32(_last(x)))))
    scale = np.abs(t["weight"]) / np.sqrt(t["running_var"] + eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = (np.abs(x) + np.abs(t["running_mean"]).reshape(shape)) * scale.reshape(shape) \
        + np.abs(t["bias"]).reshape(shape)
    return y, (8 * U32 + 3 * u_w) * m


# ------------------------------------------------------------------------ recurrent


def run_recurrent(rule: str, path: str, arrays: Mapping[str, np.ndarray], x: np.ndarray,
                  h0: np.ndarray | None, c0: np.ndarray | None, backward: bool,
                  nonlinearity: str | None) -> np.ndarray:
    """``Y`` of one direction, ``(T, B, H)``, from ``mlx.nn.LSTM``/``GRU``/``RNN`` loaded
    with the file's parameters at ``path``; ``x`` is ONNX's ``(T, B, I)``."""
    mx = _mx()
    import mlx.nn as nn

    params = {k[len(path) + 1:]: _f32(v) for k, v in arrays.items()
              if k.startswith(path + ".") and "." not in k[len(path) + 1:]}
    wx = params.get("Wx", params.get("Wxh"))
    if wx is None:
        raise LookupError(f"no parameters under {path!r}")
    hidden, inputs = (wx.shape[0] // {"lstm": 4, "gru": 3, "rnn": 1}[rule], wx.shape[1])
    has_bias = "bias" in params or "b" in params
    if rule == "lstm":
        cell = nn.LSTM(inputs, hidden, bias=has_bias)
    elif rule == "gru":
        cell = nn.GRU(inputs, hidden, bias=has_bias)
    else:
        relu = nonlinearity == "ReLU"
        cell = nn.RNN(inputs, hidden, bias=has_bias,
                      nonlinearity=(lambda v: mx.maximum(v, 0)) if relu else None)
    cell.load_weights(list(params.items()), strict=True)
    seq = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # (B, T, I)
    if backward:
        seq = seq[:, ::-1]
    kw: dict[str, Any] = {}
    if h0 is not None:
        kw["hidden"] = _f32(h0)
    if c0 is not None and rule == "lstm":
        kw["cell"] = _f32(c0)
    out = cell(_f32(np.ascontiguousarray(seq)), **kw)
    y = _np(out[0] if isinstance(out, (tuple, list)) else out)  # (B, T, H)
    if backward:
        y = y[:, ::-1]
    return np.ascontiguousarray(np.swapaxes(y, 0, 1))
