"""Fully connected layers after a permute and a flatten (``x.permute(0, 3, 2, 1).flatten(1)``):
no MPS kernel produces the permuted tensor, so the export folds the permutation into the
weights' columns and the layer reads the image before it (``fully_connected.reads``). Here
the graph is followed back from each such layer through the ops that only move data, and
through ops that act on each element alone (a ``relu`` between the permute and the flatten
commutes with the permutation: the app applies it to the image, before the layer), to check
that the layer reads that image, or to fail a layer that reads the permuted tensor.

An op with a constant second operand (``x * 0.5``, ``2 - x``, a per-channel scale after
an NCHW -> NHWC Transpose) is per element on the image only when its constant, moved back
through the chain's movement onto the image (:func:`image_constant`: each movement undone
on the constant broadcast to the op's operand, with the oracle's shapes), is one value per
image channel; verify finds that itself, so an export that folds through any other
constant reads the wrong tensor, and the constant the manifest records is checked against
it (:func:`recorded_constant`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .graph import Graph
from .layers import Segment

__all__ = ["BINARY", "ELEMENTWISE", "ImageOp", "constant_input", "fc_chains", "image_constant",
           "recorded_constant"]

_PASS = frozenset(("Identity", "Dropout"))
_MOVES = frozenset(("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", *_PASS))
# one data input, each output element from its input element alone, no axis attribute
ELEMENTWISE = frozenset((
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "HardSwish", "Mish", "Gelu", "Erf", "ThresholdedRelu", "Abs", "Neg", "Exp",
    "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Clip", "Cast",
))
# two inputs, one a constant: per element when the constant is per channel of the image
BINARY = frozenset(("Add", "Sub", "Mul", "Div", "Pow"))
_NON_COMMUTATIVE = frozenset(("Sub", "Div", "Pow"))
_FLOAT = 1  # TensorProto.FLOAT


def constant_input(g: Graph, i: int) -> int | None:
    """Which input of BINARY node ``i`` is a constant while the other is not: a float
    one, or a Pow's scalar exponent (MPS's power neuron); else None."""
    n = g.nodes[i]
    if n.op_type not in BINARY or len(n.input) != 2 or not all(n.input) or \
            n.input[0] == n.input[1]:
        return None
    consts = [g.const(t) for t in n.input]
    if (consts[0] is None) == (consts[1] is None):
        return None
    k = 0 if consts[0] is not None else 1
    c = consts[k]
    assert c is not None
    if n.op_type == "Pow":
        return k if k == 1 and c.size == 1 and c.dtype.kind in "fiu" else None
    return k if c.dtype.kind == "f" else None


def data_input(g: Graph, i: int) -> str:
    """The input of pointwise node ``i`` that the chain's tensor comes through."""
    k = constant_input(g, i)
    return g.nodes[i].input[0 if k is None else 1 - k]


def _pointwise(g: Graph, i: int) -> bool:
    return g.nodes[i].op_type in ELEMENTWISE or g.nodes[i].op_type in BINARY


def _elementwise(g: Graph, i: int) -> bool:
    """Whether node ``i`` acts on each element alone (Clip by constant scalars, Cast to
    float) and its output's values are read by one node only, so no other reader sees
    them."""
    n = g.nodes[i]
    readers = [j for j in g.consumers.get(n.output[0], [])  # a Shape reads only its dims
               if g.nodes[j].op_type not in ("Shape", "Size")]
    if not _pointwise(g, i) or any(n.output[1:]) or len(readers) != 1 or \
            n.output[0] in {o.name for o in g.model.graph.output}:
        return False
    if n.op_type in BINARY:
        return constant_input(g, i) is not None
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
        tensor = data_input(g, i)
    while chain and _pointwise(g, chain[-1]):
        tensor = g.nodes[chain.pop()].output[0]
    return tensor, chain


def image_constant(g: Graph, values: Mapping[str, np.ndarray], chain: list[int], pos: int
                   ) -> np.ndarray | str:
    """The constant of BINARY node ``chain[pos]`` (``chain`` nearest the layer first, its
    last node next to the image) as the image sees it: broadcast to the op's operand, then
    each movement between the image and the op undone on it, so that element (n, c, h, w)
    is the constant the op applies to image element (n, c, h, w). Returns it when it is one
    value per image channel, else a str saying why it is not."""
    i = chain[pos]
    n = g.nodes[i]
    k = constant_input(g, i)
    assert k is not None
    c = g.const(n.input[k])
    assert c is not None
    shape = _dims(g, values, n.input[1 - k])
    if shape is None or any(not isinstance(d, int) for d in shape):
        return f"the shape of {n.input[1 - k]!r} is not known"
    try:
        if np.broadcast_shapes(shape, c.shape) != tuple(shape):
            return f"broadcast with {tuple(shape)}, it makes a larger tensor"
    except ValueError:
        return f"it does not broadcast with {tuple(shape)}"
    v = np.broadcast_to(c.astype(np.float64), shape)
    for j in chain[pos + 1:]:  # back towards the image
        m = g.nodes[j]
        if m.op_type == "Transpose":
            perm = [int(p) for p in g.attrs(j).get("perm") or range(v.ndim)[::-1]]
            v = v.transpose(np.argsort(perm))
        elif m.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            before = _dims(g, values, m.input[0])
            if before is None or any(not isinstance(d, int) for d in before):
                return f"the shape of {m.input[0]!r} is not known"
            v = v.reshape(before)
    if v.ndim != 4:
        return f"it lands on a {v.ndim}-D tensor, not an image"
    if not np.all(np.isfinite(v)):
        return "it holds values that are not finite"
    if not np.array_equal(v, np.broadcast_to(v[:1, :, :1, :1], v.shape)):
        return "moved back onto the image it is not one value per image channel"
    return v


