"""A permute before a flatten -> fully connected layer (``x.permute(0, 3, 2, 1).flatten(1)``,
``x.view(N, C, H*W).transpose(1, 2).flatten(1)``): no MPS kernel produces the permuted
tensor, so the movement is folded into the layer's weights instead. The chain of
Transpose/Reshape/Flatten/Squeeze/Unsqueeze nodes between the last image (N, C, H, W) and the
2-D (N, n) the layer reads is run on the flat indices of the image (with the evaluator's
own operator definitions, :mod:`.const_eval`); the result says which image element each
weight column reads, and the columns are put back in C, H, W order. The layer then reads
the image itself (docs/layouts.md: a fully connected layer after a flatten), and its
manifest records the image (``fully_connected.reads``) and the nodes folded
(``fully_connected.folded``).

Exporters often put an activation inside the chain (``x.permute(0, 2, 3, 1)``, then
``relu``, then ``flatten``). An op that acts on each element alone, with no axis (Relu,
Sigmoid, Tanh, LeakyRelu, Clip by constant scalars, Cast to float, ...), commutes with any
movement of the elements, so the chain is looked through it when its output is read by
the next node of the chain only: the layer then reads the image with that op applied to
it first (it is recorded in ``folded`` with ``"elementwise": true``; the MPS app applies
it to the image, an MLX port to its channels-last image, before the layer).

So is a per-element op with a constant second operand (:data:`BINARY`: ``x * 0.5``,
``x - 1``, ``2 / x``, ``x ** 2``, a per-channel scale or shift a TF converter left after its
NCHW -> NHWC Transpose) when the constant, broadcast over the tensor it meets, is one value
per channel of the image (or one value): the constant is moved back through the chain's
movement onto the image (:func:`_image_constant`) and recorded with the op
(``"constant"``: a number, or a list of one number per image channel; ``"constant_input"``:
the op's input it is, 0 for ``2 - x``). A constant that lands on the image otherwise (one
value per row, a full map) cannot be applied to the image by a per-channel kernel: the fold
stops at that op (the layer reads its output, as without the fold), and the layer's notes
say why, naming the node. Pow folds by a scalar exponent only (MPS's power neuron).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ...plan import QuantRef, SkipLayer, TensorRef, quant_ref
from .const_eval import OPS, ConstEval

__all__ = ["BINARY", "ELEMENTWISE", "Permuted", "absorb_constants", "fold_columns",
           "permuted_flatten"]

_PASS = frozenset(("Identity", "Dropout"))  # Dropout in inference (training_mode false)
_MOVES = frozenset(("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", *_PASS))
# one data input, each output element from its input element alone, no axis attribute
ELEMENTWISE = frozenset((
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "HardSwish", "Mish", "Gelu", "Erf", "ThresholdedRelu", "Abs", "Neg", "Exp",
    "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Clip", "Cast",
))
# two inputs, one a constant: per element when the constant maps onto the image's channels
BINARY = frozenset(("Add", "Sub", "Mul", "Div", "Pow"))
_FLOAT = 1  # TensorProto.FLOAT
_MAX_CHAIN = 16


@dataclass
class Permuted:
    """The image a flatten chain reads (``image``, its (H, W, C) ``hwc``), the chain's
    nodes in graph order, and ``columns[j]``: the C, H, W flat index input j reads."""

    image: str
    hwc: tuple[int, int, int]
    nodes: list[Any]
    columns: np.ndarray
    # a BINARY node's (its constant's input, the constant on the image: a number or one per
    # image channel), by id(node)
    constants: dict[int, tuple[int, float | list[float]]] = field(default_factory=dict)

    @property
    def elementwise(self) -> list[Any]:
        """The chain's per-element ops (applied to the image before the layer)."""
        return [n for n in self.nodes if _pointwise_op(n)]

    def record(self, g: Any) -> list[dict[str, Any]]:
        out = []
        for n in self.nodes:
            r: dict[str, Any] = {"node": g.name(n), "op": n.op_type}
            if _pointwise_op(n):
                r["elementwise"] = True
                if id(n) in self.constants:
                    k, v = self.constants[id(n)]
                    r["constant"], r["constant_input"] = v, k
                out.append(r)
                continue
            perm = g.attrs(n).ints("perm") if n.op_type == "Transpose" else None
            if perm is not None:
                r["perm"] = [int(p) for p in perm]
            if n.op_type != "Transpose":
                s = g.shape(n.output[0])
                if s is not None:
                    r["shape"] = s
            out.append(r)
        return out


