"""Chains of ONNX nodes that one MPS kernel computes: torch exports GELU (erf form) as
``Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)`` (or ``Mul(x, 1/sqrt 2)`` first,
or the 0.5 applied to x or to the sum first). MPS has no Erf neuron; the app runs the
chain as one MPSCNNNeuronGeLU, so the verifier does too."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .graph import Graph

__all__ = ["Fused", "gelu_chains"]


@dataclass(frozen=True)
class Fused:
    """Nodes ``nodes`` (graph order) compute ``kind`` of tensor ``x`` into tensor ``out``;
    ``last`` is the node that writes ``out``."""

    kind: str
    x: str
    out: str
    nodes: tuple[int, ...]
    last: int


def _scalar(g: Graph, t: str) -> float | None:
    v = g.const(t) if t else None
    if v is None or np.size(v) != 1 or np.asarray(v).dtype.kind != "f":
        return None
    return float(np.asarray(v).ravel()[0])


def _other(g: Graph, i: int, t: str) -> str | None:
    """The input of two-input node ``i`` that is not ``t`` (None if ``t`` is not one)."""
    ins = list(g.nodes[i].input)
    if len(ins) != 2 or t not in ins:
        return None
    return ins[1] if ins[0] == t else ins[0]


def _only_consumer(g: Graph, t: str, op: str) -> int | None:
    j = g.sole_consumer(t)
    return j if j is not None and g.nodes[j].op_type == op else None


def _near(v: float | None, want: float) -> bool:
    return v is not None and math.isclose(v, want, rel_tol=1e-4)


def _gelu_at(g: Graph, e: int) -> Fused | None:
    """The GELU chain around Erf node ``e``, or None."""
    t = g.nodes[e].input[0]
    p = g.producer.get(t)
    if p is None or g.sole_consumer(t) is None:
        return None
    pn = g.nodes[p]
    if pn.op_type == "Div" and _near(_scalar(g, pn.input[1]), math.sqrt(2.0)):
        x = pn.input[0]
    elif pn.op_type == "Mul" and _near(_scalar(g, pn.input[1]), math.sqrt(0.5)):
        x = pn.input[0]
    elif pn.op_type == "Mul" and _near(_scalar(g, pn.input[0]), math.sqrt(0.5)):
        x = pn.input[1]
    else:
        return None
    e_out = g.nodes[e].output[0]
    a = _only_consumer(g, e_out, "Add")
    if a is None or not _near(_scalar(g, _other(g, a, e_out) or ""), 1.0):
        return None
    s = g.nodes[a].output[0]
    m = _only_consumer(g, s, "Mul")
    if m is None:
        return None
    f = _other(g, m, s) or ""
    nodes = [p, e, a, m]
    if f == x or _near(_scalar(g, f), 0.5):  # (1 + erf) * x or * 0.5, then * the other
        m2 = _only_consumer(g, g.nodes[m].output[0], "Mul")
        rest = None if m2 is None else _other(g, m2, g.nodes[m].output[0])
        if m2 is None or not (rest == x if f != x else _near(_scalar(g, rest or ""), 0.5)):
            return None
        nodes.append(m2)
        last = m2
    else:  # (x * 0.5) * (1 + erf)
        h = g.producer.get(f)
        if h is None or g.nodes[h].op_type != "Mul" or g.sole_consumer(f) is None \
                or not _near(_scalar(g, _other(g, h, x) or ""), 0.5):
            return None
        nodes.append(h)
        last = m
    return Fused("gelu", x, g.nodes[last].output[0], tuple(sorted(nodes)), last)


def gelu_chains(g: Graph) -> dict[int, Fused]:
    """Every node of a GELU chain in ``g`` -> its chain."""
    out: dict[int, Fused] = {}
    for e, n in enumerate(g.nodes):
        if n.op_type == "Erf" and n.input:
            c = _gelu_at(g, e)
            if c is not None:
                out.update(dict.fromkeys(c.nodes, c))
    return out
