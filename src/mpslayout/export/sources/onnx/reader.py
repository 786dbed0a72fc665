"""Reads an ONNX model into an export plan, using the graph for what the weights alone do
not say: the (C, H, W) a fully connected layer reads after a Flatten, the shape of a
Reshape after it, the padding of every convolution, a DepthToSpace after a convolution
(a sub-pixel convolution), which BatchNormalization and per-channel Add/Sub/Mul/Div
follow which layer (folded), and the role of every other learned tensor.

The pieces: :mod:`.tensors` (initializers, lazily), :mod:`.graph` (structure,
shape inference with ``input_dims``, lookups), :mod:`.layers` (weight layers),
:mod:`.fold` (what folds into them), :mod:`.constants` (arithmetic and tensor
entries). This module holds the op dispatch. Needs the ``onnx`` package
(``pip install mpslayout[onnx]``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ...plan import ComputedRef, Overrides, Plan, is_float
from . import constants as oc
from . import integer, quant_rnn, rnn
from . import layers as ol
from .graph import STRUCTURAL, WEIGHTLESS, Graph
from .subgraphs import has_bodies, refuse_with_bodies
from .tensors import _onnx, tensor_ref

__all__ = ["BUILDERS", "read", "tensor_ref"]

# op -> builder(graph, node); a builder appends layers or raises SkipLayer. LSTM/GRU/RNN
# go to rnn.read_node: one MPS recurrent layer per direction.
BUILDERS: dict[str, Callable[[Graph, Any], None]] = {
    "Conv": ol.conv,
    "ConvTranspose": ol.conv_transpose,
    "Gemm": ol.dense,
    "MatMul": ol.matmul,
    "BatchNormalization": ol.batch_norm,
    **{op: oc.arithmetic for op in oc.ARITHMETIC},
    "LayerNormalization": oc.norm,
    "InstanceNormalization": oc.norm,
    "PRelu": oc.prelu,
    "Gather": oc.gather,
    **{op: rnn.read_node for op in rnn.OPS},
    "DequantizeLinear": integer.dequantize_node,
    "DynamicQuantizeLinear": integer.dynamic_quantize_node,
    "ConvInteger": integer.integer_node,
    "MatMulInteger": integer.integer_node,
}


def run(g: Graph) -> None:
    """Every node not folded into an earlier layer, through its builder; then a sweep that
    lists any learned tensor no rule claimed (nothing is dropped silently)."""
    for node in g.nodes:
        if id(node) in g.consumed or g.in_constant_subgraph(node):
            continue  # folded into a layer, or a weight's preprocessing (read as its result)
        op, name = node.op_type, g.name(node)
        if node.domain == "com.microsoft" and op == "DynamicQuantizeLSTM":
            quant_rnn.read_node(g, node)
        elif node.domain not in ("", "ai.onnx"):
            g.plan.refuse(name, op, f"custom operator of domain {node.domain!r}")
            oc.leftover(g, node, f"read by the custom operator {name!r}")
        elif has_bodies(node):  # If/Loop/Scan: what its bodies read is listed under it
            refuse_with_bodies(g, node)
            oc.leftover(g, node, f"read by {op}, which has no MPS layer")
        elif op in BUILDERS:
            g.guard(node, BUILDERS[op])
        elif op == "DepthToSpace":
            g.list_node(node, "DepthToSpace not directly after a convolution mpslayout can "
                        "export as a sub-pixel convolution")
        elif op in WEIGHTLESS or op in STRUCTURAL:
            oc.leftover(g, node, f"a constant operand of {op}")
        else:
            g.plan.refuse(name, op, "no MPS layer mapping known to mpslayout")
            oc.leftover(g, node, f"read by {op}, which has no MPS layer")
    carried = {t for layer in g.plan.layers for t in layer.source_tensors()}
    listed = {t for e in g.plan.skipped + g.plan.unsupported for t in e.get("tensors", [])}
    for node in g.nodes:
        if g.constant_node(node):
            continue  # the learned tensors it reads are listed with the result's reader
        missing = [t for t in g.learned(node) if t not in carried and t not in listed
                   and not _sources_carried(g, t, carried)]
        if missing:
            g.plan.skip(g.name(node), node.op_type, "a learned tensor no export rule claimed",
                        missing)
            listed.update(missing)


def _sources_carried(g: Graph, name: str, carried: set[str]) -> bool:
    """Whether ``name`` is a tensor computed from initializers (a Reshape of a bias...)
    whose floating sources a layer carries: it is that layer's, seen through a view."""
    ref = g.refs.get(name)
    parts = [p for p in getattr(ref, "parts", ()) if p in g.refs and is_float(g.refs[p].dtype)]
    return isinstance(ref, ComputedRef) and bool(parts) and all(p in carried for p in parts)


def read(path: str, *, fold_bn: bool, overrides: Overrides) -> Plan:
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"cannot parse {path} as ONNX (truncated or not a model?): "
                         f"{type(e).__name__}: {e}") from None
    plan = Plan("onnx")
    g = Graph(model, os.path.dirname(os.path.abspath(path)), fold_bn, overrides, plan)
    g.check_structure()
    g.infer_shapes()
    run(g)
    return plan
