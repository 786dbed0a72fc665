"""How far weights requantized to 8 bits (``export --dtype uint8``, or ONNX 8-bit weights
whose scales run along another axis) may lie from the model's float weights, per output
channel, for the tolerance (docs/verify.md).

The bound never compares an exported weight with the source weight at the same position:
a layout bug (OIHW bytes read as OHWI, a rotated kernel) would then widen its own
tolerance. It uses properties that hold whatever order the weights are in:

- linear ranges: the export's own ``(min, max)`` of exported output channel ``o``.
  Quantizing to the nearest of MPS's 256 levels ``q/255*(max - min) + min`` is off by at
  most half a step, ``(max - min)/510``; MPS's float32 evaluation of that formula and the
  float32 range add at most ``8*u32*max(|min|, |max|)`` (four roundings of values no larger
  than ``2*max(|min|, |max|)``).
- lookup table: for each table value ``v``, ``delta_v``: the largest distance to ``v`` of
  the model's float weights whose nearest table value is ``v`` (the set of weights, after
  the per-output-channel scale of a folded Mul/Div/batch norm and a Gemm alpha; a weight
  within rounding of a tie counts for both neighbours), plus ``4*u32`` of the largest
  magnitude (float32 rounding of folded weights). A weight MPS reads as ``lut[q]`` is then
  within ``delta_lut[q]`` of the model's; a layout bug only permutes these bounds, so its
  tolerance is never above the one with ``max(delta)`` for every weight. 0 joins the set
  when the exported weights hold more values than the source (a depthwise multiplier
  expanded with zeros).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .files import ExportedLayer
from .graph import Graph
from .layers import Segment
from .tolerance import U32

__all__ = ["requantized", "weight_error"]

_F8 = np.float64


def requantized(layer: ExportedLayer) -> bool:
    """Whether the layer's 8-bit weights were requantized from floats (not an exact map
    of 8-bit source weights, whose error is float32 rounding only)."""
    q = layer.entry.get("quantization")
    return isinstance(q, dict) and q.get("exact") is False and bool(layer.quant)


def weight_error(g: Graph, seg: Segment, values: Mapping[str, np.ndarray]
                 ) -> tuple[np.ndarray | None, str]:
    """A bound on ``|MPS's weight - the model's weight|`` for each exported weight (float64,
    broadcastable to the weights' shape: one value per output channel for linear ranges,
    one per weight for a lookup table) and how it was made; ``(None, why)`` when no bound
    can be made without a position-by-position comparison."""
    layer = seg.layer
    w = layer.arrays.get("weights")
    if w is None or w.ndim < 1:
        return None, "the layer has no weights"
    n_out = w.shape[0]
    if "ranges" in layer.quant:
        r = np.asarray(layer.quant["ranges"], _F8).reshape(-1, 2)
        if r.shape[0] != n_out:
            return None, f"{r.shape[0]} ranges for {n_out} output channels"
        lo, hi = r[:, 0], r[:, 1]
        e = np.abs(hi - lo) / 510 + 8 * U32 * np.maximum(np.abs(lo), np.abs(hi))
        return e.reshape((-1,) + (1,) * (w.ndim - 1)), (
            "linear ranges: (max - min)/510 + 8 u32 max(|min|, |max|) per output channel, "
            f"largest {e.max(initial=0):.3g}")
    try:
        src = _source_weights(g, seg, values)
    except (ValueError, IndexError) as e:  # a weight or scale of an unexpected shape
        src = f"the model's weights do not match the layer ({e})"
    if isinstance(src, str):
        return None, src
    if src.size < w.size:
        src = np.append(src, 0.0)
    lut = np.asarray(layer.quant["lut"], _F8).ravel()
    delta = _lut_deltas(lut, src)
    return delta[layer.quant["q"]], ("lookup table: per entry, the largest distance of the "
                                     "model's weights nearest to it, largest "
                                     f"{delta.max(initial=0):.3g}")


def _lut_deltas(lut: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Per table entry, the largest distance to it of the weights ``src`` nearest to it."""
    vals, inv = np.unique(lut, return_inverse=True)
    slack = 4 * U32 * max(float(np.abs(src).max(initial=0)), float(np.abs(vals).max()))
    i = np.searchsorted(vals, src)
    lo, hi = np.clip(i - 1, 0, vals.size - 1), np.clip(i, 0, vals.size - 1)
    d_lo, d_hi = np.abs(src - vals[lo]), np.abs(src - vals[hi])
    near = np.minimum(d_lo, d_hi) + slack
    cell = np.zeros(vals.size)
    for idx, d in ((lo, d_lo), (hi, d_hi)):
        m = d <= near
        np.maximum.at(cell, idx[m], d[m])
    return cell[inv.ravel()] + slack