def _pointwise_op(node: Any) -> bool:
    return node.op_type in ELEMENTWISE or node.op_type in BINARY


def _constant_input(g: Any, node: Any) -> int | None:
    """Which input of BINARY ``node`` is its constant (the other one not constant): a
    float one, or a Pow's scalar exponent (MPS's power neuron); None otherwise."""
    ins = list(node.input)
    if len(ins) != 2 or not all(ins) or ins[0] == ins[1]:
        return None
    vals = [g.value(t) for t in ins]
    if (vals[0] is None) == (vals[1] is None):
        return None  # two computed operands, or two constants
    k = 0 if vals[0] is not None else 1
    c = np.asarray(vals[k])
    if node.op_type == "Pow":
        return k if k == 1 and c.size == 1 and c.dtype.kind in "fiu" else None
    return k if c.dtype.kind == "f" else None


def _data_input(g: Any, node: Any) -> str:
    """The input a pointwise node of the chain reads the chain's tensor from."""
    if node.op_type in BINARY:
        return node.input[1 - (_constant_input(g, node) or 0)]
    return node.input[0]


def _elementwise(g: Any, node: Any) -> bool:
    """Whether ``node`` acts on each element alone, so that it commutes with a permutation
    of the elements: Clip only by constant scalar bounds, Cast only to float, a BINARY op
    with one constant operand (whether that constant maps onto the image is decided when
    the chain is run, :func:`_image_constant`)."""
    if any(o for o in node.output[1:]):
        return False
    if node.op_type in BINARY:
        return _constant_input(g, node) is not None
    if node.op_type not in ELEMENTWISE:
        return False
    if node.op_type == "Cast":
        return g.attrs(node).int("to", 0) == _FLOAT
    if node.op_type == "Clip":
        for t in node.input[1:]:
            v = g.value(t) if t else None
            if t and (v is None or np.size(v) != 1):
                return False  # a computed or per-element bound
        return True
    return len([t for t in node.input if t]) == 1


def _inference(g: Any, node: Any) -> bool:
    """Whether a Dropout passes its input on: ``training_mode`` absent or constant false,
    and its mask read by nobody."""
    mode = node.input[2] if len(node.input) > 2 else ""
    v = g.value(mode) if mode else np.array(False)
    return v is not None and not bool(np.asarray(v).any()) and \
        not any(o and (g.consumers.get(o) or o in g.graph_outputs) for o in node.output[1:])


def _read_once(g: Any, t: str) -> bool:
    """Whether one node reads tensor ``t``'s values: a Shape or Size of it reads only its
    dims (``reshape(x.shape[0], -1)``), and a graph output is read by the caller."""
    users = [n for n in g.consumers.get(t, []) if n.op_type not in ("Shape", "Size")]
    return len(users) == 1 and t not in g.graph_outputs


def _chain(g: Any, a: str) -> tuple[str, list[Any]] | None:
    """From tensor ``a`` back through movement ops and per-element ops, each output read
    only by the next (a per-element op's also when it is ``a``): (the first tensor not made
    by one, the nodes nearest-first). Per-element ops nearest the image stay out of it."""
    chain: list[Any] = []
    t = a
    while len(chain) <= _MAX_CHAIN:
        node = g.producer.get(t)
        if node is None or node.domain not in ("", "ai.onnx"):
            break
        pointwise = _elementwise(g, node)
        if node.op_type not in _MOVES and not pointwise:
            break
        if node.op_type == "Dropout" and not _inference(g, node):
            break
        if pointwise and not _read_once(g, t):
            break  # read elsewhere too: the chain starts after it
        if chain and not _read_once(g, t):
            return None  # a tensor of the chain is read elsewhere too
        chain.append(node)
        t = _data_input(g, node)
    else:
        return None
    while chain and _pointwise_op(chain[-1]):
        # per-element ops on the image itself, before any movement, stay the image's own
        t = chain.pop().output[0]
    return t, chain