def recorded_constant(g: Graph, i: int, record: Mapping[str, Any], image: np.ndarray
                      ) -> np.ndarray:
    """The constant the manifest's ``folded`` record of BINARY node ``i`` applies to the
    image: float32, () or (1, C, 1, 1); checked against ``image`` (verify's own, from
    :func:`image_constant`) and the node's operand order. Raises ValueError saying what
    differs."""
    n, name = g.nodes[i], g.names[i]
    k = constant_input(g, i)
    if "constant" not in record or record.get("constant_input") not in (0, 1):
        raise ValueError(f"the manifest folds {n.op_type} {name!r} into the layer but does "
                         "not record its constant and which input it is "
                         "(constant, constant_input)")
    got = np.asarray(record["constant"], dtype=np.float64)
    if n.op_type in _NON_COMMUTATIVE and record["constant_input"] != k:
        sym = {"Sub": "-", "Div": "/", "Pow": "**"}[n.op_type]

        def expr(pos: Any) -> str:
            return f"c {sym} x" if pos == 0 else f"x {sym} c"

        raise ValueError(f"the manifest applies {n.op_type} {name!r} as "
                         f"{expr(record['constant_input'])}, but the model's node computes "
                         f"{expr(k)}")
    channels = image.shape[1]
    if got.ndim > 1 or (got.ndim == 1 and got.size != channels):
        raise ValueError(f"the manifest's constant of {n.op_type} {name!r} has shape "
                         f"{list(got.shape)}: not a number nor one per channel of the "
                         f"image's {channels}")
    want = image[0, :, 0, 0]
    full = np.broadcast_to(got, want.shape)
    if not np.array_equal(full, want):
        bad = int(np.flatnonzero(full != want)[0])
        raise ValueError(f"the manifest applies {n.op_type} {name!r} to the image with "
                         f"{full[bad]!r} at channel {bad}, but the model's constant "
                         f"{n.input[k or 0]!r} moved back onto the image is {want[bad]!r} "
                         "there")
    return got.astype(np.float32).reshape((1, channels, 1, 1) if got.ndim else ())


def _cut(g: Graph, values: Mapping[str, np.ndarray], t0: str, chain: list[int]
         ) -> tuple[str, list[int], dict[int, np.ndarray], str | None]:
    """The chain up to the BINARY op nearest the layer whose constant is not per channel
    of the image (the tensor behind the layer is that op's output), the image constants
    of the BINARY ops left in it, and why it was cut (None when it was not)."""
    stopped = None
    while True:
        constants: dict[int, np.ndarray] = {}
        cut = None
        for pos, i in enumerate(chain):
            if g.nodes[i].op_type not in BINARY:
                continue
            v = image_constant(g, values, chain, pos)
            if isinstance(v, str):
                cut = (pos, v)
                break  # nearest the layer first
            constants[i] = v
        if cut is None:
            return t0, chain, constants, stopped
        pos, why = cut
        n = g.nodes[chain[pos]]
        stopped = stopped or (f"the chain stops at {n.op_type} {g.names[chain[pos]]!r}: its "
                              f"constant {why}")
        t0, chain = n.output[0], chain[:pos]
        while chain and _pointwise(g, chain[-1]):
            t0 = g.nodes[chain.pop()].output[0]


class ImageOp:
    """A BINARY node as the app runs it on the image (what
    :func:`mpslayout.reference.onnx_ops.build` reads): the manifest's constant (from
    :func:`recorded_constant`) as input ``k``, the image the other input."""

    def __init__(self, op: str, name: str, k: int, value: np.ndarray,
                 image: tuple[int, ...], opset: int) -> None:
        self.op, self.name, self.opset = op, name, opset
        self.inputs = ["constant", "image"] if k == 0 else ["image", "constant"]
        self.outputs = ["result"]
        self.attrs: dict[str, Any] = {}
        self._value, self._image = value, tuple(int(d) for d in image)

    def const(self, tensor: str) -> np.ndarray | None:
        return self._value if tensor == "constant" else None

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        return tuple(self._value.shape) if tensor == "constant" else self._image


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
        t0, chain, constants, stopped = _cut(g, values, t0, chain)
        fc = seg.layer.entry.get("fully_connected") or {}
        reads = fc.get("reads")
        if reads is not None:
            if reads != t0 or not chain:
                seg.problem = (f"the manifest says it reads image {reads!r}, but the tensor "
                               f"behind its input {main.input[0]!r} is {t0!r}"
                               + (f" ({stopped})" if stopped else ""))
                continue
            seg.reads = t0
            seg.pre = [i for i in reversed(chain) if _pointwise(g, i)
                       and g.nodes[i].op_type != "Cast"]  # a Cast to float changes nothing
            records = {str(f.get("node")): f for f in fc.get("folded") or []
                       if isinstance(f, Mapping)}
            seg.pre_constants = {i: (v, records.get(g.names[i], {}))
                                 for i, v in constants.items()}
            seg.nodes.extend(chain)
            folded.update(chain)
            continue
        moves = [i for i in chain if not _pointwise(g, i)]
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
                   if _pointwise(g, i)]
        seg.problem = (f"it reads {main.input[0]!r}, which Transpose {g.names[last]!r} "
                       f"(perm {perm}) makes from image {t0!r}"
                       + (f" (through {', '.join(through)})" if through else "")
                       + ": no MPS kernel produces that tensor; the export must fold the "
                       f"permutation into the weights' columns and read {t0!r} "
                       "(fully_connected.reads)")
    return folded
