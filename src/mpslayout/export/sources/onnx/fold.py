"""Folding into a layer what MPS computes in the same kernel: a BatchNormalization (with
``fold_bn``) and the per-channel ``Add``/``Sub``/``Mul``/``Div`` of a constant that other
exporters write as separate nodes after a Conv, ConvTranspose, Gemm or MatMul (a bias
without a bias input, an unfolded BatchNorm's scale and shift, a scale layer).

The rule (exact up to float32 rounding): the chain after the layer is accumulated in
float64 as ``y = s * (W x + b) + t`` per output channel (``Mul c``: s, t = s*c, t*c;
``Div c``: s, t = s/c, t/c; ``Add c``: t += c; ``Sub c``: t -= c; a BatchNorm: s, t =
k*s, k*t + beta - mean*k with k = gamma/sqrt(var + eps)); the exported weights are
``float32(float64(W) * s)`` and the bias ``float32(float64(b) * s + t)``. A node is folded
only when its input is the layer's (or the previous folded node's) output and nothing else
reads that output, its other operand is a floating constant holding one value or one value
per output channel (every other axis 1 after broadcasting), the values are finite (and
non-zero for ``Div``), the folded weights and bias stay within float32's range (a scale
that would overflow them is left as an arithmetic layer), and the constant is the second
operand of a ``Sub``/``Div`` (``c - x`` and ``c / x`` stay arithmetic layers, with the
constant as MPS's primary). The constant may come through a ``Reshape`` of a constant by a
constant shape that nothing else reads (ONNX Runtime's ``quantize_dynamic`` writes a Conv's
bias as ``Reshape(bias, [1, C, 1, 1]) -> Add``): the Reshape is folded with it (the fused
record's ``reshape``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ...plan import ComputedRef, Layer, SkipLayer, TensorRef, batch_norm_fold, is_float

FOLDABLE = ("Add", "Sub", "Mul", "Div")
F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Folded:
    """What a fold chain absorbed: the new output tensor, the BatchNormalization node (if
    any), the per-channel (scale, shift) in float64 (None when not needed), the fused
    arithmetic nodes as manifest records, and the source tensors they carry."""

    out: str
    bn: Any | None = None
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    fused: list[dict[str, str]] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)


def per_channel(shape: tuple[int, ...], rank: int, axis: int, n: int) -> bool:
    """Whether a constant of ``shape`` broadcast against a rank-``rank`` tensor holds one
    value, or one per channel along ``axis`` (of ``n`` channels), and nothing else."""
    if len(shape) > rank:
        return False
    padded = (1,) * (rank - len(shape)) + tuple(shape)
    ax = axis % rank
    return all(d == 1 for i, d in enumerate(padded) if i != ax) and padded[ax] in (1, n)


def fold_chain(g: Any, out: str, n: int, rank: int, axis: int,
               weight_absmax: Callable[[], float] | None = None) -> Folded:
    """Follow ``out`` through foldable nodes (see the module docstring); marks them
    consumed in ``g`` (an graph.Graph). ``weight_absmax()``: the largest |weight|
    (times Gemm's alpha), to keep a folded scale from overflowing float32."""
    f = Folded(out)
    while True:
        nxt = g.sole_consumer(f.out)
        if nxt is None:
            return f
        if nxt.op_type == "BatchNormalization" and g.fold_bn and f.bn is None \
                and nxt.input[0] == f.out:
            k, sh = _bn(g, nxt, n)
            if k is None:
                return f
            _affine(f, k, sh)
            f.bn = nxt
            f.carried.extend(nxt.input[1:5])
            for t in nxt.input[1:5]:  # what a computed BN parameter is computed from
                f.carried.extend(getattr(g.const(t), "parts", ()) if t else ())
        elif nxt.op_type in FOLDABLE and len(nxt.input) == 2 and nxt.input[0] != nxt.input[1]:
            pos = 0 if nxt.input[0] == f.out else 1
            if pos == 1 and nxt.op_type in ("Sub", "Div"):
                return f
            ref, reshape = _operand(g, nxt.input[1 - pos])
            if ref is None or not is_float(ref.dtype) or not per_channel(ref.shape, rank,
                                                                         axis, n):
                return f
            v = np.broadcast_to(np.asarray(ref.load(), np.float64).reshape(-1), (n,))
            if not np.isfinite(v).all() or (nxt.op_type == "Div" and not v.all()):
                return f
            op = nxt.op_type
            before = (f.scale, f.shift)
            if op == "Add":
                _affine(f, None, v)
            elif op == "Sub":
                _affine(f, None, -v)
            else:
                k = v if op == "Mul" else 1.0 / v
                _affine(f, k, np.zeros(n))
            if not _in_range(f, weight_absmax):
                f.scale, f.shift = before
                return f
            f.fused.append({"node": g.name(nxt), "op": op, "tensor": ref.name})
            f.carried.extend(getattr(ref, "parts", ()))  # a computed constant's sources
            if reshape is not None:  # its constant is now the layer's: no entry of its own
                g.absorb(reshape)
                f.fused[-1]["reshape"] = g.name(reshape)
        else:
            return f
        g.consumed.add(id(nxt))
        f.out = nxt.output[0]


def _operand(g: Any, name: str) -> tuple[TensorRef | None, Any | None]:
    """The constant behind ``name``, also through a ``Reshape`` of a constant by a constant
    shape read by nothing else (ONNX Runtime's quantize_dynamic writes a Conv's bias as
    ``Reshape(bias, [1, C, 1, 1])``); and that Reshape node, or None."""
    node = g.producer.get(name)
    if node is None or node.op_type != "Reshape" or len(node.input) < 2 or \
            g.sole_consumer(name) is None or node.input[0] in g.graph_outputs:
        return g.const(name), None
    data, shape = g.const(node.input[0]), g.const(node.input[1])
    if data is None or shape is None or shape.dtype.kind not in "iu" or \
            isinstance(data, ComputedRef):
        return g.const(name), None  # computed from constants otherwise (const_eval)
    want = [int(d) for d in np.asarray(shape.load()).ravel()]
    if not g.attrs(node).int("allowzero", 0):  # 0 copies the input's dim
        want = [data.shape[i] if d == 0 and i < len(data.shape) else d
                for i, d in enumerate(want)]
    try:
        target = np.empty(data.shape, np.bool_).reshape(want).shape
    except ValueError:
        return g.const(name), None
    return TensorRef(data.name, tuple(target), data.dtype,
                     lambda: data.load().reshape(target)), node


def _in_range(f: Folded, weight_absmax: Callable[[], float] | None) -> bool:
    """Whether the folded shift (a bound on the bias' growth) and weights fit float32."""
    if f.shift is not None and not (np.abs(f.shift).max(initial=0) < F32_MAX / 2):
        return False
    if f.scale is None or weight_absmax is None:
        return True
    return bool(np.abs(f.scale).max(initial=0) * weight_absmax() < F32_MAX / 2)


def _affine(f: Folded, k: np.ndarray | None, t: np.ndarray) -> None:
    """Compose y -> k*y + t after the accumulated (scale, shift)."""
    n = t.shape[0]
    if k is not None:
        f.scale = (np.ones(n) if f.scale is None else f.scale) * k
        f.shift = (np.zeros(n) if f.shift is None else f.shift) * k
    f.shift = (np.zeros(n) if f.shift is None else f.shift) + t


def _bn(g: Any, bn: Any, n: int) -> tuple[np.ndarray | None, np.ndarray]:
    try:
        vecs = [g.vector(bn, i, n, "parameter") for i in (1, 2, 3, 4)]
    except SkipLayer:
        return None, np.zeros(0)
    if any(v is None for v in vecs):
        return None, np.zeros(0)
    return batch_norm_fold(*(v.load() for v in vecs),
                           eps=g.attrs(bn).float("epsilon", 1e-5),
                           where=f"node {g.name(bn)!r}")


def record(g: Any, layer: Layer, f: Folded) -> None:
    """Write what ``f`` absorbed into ``layer``'s manifest source and notes."""
    if f.bn is not None:
        layer.source["folded_batch_norm"] = g.name(f.bn)
        layer.notes.append(f"BatchNormalization {g.name(f.bn)!r} folded into the weights "
                           "and bias")
    if f.fused:
        layer.source["fused"] = list(f.fused)
        layer.notes.append("folded into the weights and bias: " + ", ".join(
            f"{x['op']} {x['node']!r} ({x['tensor']})" for x in f.fused))
    layer.carried.extend(t for t in f.carried if t)