def _operand(g: Any, ev: ConstEval, t: str) -> np.ndarray | None:
    """A node's constant operand: from the graph, else computed with the chain's shapes."""
    v = g.value(t)
    if v is None:
        c = ev.get(t)
        v = None if c is None else c.value
    return v


def _image_constant(x: np.ndarray, c: np.ndarray, image: tuple[int, ...]
                    ) -> float | list[float] | str:
    """Constant ``c`` of a BINARY op on the chain's tensor ``x`` (each element the flat
    index of the ``image`` element it holds), moved back onto the image: a number for a
    size-1 constant, else one number per image channel; a str saying why when it is
    neither (it would change the tensor's shape, is not finite, or varies within an image
    channel)."""
    try:
        if np.broadcast_shapes(x.shape, c.shape) != x.shape:
            return f"broadcast with {tuple(x.shape)}, it makes a larger tensor"
    except ValueError:
        return f"it does not broadcast with {tuple(x.shape)}"
    v = c.astype(np.float64)
    if not np.all(np.isfinite(v)):
        return "it holds values that are not finite"
    if v.size == 1:
        return float(v.ravel()[0])
    on_image = np.empty(math.prod(image), np.float64)
    on_image[x.ravel()] = np.broadcast_to(v, x.shape).ravel()
    on_image = on_image.reshape(image)
    per_channel = on_image[:1, :, :1, :1]
    if not np.array_equal(on_image, np.broadcast_to(per_channel, image)):
        return ("moved back onto the image it is not one value per image channel (it "
                "varies along " + ("the batch, " if image[0] > 1 and not np.array_equal(
                    on_image, np.broadcast_to(on_image[:1], image)) else "")
                + "H or W)")
    return [float(e) for e in per_channel.ravel()]


class _Stop(Exception):
    """The chain cannot pass ``node``: ``why``."""

    def __init__(self, node: Any, why: str) -> None:
        super().__init__(why)
        self.node, self.why = node, why


def permuted_flatten(g: Any, a: str, notes: list[str] | None = None) -> Permuted | None:
    """The image behind FC input ``a`` when a chain with a Transpose (other than the NHWC
    flatten, ``Transpose(0, 2, 3, 1) -> Flatten``, which MPS reads as HWC) makes ``a``
    from it; None otherwise (then the plain flatten rules apply). A BINARY op whose
    constant does not map onto the image ends the chain (the layer reads that op's
    output), said in ``notes``."""
    found = _chain(g, a)
    if found is None:
        return None
    t0, chain = found
    while True:
        try:
            return _fold(g, t0, chain)
        except _Stop as e:
            n = e.node
            k = _constant_input(g, n)
            const = n.input[k if k is not None else 1]
            if notes is not None:
                notes.append(
                    f"not folded through {n.op_type} {g.name(n)!r}: its constant {const!r} "
                    f"(shape {list(np.shape(g.value(const)))}) cannot be applied to image "
                    f"{t0!r} before the layer: {e.why}; the permutation before it is not "
                    f"folded, the layer reads {n.output[0]!r}")
            chain = chain[:chain.index(n)]
            t0 = n.output[0]
            while chain and _pointwise_op(chain[-1]):
                t0 = chain.pop().output[0]


