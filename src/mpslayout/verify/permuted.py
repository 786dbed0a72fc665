"""Fully connected layers after a permute and a flatten (``x.permute(0, 3, 2, 1).flatten(1)``):
no MPS kernel produces the permuted tensor, so the export folds the permutation into the
weights' columns and the layer reads the image before it (``fully_connected.reads``). Here
the graph is followed back from each such layer through the ops that only move data, and
through ops that act on each element alone (a ``relu`` between the permute and the flatten
commutes with the permutation: the app applies it to the image, before the layer), to check
that the layer reads that image, or to fail a layer that reads the permuted tensor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .graph import Graph
from .layers import Segment

__all__ = ["ELEMENTWISE", "fc_chains"]

_PASS = frozenset(("Identity", "Dropout"))
_MOVES = frozenset(("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", *_PASS))
# one data input, each output element from its input element alone, no axis attribute
ELEMENTWISE = frozenset((
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "HardSwish", "Mish", "Gelu", "Erf", "ThresholdedRelu", "Abs", "Neg", "Exp",
    "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Clip", "Cast",
))
_FLOAT = 1  # TensorProto.FLOAT


def _elementwise(g: Graph, i: int) -> bool:
    """Whether node ``i`` acts on each element alone (Clip by constant scalars, Cast to
    float) and its output's values are read by one node only, so no other reader sees
    them."""
    n = g.nodes[i]
    readers = [j for j in g.consumers.get(n.output[0], [])  # a Shape reads only its dims
               if g.nodes[j].op_type not in ("Shape", "Size")]
    if n.op_type not in ELEMENTWISE or any(n.output[1:]) or len(readers) != 1 or \
            n.output[0] in {o.name for o in g.model.graph.output}:
        return False
    if n.op_type == "Cast":
        return int(g.attrs(i).get("to", 0)) == _FLOAT
    if n.op_type == "Clip":
        bounds = [g.const(t) for t in n.input[1:] if t]
        return all(b is not None and b.size == 1 for b in bounds)
    return len([t for t in n.input if t]) == 1


def _movement_chain(g: Graph, tensor: str) -> tuple[str, list[int]]:
    """From ``tensor`` back through ops that only move data, and per-element ops between
    them: the first tensor not made by one, and the nodes passed (nearest first). The
    per-element ops nearest that tensor are the image's own, not the chain's."""
    chain: list[int] = []
    for _ in range(17):
        i = g.producer.get(tensor)
        if i is None or (g.nodes[i].op_type not in _MOVES and not _elementwise(g, i)):
            break
        chain.append(i)
        tensor = g.nodes[i].input[0]
    while chain and g.nodes[chain[-1]].op_type in ELEMENTWISE:
        tensor = g.nodes[chain.pop()].output[0]
    return tensor, chain


def _dims(g: Graph, values: Mapping[str, np.ndarray], t: str) -> tuple[Any, ...] | None:
    v = values.get(t)
    return tuple(v.shape) if v is not None else g.shapes.get(t)


def fc_chains(g: Graph, segments: Mapping[int, Segment],
              values: Mapping[str, np.ndarray]) -> set[int]:
    """Fully connected layers after a permute and a flatten: the layer must read the image
    before the permute (the export folds it into the weights' columns and records the image
    as ``fully_connected.reads``), since no MPS kernel produces the permuted tensor. Sets
    each such segment's ``reads`` and ``pre`` (the per-element ops of the chain, which run
    on the image before the layer) and takes the folded nodes into it, or sets its
    ``problem`` when the export reads the permuted tensor; returns the folded nodes."""
    folded: set[int] = set()
    for seg in segments.values():
        if seg.layer.kind != "fully_connected":
            continue
        main = g.nodes[seg.nodes[0]]
        t0, chain = _movement_chain(g, main.input[0])
        fc = seg.layer.entry.get("fully_connected") or {}
        reads = fc.get("reads")
        if reads is not None:
            if reads != t0 or not chain:
                seg.problem = (f"the manifest says it reads image {reads!r}, but the tensor "
                               f"behind its input {main.input[0]!r} is {t0!r}")
                continue
            seg.reads = t0
            seg.pre = [i for i in reversed(chain) if g.nodes[i].op_type in ELEMENTWISE
                       and g.nodes[i].op_type != "Cast"]  # a Cast to float changes nothing
            seg.nodes.extend(chain)
            folded.update(chain)
            continue
        moves = [i for i in chain if g.nodes[i].op_type not in ELEMENTWISE]
        transposes = [i for i in moves if g.nodes[i].op_type == "Transpose"]
        nhwc = len(chain) == 2 and transposes == [chain[1]] and \
            [int(p) for p in g.attrs(chain[1]).get("perm", [])] == [0, 2, 3, 1]
        img, flat = _dims(g, values, t0), _dims(g, values, main.input[0])
        if not transposes or nhwc or img is None or flat is None or len(img) != 4 or \
                len(flat) != 2 or flat[0] != img[0]:
            continue
        last = transposes[-1]
        perm = [int(p) for p in g.attrs(last).get("perm", [])]
        through = [f"{g.nodes[i].op_type} {g.names[i]!r}" for i in chain
                   if g.nodes[i].op_type in ELEMENTWISE]
        seg.problem = (f"it reads {main.input[0]!r}, which Transpose {g.names[last]!r} "
                       f"(perm {perm}) makes from image {t0!r}"
                       + (f" (through {', '.join(through)})" if through else "")
                       + ": no MPS kernel produces that tensor; the export must fold the "
                       f"permutation into the weights' columns and read {t0!r} "
                       "(fully_connected.reads)")
    return folded
