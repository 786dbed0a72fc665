"""A weight that is ``DequantizeLinear(q, scale, zero_point)`` of constants (a QDQ model):
the graph reads it as a :class:`~mpslayout.export.plan.QuantRef`, its float values with the
8-bit bytes kept, so that every rule of the reader applies to it and a target may keep
the bytes (docs/layouts.md section 10)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...plan import QuantRef, quant_ref


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
