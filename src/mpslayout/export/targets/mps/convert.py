"""The MPS target's conversion: one plan :class:`~mpslayout.export.plan.Layer` becomes the
arrays of its MPS files, through the public converters of :mod:`mpslayout.mps`,
:mod:`mpslayout.rnn` and :mod:`mpslayout.images` (the rules of docs/layouts.md), in chunks
of output channels where the rule keeps channel slices contiguous, so that peak memory
stays near the largest single tensor. 8-bit source weights (a
:class:`~mpslayout.export.plan.QuantRef`) keep their bytes where the rule allows
(docs/layouts.md section 10).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import numpy as np

from .... import images, mps, quantize, rnn
from ....engine import _cast_code
from ...plan import BN_ROLES, Layer, QuantRef, is_float, scaled

CHUNK_BYTES = 64 << 20  # output bytes converted at a time where a rule allows slicing

_F4 = np.dtype(np.float32)

# the source axis of output channels, by rule and layout (None: the rule reorders them)
_OUT_AXIS = {("conv", "OIHW"): 0, ("conv", "HWIO"): 3, ("depthwise", "OIHW"): 0,
             ("depthwise", "HWCM"): 2, ("transposed", "IOHW"): 1, ("transposed", "HWOI"): 2,
             ("fc", "OI"): 0, ("fc", "IO"): 1}


def _call(fn: Callable[..., Any], a: np.ndarray, dtype: np.dtype) -> Any:
    """``fn(a, dtype=dtype)``, through float32 when the engine has no direct cast."""
    if _cast_code(a.dtype, dtype) is not None:
        return fn(a, dtype=dtype)
    r = fn(a, dtype=_F4)
    if isinstance(r, tuple):
        return (r[0].astype(dtype), *tuple(r[1:]))
    return r.astype(dtype)


def _converter(layer: Layer) -> tuple[Callable[..., Any], int | None]:
    """The converter call for ``layer`` and the source axis along which it may be chunked
    (its output channels, when slices of that axis give leading slices of the result)."""
    p = layer.params
    rule = layer.rule
    if rule == "conv":
        groups = p.get("groups", 1)
        return (lambda a, dtype: mps.conv_weights(
            a, layout=p["layout"], groups=groups, dtype=dtype),
            None if groups != 1 else (0 if p["layout"] == "OIHW" else 3))
    if rule == "depthwise":
        return (lambda a, dtype: mps.depthwise_weights(a, layout=p["layout"], dtype=dtype),
                0 if p["layout"] == "OIHW" else 2)
    if rule == "expand_depthwise":
        return (lambda a, dtype: mps.expand_depthwise(
            a, layout=p["layout"], in_channels=p.get("in_channels"), dtype=dtype), None)
    if rule == "transposed":
        groups = p.get("groups", 1)
        return (lambda a, dtype: mps.conv_transpose_weights(
            a, layout=p["layout"], groups=groups, dtype=dtype),
            None if groups != 1 else (1 if p["layout"] == "IOHW" else 2))
    if rule == "fc":
        return (lambda a, dtype: mps.fc_weights(
            a, input_shape=p.get("input_shape"), layout=p["layout"],
            flatten=p.get("flatten", "CHW"), dtype=dtype), 0 if p["layout"] == "OI" else 1)
    raise ValueError(f"rule {rule!r} has no single-call converter")


QUANTIZABLE = ("conv", "depthwise", "expand_depthwise", "transposed", "fc", "dense_reshape",
               "conv_subpixel")


_KERNEL_RULES = ("conv", "depthwise", "expand_depthwise", "transposed")


def kernel_2d(layer: Layer, a: np.ndarray | None) -> Any:
    """A 1-D convolution's 3-D weight (or weight scale) as MPS's 2-D one of kernel height 1
    (docs/layouts.md section 1, Conv1d): ``(A, B, K)`` -> ``(A, B, 1, K)`` (OIHW, IOHW),
    ``(K, B, C)`` -> ``(1, K, B, C)`` (HWIO, HWOI, HWCM); the same bytes. Anything else
    as it is."""
    if a is None or a.ndim != 3 or layer.rule not in _KERNEL_RULES:
        return a
    if layer.params.get("layout") in ("OIHW", "IOHW"):
        return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2])
    return a.reshape(1, *a.shape)


def convert_layer(layer: Layer, dtype: np.dtype,
                  chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, np.ndarray, int]]:
    """:func:`convert_floats`, or for ``dtype`` uint8 its float32 result quantized
    (convolution and fully connected weights; other layers stay float32)."""
    if dtype != np.uint8:
        yield from convert_floats(layer, dtype, chunk_bytes)
        return
    if layer.rule not in QUANTIZABLE:
        yield from convert_floats(layer, _F4, chunk_bytes)
        return
    parts: list[np.ndarray] = []
    rest = []
    for role, a, nbytes in convert_floats(layer, _F4, chunk_bytes):
        if role == "weights" and a.dtype != np.uint8:
            parts.append(a)  # float32 chunks, output channels first
        else:
            rest.append((role, a, nbytes))  # bias, or an 8-bit source layer's files
    if parts:
        yield from requantize(layer, np.concatenate(parts), layer.params.get("quantize",
                                                                               "linear"))
    yield from rest


def requantize(layer: Layer, weights: np.ndarray, mode: str
               ) -> Iterator[tuple[str, np.ndarray, int]]:
    """``--dtype uint8`` on float weights (already in MPS layout, output channels first):
    the weights and their ranges or table (the caller yields the bias)."""
    q, table = quantize.quantize_weights(weights, mode=mode)
    layer.geometry["quantization"] = {"type": mode, "source": "float", "exact": False,
                                      "source_tensors": []}
    yield "weights", q, q.nbytes
    yield ("ranges" if mode == "linear" else "lut"), table, 0


def _ungrouped(layer: Layer, w: np.ndarray) -> np.ndarray:
    """A grouped convolution whose channels per group are not multiples of 4 (what
    MPSCNNConvolution's groups need, docs/layouts.md section 1) as the equivalent full
    convolution: group j's weights in the block of its inputs and outputs, zeros elsewhere
    (``w`` in the source layout, 4-D); the layer's geometry then says groups 1."""
    g = int(layer.params.get("groups", 1))
    if g == 1:
        return w
    oihw = layer.params["layout"] == "OIHW"
    o, ig = (w.shape[0], w.shape[1]) if oihw else (w.shape[3], w.shape[2])
    og = o // g
    if ig % 4 == 0 and og % 4 == 0:
        return w
    dense = np.zeros((o, ig * g, *w.shape[2:]) if oihw else (*w.shape[:2], ig * g, o), w.dtype)
    for j in range(g):
        rows, cols = slice(j * og, (j + 1) * og), slice(j * ig, (j + 1) * ig)
        if oihw:
            dense[rows, cols] = w[rows]
        else:
            dense[:, :, cols, rows] = w[..., rows]
    layer.params["groups"] = 1
    layer.geometry["groups"] = 1
    layer.geometry["input_channels"] = ig * g
    layer.notes.append(
        f"groups={g} with {ig} input and {og} output channels per group (MPS's grouped "
        "convolution needs multiples of 4): written as the equivalent full convolution, "
        "each group's weights in its own block, zeros elsewhere")
    return dense


def convert_floats(layer: Layer, dtype: np.dtype,
                   chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, np.ndarray, int]]:
    """Yield ``(role, array, source_bytes)``: the weights, possibly in several chunks whose
    concatenation along axis 0 is the whole result, then the float32 vectors (bias, or a
    batch norm's gamma/beta/mean/variance). ``source_bytes`` is for progress."""
    if layer.rule in ("lstm", "gru", "rnn"):  # one file per gate data source
        yield from recurrent_files(layer, dtype)
        return
    if layer.rule in ("arithmetic", "tensor"):
        ref = layer.weight
        if ref is None:
            raise ValueError(f"layer {layer.name!r} has no tensor")
        a = ref.load()
        if layer.rule == "arithmetic":  # (1, C, H, W) -> (ceil(C/4), H, W, 4)
            yield "constant", _call(images.image_slices, a, dtype), ref.nbytes
        elif is_float(a.dtype):
            yield "tensor", _call(lambda x, dtype: np.asarray(x).astype(dtype), a, dtype), \
                ref.nbytes
        else:
            yield "tensor", np.ascontiguousarray(a), ref.nbytes
        return
    if layer.rule == "batch_norm":
        for role in BN_ROLES:
            ref = layer.tensors[role]
            yield role, mps.bias(ref.load()), ref.nbytes
        return
    w_ref = layer.weight
    if w_ref is None:
        raise ValueError(f"layer {layer.name!r} has no weight tensor")
    src = kernel_2d(layer, w_ref.load())
    w_scale = kernel_2d(layer, layer.scale)
    p = layer.params
    if layer.rule in ("dense_reshape", "conv_subpixel"):
        a = scaled(src, w_scale, None, 0, 0)
        b = None if layer.bias is None else layer.bias.load()
        if layer.rule == "dense_reshape":
            layout, image = p["layout"], (1, 1, a.shape[1 if p["layout"] == "OI" else 0])
            if p.get("input_shape") is not None:  # it reads an image: its columns first
                a = mps.fc_weights(a, input_shape=p["input_shape"], layout=layout,
                                   flatten=p.get("flatten", "CHW"))
                layout, image, a = "OI", a.shape[1:], a.reshape(a.shape[0], -1)
            w, b_out = _call(lambda x, dtype: mps.dense_reshape(
                x, b, shape=p["shape"], layout=layout, order=p["order"],
                target=p["target"], dtype=dtype), a, dtype)
            w = w.reshape(w.shape[0], *image)  # OHWI over the image the layer reads
        else:  # a convolution before a CRD depth-to-space: channel c*r*r + y*r + x
            w = mps.conv_weights(a, layout=p["layout"])
            rows, b_out = _call(lambda x, dtype: mps.dense_reshape(
                x, b, shape=p["shape"], layout="OI", order="CHW", target="rows",
                dtype=dtype), w.reshape(w.shape[0], -1), dtype)
            w = rows.reshape(w.shape)
        del src, a
        yield "weights", w, w_ref.nbytes
        if b_out is not None:
            yield "bias", b_out, 0 if layer.bias is None else layer.bias.nbytes
        return
    if layer.rule == "conv" and getattr(w_ref, "q", None) is None:
        src = _ungrouped(layer, src)
    fn, axis = _converter(layer)
    if getattr(w_ref, "q", None) is not None:  # 8-bit source weights: bytes kept
        files = uint8_layer(layer, lambda u: fn(kernel_2d(layer, u),
                                                dtype=np.dtype(np.uint8)))
        if files is not None:
            yield from files
            return
    if axis is None or src.size == 0:
        yield "weights", _call(fn, scaled(src, w_scale, None, 0, 0), dtype), w_ref.nbytes
    else:
        n = src.shape[axis]
        per_index = max(1, src.size // n * dtype.itemsize)
        step = max(1, chunk_bytes // per_index)
        idx: list[Any] = [slice(None)] * src.ndim
        for start in range(0, n, step):
            stop = min(n, start + step)
            idx[axis] = slice(start, stop)
            chunk = scaled(src[tuple(idx)], w_scale, axis, start, stop)
            yield "weights", _call(fn, chunk, dtype), w_ref.nbytes * (stop - start) // n
    del src
    if layer.bias is not None:
        yield "bias", mps.bias(layer.bias.load()), layer.bias.nbytes


def uint8_layer(layer: Layer, converter: Any) -> Iterator[tuple[str, np.ndarray, int]] | None:
    """The uint8 files (weights, ranges, bias) of a layer whose weight is a QuantRef, or
    None when its bytes cannot be kept (the caller writes floats and this adds a note)."""
    w = layer.weight
    if not isinstance(w, QuantRef) or w.q is None:
        return None
    out_axis = _OUT_AXIS.get((layer.rule, layer.params.get("layout")))
    why = None
    if layer.scale is not None:
        why = "a folded batch norm or Gemm alpha rescales the weights"
    elif out_axis is None:
        why = f"rule {layer.rule!r} reorders the output channels"
    if why is not None:
        layer.notes.append(f"8-bit source weights written as float: {why}")
        return None
    u, ranges, exact = quantize.from_onnx(w.q.load(), w.scale, w.zero_point, axis=w.axis,
                                          out_axis=out_axis)
    if not exact:
        layer.notes.append("8-bit source weights requantized per output channel: their "
                           "scales run along another axis")
    layer.geometry["quantization"] = {"type": "linear", "source": w.origin,
                                      "exact": exact, "source_tensors": w.parts}
    return _files(layer, converter(u), ranges)


def _files(layer: Layer, weights: np.ndarray, ranges: np.ndarray
           ) -> Iterator[tuple[str, np.ndarray, int]]:
    yield "weights", weights, weights.nbytes
    yield "ranges", ranges, 0
    if layer.bias is not None:
        yield "bias", mps.bias(layer.bias.load()), layer.bias.nbytes


def recurrent_files(layer: Layer, dtype: np.dtype) -> Iterator[tuple[str, np.ndarray, int]]:
    """Yield ``(property, array, source_bytes)`` for every gate data source of ``layer``."""
    t = layer.tensors
    load = {k: v.load() for k, v in t.items()}
    fn = {"lstm": rnn.lstm_weights, "gru": rnn.gru_weights, "rnn": rnn.rnn_weights}[layer.rule]
    kw: dict[str, Any] = {"layout": layer.params["layout"],
                          "direction": layer.params["direction"]}
    if "P" in load:
        kw["P"] = load["P"]
    if layer.rule == "gru":
        kw["linear_before_reset"] = bool(layer.geometry["recurrent"]["linear_before_reset"])
    w_dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)
    props = fn(load["W"], load["R"], load.get("B"), dtype=w_dtype, **kw)
    total = sum(v.nbytes for v in t.values())
    share = total // max(1, len(props))
    for role, arr in props.items():
        yield role, arr, share


def file_layout(role: str) -> str:
    """The manifest layout of one property file."""
    if role.endswith("Weights") and not role.endswith("MemoryWeights"):
        return "OHWI"
    return "O"
