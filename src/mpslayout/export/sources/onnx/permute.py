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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...plan import QuantRef, SkipLayer, TensorRef, quant_ref
from .const_eval import OPS

__all__ = ["Permuted", "fold_columns", "permuted_flatten"]

_MOVES = frozenset(("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                    "Dropout"))
_MAX_CHAIN = 16


@dataclass
class Permuted:
    """The image a flatten chain reads (``image``, its (H, W, C) ``hwc``), the chain's
    nodes in graph order, and ``columns[j]``: the C, H, W flat index input j reads."""

    image: str
    hwc: tuple[int, int, int]
    nodes: list[Any]
    columns: np.ndarray

    def record(self, g: Any) -> list[dict[str, Any]]:
        out = []
        for n in self.nodes:
            r: dict[str, Any] = {"node": g.name(n), "op": n.op_type}
            perm = g.attrs(n).ints("perm") if n.op_type == "Transpose" else None
            if perm is not None:
                r["perm"] = [int(p) for p in perm]
            if n.op_type != "Transpose":
                s = g.shape(n.output[0])
                if s is not None:
                    r["shape"] = s
            out.append(r)
        return out


def _chain(g: Any, a: str) -> tuple[str, list[Any]] | None:
    """From tensor ``a`` back through movement ops, each output read only by the next:
    (the first tensor not made by one, the nodes nearest-first)."""
    chain: list[Any] = []
    t = a
    while len(chain) <= _MAX_CHAIN:
        node = g.producer.get(t)
        if node is None or node.op_type not in _MOVES or node.domain not in ("", "ai.onnx"):
            return t, chain
        if chain and g.sole_consumer(t) is None:
            return None  # a tensor of the chain is read elsewhere too
        chain.append(node)
        t = node.input[0]
    return None


def permuted_flatten(g: Any, a: str) -> Permuted | None:
    """The image behind FC input ``a`` when a chain with a Transpose (other than the NHWC
    flatten, ``Transpose(0, 2, 3, 1) -> Flatten``, which MPS reads as HWC) makes ``a``
    from it; None otherwise (then the plain flatten rules apply)."""
    found = _chain(g, a)
    if found is None:
        return None
    t0, chain = found
    if not any(n.op_type == "Transpose" for n in chain):
        return None
    if len(chain) == 2 and chain[1].op_type == "Transpose" and \
            g.attrs(chain[1]).ints("perm") == [0, 2, 3, 1] and \
            chain[0].op_type in ("Flatten", "Reshape"):
        return None  # the NHWC flatten: read as HWC (layers.flatten_source)
    s = g.shape(t0)
    if s is None or len(s) != 4 or None in s[1:]:
        return None
    n_batch = s[0] or 1
    c, h, w = (int(d) for d in s[1:])  # type: ignore[arg-type]
    size = c * h * w
    if n_batch * size > 1 << 26:
        return None
    x = np.arange(n_batch * size, dtype=np.int64).reshape(n_batch, c, h, w)
    for node in reversed(chain):
        vals = [x] + [g.value(t) if t else None for t in node.input[1:]]
        if any(v is None for v, t in zip(vals[1:], node.input[1:]) if t):
            return None  # a shape operand not known
        try:
            x = OPS[node.op_type](g.ev, node, vals)[0]
        except Exception:  # the evaluator refuses (a shape that does not fit): no fold
            return None
    if x.ndim != 2 or x.shape != (n_batch, size):
        return None
    cols = x[0]
    if not np.array_equal(np.sort(cols), np.arange(size)) or \
            not np.array_equal(x - x[:, :1], np.broadcast_to(cols - cols[0], x.shape)):
        return None  # the chain mixes samples or repeats values: not a permutation
    return Permuted(t0, (h, w, c), list(reversed(chain)), cols)


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
