"""The float model an export of ``ConvInteger`` / ``MatMulInteger`` layers stands for.

ONNX Runtime's dynamic quantization writes ``DynamicQuantizeLinear(x) -> ConvInteger(x_q,
w_q, x_zp, w_zp) -> Cast -> Mul(., Mul(x_scale, w_scale))``. MPS runs the exported layer
on float activations with the weights ``(w_q - w_zp) * w_scale``, so the judge is the model
with that chain replaced by ``Conv(x, DequantizeLinear(w_q, w_scale, w_zp))`` (the weights
dequantized, the activations not quantized), named like the integer node so that the
export's layer maps to it. A bias added in integer units before the Cast (``Add(int32
Cast(Floor|Round(Div(bias, scale))))``) becomes the float Conv's bias, as the export takes
it. ORT's ``DynamicQuantizeLSTM`` (com.microsoft) becomes an ONNX ``LSTM`` of the same name
whose W and R are the dequantized weights ``(q - zero_point) * scale``, transposed from
ORT's ``[D, K, 4H]`` to ONNX's ``[D, 4H, K]``. Chains of another shape are left as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .graph import onnx_module

__all__ = ["float_equivalent"]

_FLOAT_OP = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}
_ROUNDING = ("Floor", "Round", "Ceil", "Identity")


def _int_bias(model: Any, produced: dict[str, Any], node: Any
              ) -> tuple[Any, str, list[Any]] | None:
    """(the Add, the float bias tensor, the bias chain's nodes) of an integer bias added to
    ``node``'s output: ``Add(out, Cast(int32, [Floor|Round](Div(bias, scale))))``."""
    users = _users(model, node.output[0])
    if len(users) != 1 or users[0].op_type != "Add" or node.op_type != "ConvInteger":
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    chain, t = [], produced.get(other)
    while t is not None and t.op_type in ("Cast", *_ROUNDING):
        chain.append(t)
        t = produced.get(t.input[0])
    if t is None or t.op_type != "Div" or not chain or chain[0].op_type != "Cast":
        return None
    return add, t.input[0], [*chain, t]


def _users(model: Any, tensor: str) -> list[Any]:
    return [n for n in model.graph.node if tensor in n.input]


def _float_lstm(model: Any, inits: dict[str, Any]) -> tuple[Any, list[str]]:
    """``model`` with each DynamicQuantizeLSTM whose weights are constants replaced by an
    ONNX LSTM on the dequantized weights (a copy; ``model`` itself when there is none)."""
    onnx = onnx_module()
    from onnx import helper, numpy_helper

    found = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM"
             and n.domain == "com.microsoft" and len(n.input) > 10
             and all(n.input[i] in inits for i in (1, 2, 8, 10))]
    if not found:
        return model, []
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    arr = {t: numpy_helper.to_array(inits[t]) for n in found for t in n.input if t in inits}
    for n in model.graph.node:
        if n not in found:
            m.graph.node.append(n)
            continue
        ws = []
        for q, s, z in ((1, 8, 9), (2, 10, 11)):
            a = arr[n.input[q]].astype(np.int32)
            d = a.shape[0]
            if len(n.input) > z and n.input[z] in arr:
                a = a - arr[n.input[z]].astype(np.int32).reshape(d, 1, -1)
            f = a.astype(np.float32) * arr[n.input[s]].astype(np.float32).reshape(d, 1, -1)
            name = f"{n.input[q]}:dequantized"
            m.graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(f.transpose(0, 2, 1)), name))
            ws.append(name)
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        m.graph.node.append(helper.make_node(
            "LSTM", [n.input[0], *ws, *n.input[3:8]], list(n.output), name=n.name, **attrs))
    return m, [n.name for n in found]


def float_equivalent(model: Any) -> tuple[Any, list[str]]:
    """(a rewritten copy of ``model`` or ``model`` itself, the integer nodes replaced)."""
    onnx = onnx_module()
    from onnx import helper

    inits = {t.name: t for t in model.graph.initializer}
    model, lstms = _float_lstm(model, inits)
    inits = {t.name: t for t in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    plans = []
    for node in model.graph.node:
        if node.op_type not in _FLOAT_OP or node.input[1] not in inits:
            continue
        dql = produced.get(node.input[0])
        biased = _int_bias(model, produced, node)
        casts = _users(model, biased[0].output[0] if biased else node.output[0])
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
        plans.append((node, dql, casts[0], mul, w_scale, biased))
    if not plans:
        return model, lstms
    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_node = {id(p[0]): p for p in plans}
    drop = {id(x) for p in plans for x in p[2:4]}
    for p in plans:  # an integer bias: its Add and chain (the Div's scale Mul stays)
        if p[5] is not None:
            drop.update(id(x) for x in [p[5][0], *p[5][2]])
    nodes = []
    for n in model.graph.node:
        if id(n) in drop:
            continue
        if id(n) not in by_node:
            nodes.append(n)
            continue
        node, dql, _, mul, w_scale, biased = by_node[id(n)]  # at the integer node's place
        w_zp = [node.input[3]] if len(node.input) > 3 and node.input[3] else []
        deq = f"{node.input[1]}:dequantized"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(helper.make_node("DequantizeLinear", [node.input[1], w_scale, *w_zp],
                                      [deq], name=f"{node.name}:weights"))
        bias = []
        if biased is not None:  # Conv's bias is 1-D: the float bias, flattened
            flat = f"{node.name}:bias_shape"
            m.graph.initializer.append(onnx.numpy_helper.from_array(
                np.array([-1], np.int64), flat))
            nodes.append(helper.make_node("Reshape", [biased[1], flat],
                                          [f"{node.name}:bias"], name=f"{node.name}:bias"))
            bias = [f"{node.name}:bias"]
        nodes.append(helper.make_node(_FLOAT_OP[node.op_type], [dql.input[0], deq, *bias],
                                      [mul.output[0]], name=node.name, **attrs))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m, [*lstms, *(p[0].name for p in plans)]
