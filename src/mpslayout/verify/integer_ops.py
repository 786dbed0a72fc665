"""The float model an export of ``ConvInteger`` / ``MatMulInteger`` layers stands for.

ONNX Runtime's dynamic quantization writes ``DynamicQuantizeLinear(x) -> ConvInteger(x_q,
w_q, x_zp, w_zp) -> Cast -> Mul(., Mul(x_scale, w_scale))``. MPS runs the exported layer
on float activations with the weights ``(w_q - w_zp) * w_scale``, so the judge is the model
with that chain replaced by ``Conv(x, DequantizeLinear(w_q, w_scale, w_zp))`` (the weights
dequantized, the activations not quantized), named like the integer node so that the
export's layer maps to it. Chains of another shape are left as they are.
"""

from __future__ import annotations

from typing import Any

from .graph import onnx_module

__all__ = ["float_equivalent"]

_FLOAT_OP = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}


def _users(model: Any, tensor: str) -> list[Any]:
    return [n for n in model.graph.node if tensor in n.input]


def float_equivalent(model: Any) -> tuple[Any, list[str]]:
    """(a rewritten copy of ``model`` or ``model`` itself, the integer nodes replaced)."""
    onnx = onnx_module()
    from onnx import helper

    inits = {t.name: t for t in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    plans = []
    for node in model.graph.node:
        if node.op_type not in _FLOAT_OP or node.input[1] not in inits:
            continue
        dql = produced.get(node.input[0])
        casts = _users(model, node.output[0])
        if dql is None or dql.op_type != "DynamicQuantizeLinear" or len(casts) != 1 or \
                casts[0].op_type != "Cast":
            continue
        muls = _users(model, casts[0].output[0])
        if len(muls) != 1 or muls[0].op_type != "Mul":
            continue
        mul = muls[0]
        other = mul.input[1] if mul.input[0] == casts[0].output[0] else mul.input[0]
        inner = produced.get(other)
        w_scale = next((t for t in (inner.input if inner is not None and
                                    inner.op_type == "Mul" else []) if t in inits), None)
        if w_scale is None:
            continue
        plans.append((node, dql, casts[0], mul, w_scale))
    if not plans:
        return model, []
    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_node = {id(p[0]): p for p in plans}
    drop = {id(x) for p in plans for x in p[2:4]}
    nodes = []
    for n in model.graph.node:
        if id(n) in drop:
            continue
        if id(n) not in by_node:
            nodes.append(n)
            continue
        node, dql, _, mul, w_scale = by_node[id(n)]  # at the integer node's place
        w_zp = [node.input[3]] if len(node.input) > 3 and node.input[3] else []
        deq = f"{node.input[1]}:dequantized"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(helper.make_node("DequantizeLinear", [node.input[1], w_scale, *w_zp],
                                      [deq], name=f"{node.name}:weights"))
        nodes.append(helper.make_node(_FLOAT_OP[node.op_type], [dql.input[0], deq],
                                      [mul.output[0]], name=node.name, **attrs))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m, [p[0].name for p in plans]