def _fold(g: Any, t0: str, chain: list[Any]) -> Permuted | None:
    """:func:`permuted_flatten` of the chain from image ``t0``; raises :class:`_Stop` at
    the last BINARY op whose constant does not map onto the image, when the chain would
    fold but for it."""
    if not any(n.op_type == "Transpose" for n in chain):
        return None
    if len(chain) == 2 and chain[1].op_type == "Transpose" and \
            g.attrs(chain[1]).ints("perm") == [0, 2, 3, 1] and \
            chain[0].op_type in ("Flatten", "Reshape"):
        return None  # the NHWC flatten: read as HWC (layers.flatten_source)
    s = g.shape(t0)
    if s is None or len(s) != 4 or None in s[1:]:
        return None
    n_batch = s[0] or 2  # a symbolic batch: two samples, so that mixing them shows
    c, h, w = (int(d) for d in s[1:])  # type: ignore[arg-type]
    size = c * h * w
    if n_batch * size > 1 << 26:
        return None
    x = np.arange(n_batch * size, dtype=np.int64).reshape(n_batch, c, h, w)
    image = x.shape
    # the chain's tensors' shapes at that batch, for a shape operand computed from them
    # (``reshape(x.shape[0], -1)``: Shape -> Gather -> Concat of a symbolic batch)
    known: dict[str, tuple[int, ...]] = {t0: x.shape}
    ev = ConstEval(g.producer, g.ev.leaf,
                   lambda t: list(known[t]) if t in known else g.shape(t), g.ev.opset)
    constants: dict[int, tuple[int, float | list[float]]] = {}
    stop = None
    for node in reversed(chain):
        if node.op_type in BINARY:
            k = _constant_input(g, node)
            assert k is not None  # the chain holds it
            on_image = _image_constant(x, np.asarray(g.value(node.input[k])), image)
            if isinstance(on_image, str):
                stop = _Stop(node, on_image)  # the one nearest the layer ends the chain
            else:
                constants[id(node)] = (k, on_image)
        if _pointwise_op(node) or node.op_type in _PASS:  # they move nothing
            known[node.output[0]] = x.shape
            continue
        vals = [x] + [_operand(g, ev, t) if t else None for t in node.input[1:]]
        if any(v is None for v, t in zip(vals[1:], node.input[1:]) if t):
            return None  # a shape operand not known
        try:
            x = OPS[node.op_type](g.ev, node, vals)[0]
        except Exception:  # the evaluator refuses (a shape that does not fit): no fold
            return None
        known[node.output[0]] = x.shape
    if x.ndim != 2 or x.shape != (n_batch, size):
        return None
    cols = x[0]
    if not np.array_equal(np.sort(cols), np.arange(size)) or \
            not np.array_equal(x - x[:, :1], np.broadcast_to(cols - cols[0], x.shape)):
        return None  # the chain mixes samples or repeats values: not a permutation
    if stop is not None:
        raise stop
    return Permuted(t0, (h, w, c), list(reversed(chain)), cols, constants)


def absorb_constants(g: Any, p: Permuted) -> list[str]:
    """A BINARY node the chain folds through belongs to the fully connected layer (the app
    applies it to the image): the layer an arithmetic builder made of it (reading the
    permuted tensor) is dropped; returns the source tensors it carried, for the layer."""
    carried: list[str] = []
    for n in p.nodes:
        if id(n) in p.constants:
            carried.extend(t for x in g.plan.layers if x.source.get("node") == g.name(n)
                           for t in x.source_tensors())
            g.absorb(n)
    return carried


def fold_columns(w: TensorRef, p: Permuted, layout: str, where: str) -> TensorRef:
    """``w`` (OI: (O, n); IO: (n, O)) with its input axis put in C, H, W order: column
    ``p.columns[j]`` of the result is column j of ``w``."""
    inv = np.argsort(p.columns)
    axis = 1 if layout == "OI" else 0
    n = w.shape[axis]
    if n != len(inv) or math.prod(p.hwc) != n:
        raise SkipLayer(f"the image flattened into it is (H, W, C)={p.hwc}, "
                        f"{math.prod(p.hwc)} values, but the weight has {n} inputs")

    def permute(ref: TensorRef) -> TensorRef:
        return replace(ref, opener=lambda: np.take(ref.load(), inv, axis=axis))

    if isinstance(w, QuantRef):
        if w.axis == axis and w.scale.size > 1:
            raise SkipLayer(f"{where}: its 8-bit weight is quantized per input, which a "
                            "folded permutation would reorder")
        assert w.q is not None
        return quant_ref(w.name, permute(w.q), w.scale, w.zero_point, w.axis, w.parts,
                         w.origin)
    return permute(w)
