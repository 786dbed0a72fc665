"""Quantized ONNX weights as MPS 8-bit weights (docs/layouts.md section 10).

- A weight that is ``DequantizeLinear(q, scale, zero_point)`` of constants (a QDQ model)
  reads, for every rule of the reader, as its float values ``(q - zp) * scale`` (a
  :class:`QuantRef`), and is written as MPS uint8 weights with per-output-channel ranges,
  the bytes of q moved by the layer's layout rule, not requantized (``quantize.from_onnx``).
- ``ConvInteger`` / ``MatMulInteger`` with a constant weight and weight zero point become a
  convolution / fully connected layer over float input whose weights are ``q - zp``, times
  the weight scale of the ONNX Runtime dynamic-quantization pattern when it is found
  (``Cast -> Mul(Mul(x_scale, w_scale))``), else in integer units (said in the notes).

Where the bytes cannot be kept (a folded batch norm or Gemm alpha rescales the weights, a
rule that reorders output channels, scales along an input axis) the layer is written from
the dequantized floats instead, with a note.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import mps, quantize
from .layers import Layer, SkipLayer, TensorRef
from .onnx_tensors import _onnx

# the source axis of output channels, by rule and layout (None: the rule reorders them)
_OUT_AXIS = {("conv", "OIHW"): 0, ("conv", "HWIO"): 3, ("depthwise", "OIHW"): 0,
             ("depthwise", "HWCM"): 2, ("transposed", "IOHW"): 1, ("transposed", "HWOI"): 2,
             ("fc", "OI"): 0, ("fc", "IO"): 1}


@dataclass
class QuantRef(TensorRef):
    """A float weight given as 8-bit ``q`` with ``scale`` and ``zero_point`` (per tensor or
    along ``axis``); ``parts`` are the source tensors it stands for."""

    q: TensorRef | None = None
    scale: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    zero_point: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))
    axis: int | None = None
    parts: list[str] = field(default_factory=list)
    origin: str = "DequantizeLinear"


def _float_values(q: TensorRef, scale: np.ndarray, zp: np.ndarray, axis: int | None
                  ) -> np.ndarray:
    """``(q - zp) * scale`` in float32, as DequantizeLinear computes it."""
    a = q.load().astype(np.int32)
    shape = [1] * a.ndim
    if axis is not None and scale.size > 1:
        shape[axis] = -1
    s = scale.astype(np.float32).reshape(shape if scale.size > 1 else ())
    z = zp.astype(np.int32).reshape(shape if zp.size > 1 else ())
    return ((a - z).astype(np.float32) * s).astype(np.float32)


def quant_ref(name: str, q: TensorRef, scale: np.ndarray, zp: np.ndarray | None,
              axis: int | None, parts: list[str], origin: str) -> QuantRef:
    zp_a = np.zeros(1, np.int32) if zp is None else np.asarray(zp).astype(np.int32).ravel()
    s = np.asarray(scale, np.float32).ravel()
    return QuantRef(name, q.shape, np.dtype(np.float32),
                    lambda: _float_values(q, s, zp_a, axis), q=q, scale=s, zero_point=zp_a,
                    axis=axis, parts=parts, origin=origin)


def dequantized(g: Any, name: str) -> QuantRef | None:
    """``name`` as a QuantRef when a DequantizeLinear of constants produces it."""
    known = g.refs.get(name)
    if isinstance(known, QuantRef):
        return known
    node = g.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    q = g.const(node.input[0])
    s = g.const(node.input[1]) if len(node.input) > 1 else None
    z = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if q is None or s is None or q.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        return None
    attrs = {a.name: a for a in node.attribute}
    if "block_size" in attrs and attrs["block_size"].i:
        return None  # blocked quantization: no per-channel range expresses it
    axis = attrs["axis"].i if "axis" in attrs else 1
    if len(q.shape):
        axis %= len(q.shape)
    parts = [q.name, s.name] + ([z.name] if z is not None else [])
    return quant_ref(name, q, s.load(), None if z is None else z.load(), axis, parts,
                     "DequantizeLinear")


def dequantize_node(g: Any, node: Any) -> None:
    """A DequantizeLinear of constants is read by its consumer (a weight); one on a computed
    tensor quantizes activations, which MPS does not: listed."""
    if dequantized(g, node.output[0]) is None:
        g.list_node(node, "DequantizeLinear of a computed tensor (activation quantization): "
                    "MPS computes in float; run the float model's path")


def dynamic_quantize_node(g: Any, node: Any) -> None:
    """DynamicQuantizeLinear quantizes activations at run time; MPS layers read floats."""
    g.plan.skip(g.name(node), node.op_type, "activation quantization: the exported layers "
                "read the float activations it quantizes")


def _w_scale(g: Any, node: Any) -> tuple[np.ndarray | None, list[str], str | None]:
    """The weight scale of ORT's dynamic-quantization pattern after an integer op:
    ``Cast(int32 -> float) -> Mul(., Mul(x_scale, w_scale))`` with w_scale constant (the
    inner Mul is then consumed: its constant is in the layer's ranges)."""
    cast = g.sole_consumer(node.output[0])
    if cast is None or cast.op_type != "Cast":
        return None, [], None
    mul = g.sole_consumer(cast.output[0])
    if mul is None or mul.op_type != "Mul":
        return None, [], None
    other = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
    c = g.const(other)
    if c is not None:
        return c.load().astype(np.float32).ravel(), [c.name], mul.output[0]
    inner = g.producer.get(other)
    if inner is not None and inner.op_type == "Mul":
        for t in inner.input:
            c = g.const(t)
            if c is not None:  # already listed as an arithmetic tensor: it is in the ranges
                g.absorb(inner)
                return c.load().astype(np.float32).ravel(), [c.name], mul.output[0]
    return None, [], None


def integer_node(g: Any, node: Any) -> None:
    """ConvInteger / MatMulInteger with a constant 8-bit weight: a float layer whose weight
    is a QuantRef ``(q - zp) * w_scale``, built by the ordinary Conv / MatMul rule."""
    from . import onnx_layers as ol

    q = g.const(node.input[1])
    if q is None or q.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise SkipLayer("its weight is not a constant uint8/int8 tensor", unsupported=True)
    zp_in = 3 if node.op_type in ("ConvInteger", "MatMulInteger") else None
    z = g.const(node.input[zp_in]) if zp_in and len(node.input) > zp_in and \
        node.input[zp_in] else None
    scale, scale_parts, scaled = _w_scale(g, node)
    notes = []
    if scale is None:
        scale = np.ones(1, np.float32)
        notes.append("weights in integer units (q - zero_point): no constant weight scale "
                     "found after the op; multiply the output by it")
    out_axis = 0 if node.op_type == "ConvInteger" else 1
    zp = None if z is None else z.load()
    n_out = q.shape[out_axis]
    if scale.size not in (1, n_out):
        raise SkipLayer(f"weight scale of {scale.size} values for {n_out} output channels")
    if zp is not None and zp.size not in (1, n_out):
        raise SkipLayer(f"weight zero point of {zp.size} values for {n_out} outputs")
    parts = [q.name] + ([z.name] if z is not None else []) + scale_parts
    ref = quant_ref(f"{q.name}:dequantized", q, scale, zp,
                    out_axis if max(scale.size, 1 if zp is None else zp.size) > 1 else None,
                    parts, node.op_type)
    g.refs[ref.name] = ref  # read back by dequantized() through g.const
    x_zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
    float_node = _onnx().NodeProto()
    float_node.CopyFrom(node)
    float_node.op_type = "Conv" if node.op_type == "ConvInteger" else "MatMul"
    del float_node.input[:]
    # MPS reads the float activations DynamicQuantizeLinear quantizes
    x = node.input[0]
    dql = g.producer.get(x)
    if dql is not None and dql.op_type == "DynamicQuantizeLinear":
        x = dql.input[0]
    float_node.input.extend([x, ref.name])
    if scaled is not None:  # the float layer's output is the rescaled one: folds follow it
        del float_node.output[:]
        float_node.output.append(scaled)
    g.names[id(float_node)] = g.name(node)
    before = len(g.plan.layers)
    (ol.conv if node.op_type == "ConvInteger" else ol.matmul)(g, float_node)
    for layer in g.plan.layers[before:]:
        layer.notes.append(f"{node.op_type}: exported as a float layer with 8-bit weights; "
                           "MPS reads float activations, so the input quantization "
                           f"(DynamicQuantizeLinear{', zero point ' + repr(x_zp) if x_zp else ''}"
                           ") and the output scaling are not part of it")
        layer.notes.extend(notes)
        layer.carried.extend(parts)


# ----------------------------------------------------------------------- conversion


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