def _source_weights(g: Graph, seg: Segment, values: Mapping[str, np.ndarray]
                    ) -> np.ndarray | str:
    """The model's float weights of the layer, each output channel times the scale folded
    into it (order irrelevant: only their set is used), or why they are unknown."""
    main = seg.nodes[0]
    node = g.nodes[main]
    if len(node.input) < 2:
        return "the model's node has no weight input"
    w = g.const(node.input[1])
    if w is None:
        w = values.get(node.input[1])
    if w is None or np.asarray(w).dtype.kind != "f":
        return f"the model's weight {node.input[1]!r} is not a float constant"
    w = np.asarray(w, _F8)
    a = g.attrs(main)
    op = node.op_type
    if op == "Conv":
        n_out = w.shape[0]
    elif op == "ConvTranspose":
        grp = int(a.get("group", 1))
        n_out = w.shape[1] * grp
    elif op == "Gemm":
        n_out = w.shape[0] if a.get("transB", 0) else w.shape[-1]
    else:
        n_out = w.shape[-1]
    s = _folded_scale(g, seg, n_out)
    if isinstance(s, str):
        return s
    if op == "Gemm":
        s = s * float(a.get("alpha", 1.0))
    if np.all(s == 1.0):
        return w.ravel()
    if op == "Conv":
        v = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":  # [I][O/g][kH][kW]: output g*(O/g) + j
        grp = n_out // w.shape[1]
        v = w.reshape(grp, -1, w.shape[1], *w.shape[2:]) * s.reshape(
            grp, 1, w.shape[1], *(1,) * (w.ndim - 2))
    elif op == "Gemm" and a.get("transB", 0):
        v = w * s[:, None]
    else:
        v = w * s
    return v.ravel()


def _folded_scale(g: Graph, seg: Segment, n_out: int) -> np.ndarray | str:
    """The per-output-channel factor the export folded into the weights: the fused
    Mul/Div constants and a folded batch norm's gamma/sqrt(var + eps), in order."""
    src: dict[str, Any] = seg.layer.entry.get("source", {})
    fused = {str(f.get("node")) for f in src.get("fused", []) or [] if isinstance(f, dict)}
    bn = src.get("folded_batch_norm")
    s = np.ones(n_out)
    for j in seg.nodes[1:]:
        n, name = g.nodes[j], g.names[j]
        if name in fused and n.op_type in ("Mul", "Div"):
            c = next((g.const(t) for t in n.input[:2] if g.const(t) is not None), None)
            if c is None or c.size not in (1, n_out):
                return f"the constant of folded {n.op_type} {name!r} is not per channel"
            c = np.asarray(c, _F8).ravel()
            s = s * c if n.op_type == "Mul" else s / c
        elif name == bn and n.op_type == "BatchNormalization":
            gamma, var = (g.const(t) for t in (n.input[1], n.input[4]))
            if gamma is None or var is None:
                return f"the batch norm {name!r} folded into the layer has no constant scale"
            eps = float(g.attrs(j).get("epsilon", 1e-5))
            s = s * np.asarray(gamma, _F8).ravel() / np.sqrt(np.asarray(var, _F8).ravel() + eps)
    return s
