"""Quantization operators of an ONNX graph (docs/layouts.md section 10).

- A ``DequantizeLinear`` of constants is read by its consumer as an 8-bit weight
  (:mod:`.dequantize`); one on a computed tensor quantizes activations: listed.
- ``ConvInteger`` / ``MatMulInteger`` with a constant weight and weight zero point become a
  convolution / fully connected layer over float input whose weights are ``q - zp``, times
  the weight scale of the ONNX Runtime dynamic-quantization pattern when it is found
  (``Cast -> Mul(Mul(x_scale, w_scale))``), else in integer units (said in the notes).
  A bias added in integer units before the Cast (``Add(int32 bias)``, the bias quantized in
  the graph as ``Cast(int32, Floor/Round(Div(bias, Mul(x_scale, w_scale))))``) is the
  layer's float bias: MPS adds it in float, without the rounding to whole steps.
  The layer's weight is a :class:`~mpslayout.export.plan.QuantRef`: a target may keep its
  bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...plan import SkipLayer, is_float, quant_ref
from . import layers as ol
from .dequantize import dequantized
from .tensors import _onnx


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


_ROUNDING = ("Floor", "Round", "Ceil", "Identity")


def _int_bias(g: Any, node: Any) -> tuple[Any, str, list[Any]] | None:
    """``Add(integer output, int32 bias)`` after ``node``: (the float bias constant, the
    Add's output, the nodes of the bias chain), the bias chain being
    ``Cast(to int32) <- [Floor|Round|Ceil] <- Div(bias, scale)``; None when no Add
    follows. An int32 bias of another origin is refused (SkipLayer)."""
    add = g.sole_consumer(node.output[0])
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    chain = [add]
    t = g.producer.get(other)
    if t is not None and t.op_type == "Cast":
        chain.append(t)
        t = g.producer.get(t.input[0])
    while t is not None and t.op_type in _ROUNDING:
        chain.append(t)
        t = g.producer.get(t.input[0])
    bias = None
    if t is not None and t.op_type == "Div":
        b_t = t.input[0]
        r = g.producer.get(b_t)
        if r is not None and r.op_type == "Reshape" and g.const(b_t) is None:
            b_t = r.input[0]  # ORT reshapes the bias to (1, C, 1, 1): the same values
            if g.sole_consumer(r.output[0]) is t:
                chain.append(r)
        bias = g.const(b_t)
    if bias is None or not is_float(bias.dtype):
        raise SkipLayer(f"an integer bias {other!r} is added to its output before the "
                        "rescaling, and it is not Cast(Div(float bias, scale)): its float "
                        "value is not known")
    chain.append(t)
    return bias, add.output[0], chain


def _w_scale(g: Any, node: Any, after: str | None = None
             ) -> tuple[np.ndarray | None, list[str], str | None]:
    """The weight scale of ORT's dynamic-quantization pattern after an integer op:
    ``Cast(int32 -> float) -> Mul(., Mul(x_scale, w_scale))`` with w_scale constant (the
    inner Mul is then consumed: its constant is in the layer's ranges). ``after``: the
    tensor the Cast reads (an integer bias Add's output), else the op's output."""
    cast = g.sole_consumer(after or node.output[0])
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
    q = g.const(node.input[1])
    if q is None or q.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise SkipLayer("its weight is not a constant uint8/int8 tensor", unsupported=True)
    zp_in = 3 if node.op_type in ("ConvInteger", "MatMulInteger") else None
    z = g.const(node.input[zp_in]) if zp_in and len(node.input) > zp_in and \
        node.input[zp_in] else None
    int_bias = _int_bias(g, node) if node.op_type == "ConvInteger" else None
    scale, scale_parts, scaled = _w_scale(g, node, int_bias[1] if int_bias else None)
    if int_bias is not None and scaled is None:
        raise SkipLayer("an integer bias is added to its output, but no constant weight scale "
                        "follows: the bias cannot be given in float")
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
    if int_bias is not None:
        bias, _, chain = int_bias
        float_node.input.append(bias.name)
        for n in chain:  # the bias in integer units: the float layer's bias instead
            g.absorb(n)
        notes.append(f"the int32 bias ({' -> '.join(n.op_type for n in reversed(chain))}) "
                     f"exported as the float bias {bias.name!r}: MPS adds it without "
                     "rounding it to whole quantization steps")
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
