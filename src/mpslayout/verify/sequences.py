"""Which 3-D tensors of a graph are channel-first sequences ``(N, C, L)`` (what a Conv1d,
BatchNorm1d or 1-D pool reads and writes) rather than ``(N, T, C)`` rows (what a MatMul
on a sequence reads). verify holds an ``(N, C, L)`` tensor as an MPS image 1 pixel high
and L wide of C channels (docs/layouts.md section 1, "Conv1d"), and an ``(N, T, C)`` one
as an image 1 pixel high and T wide of C channels: the same image, read from other axes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .graph import Graph

__all__ = ["ncw_tensors"]

# ops whose 3-D data operand is channel-first by the ONNX definition
_CHANNEL_FIRST = frozenset(("Conv", "ConvTranspose", "BatchNormalization", "MaxPool",
                            "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
                            "InstanceNormalization", "LRN", "ConvInteger"))
# ops that keep the layout of their data operand(s) element by element
_SAME = frozenset((
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid",
    "HardSwish", "Softplus", "Softsign", "Clip", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Erf", "Gelu", "Mish", "ThresholdedRelu", "Identity", "Dropout", "Cast",
    "Floor", "Ceil", "Round", "Sign", "PRelu", "Add", "Sub", "Mul", "Div", "Sum", "Max",
    "Min", "Mean", "Pow", "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear",
))


def ncw_tensors(g: Graph, values: Mapping[str, np.ndarray]) -> set[str]:
    """The 3-D tensors of ``g`` that are ``(N, C, L)``: the data operands and results of
    the channel-first ops, and whatever reaches them or follows them through element-wise
    ops of the same shape."""

    def rank(t: str) -> int | None:
        a = values.get(t)
        s = a.shape if a is not None else g.shapes.get(t)
        return None if s is None else len(s)

    out: set[str] = set()
    for n in g.nodes:
        if n.op_type in _CHANNEL_FIRST and n.input and rank(n.input[0]) == 3:
            out.add(n.input[0])
            out.update(o for o in n.output[:1] if o and rank(o) == 3)
    changed = True
    while changed:  # spread along element-wise ops, both ways
        changed = False
        for n in g.nodes:
            if n.op_type not in _SAME or not n.output or not n.output[0]:
                continue
            data = [t for t in n.input if t and rank(t) == 3 and t not in g.inits]
            group = [*data, n.output[0]] if rank(n.output[0]) == 3 else []
            if group and any(t in out for t in group) and not set(group) <= out:
                out.update(group)
                changed = True
    return out
