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
- lookup table: ``delta``, the largest distance from any of the model's float weights (the
  set of them, after the per-output-channel scale of a folded Mul/Div/batch norm and a
  Gemm alpha) to its nearest table entry, plus ``4*u32`` of the largest magnitude (the
  float32 rounding of the folded weights); 0 joins the set when the exported weights hold
  more values than the source (a depthwise multiplier expanded with zeros).
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
    """Per exported output channel, a bound on ``|MPS's weight - the model's weight|``
    (float64, one value per channel) and how it was made; ``(None, why)`` when no bound
    can be made without position-by-position comparison."""
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
        return e, ("linear ranges: (max - min)/510 + 8 u32 max(|min|, |max|) per output "
                   f"channel, largest {e.max(initial=0):.3g}")
    lut = np.sort(np.asarray(layer.quant["lut"], _F8).ravel())
    src = _source_weights(g, seg, values)
    if isinstance(src, str):
        return None, src
    if src.size < w.size:
        src = np.append(src, 0.0)
    i = np.clip(np.searchsorted(lut, src), 1, lut.size - 1)
    dist = np.minimum(np.abs(src - lut[i - 1]), np.abs(src - lut[i]))
    big = max(float(np.abs(src).max(initial=0)), float(np.abs(lut).max(initial=0)))
    delta = float(dist.max(initial=0)) + 4 * U32 * big
    return np.full(n_out, delta), (f"lookup table: largest distance of the model's weights "
                                   f"to the table, {delta:.3g}")


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
