"""ONNX Runtime's ``DynamicQuantizeLSTM`` (domain com.microsoft, written by
``onnxruntime.quantization.quantize_dynamic``): an ONNX LSTM whose W ``[D, I, 4H]`` and R
``[D, H, 4H]`` are 8-bit, transposed against the ONNX LSTM's ``[D, 4H, I]`` and
``[D, 4H, H]``, with per-direction (or per-direction and per-column) ``W_scale``,
``W_zero_point``, ``R_scale``, ``R_zero_point`` at inputs 8-11. ORT runs the cell on the
float input with the weights ``(q - zero_point) * scale``; the export gives MPS those
weights as float gate weights (docs/layouts.md sections 9 and 10), exactly the values ORT
multiplies by, and the manifest's ``source.tensors`` lists the 8-bit tensors, scales and
zero points. A node it cannot read lists all of them as left behind (``--strict`` fails).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...plan import SkipLayer, TensorRef
from . import rnn

__all__ = ["read_node"]

_INPUTS = {1: "W", 2: "R", 8: "W_scale", 9: "W_zero_point", 10: "R_scale",
           11: "R_zero_point"}


def _dequantized(q: TensorRef, scale: np.ndarray, zp: np.ndarray | None, what: str
                 ) -> TensorRef:
    """``(q - zp) * scale`` of a ``[D, K, 4H]`` tensor, transposed to ``[D, 4H, K]``."""
    d, k, n = q.shape
    for name, v in (("scale", scale), ("zero point", zp)):
        if v is not None and v.size not in (d, d * n):
            raise SkipLayer(f"{what} {name} has {v.size} values; expected {d} (per "
                            f"direction) or {d * n} (per direction and column)")
    s = scale.astype(np.float32).reshape(d, 1, -1)
    z = None if zp is None else zp.astype(np.int32).reshape(d, 1, -1)

    def load() -> np.ndarray:
        a = q.load().astype(np.int32)
        if z is not None:
            a = a - z
        return np.ascontiguousarray((a.astype(np.float32) * s).transpose(0, 2, 1))

    return TensorRef(q.name, (d, n, k), np.dtype(np.float32), load)


def read_node(g: Any, node: Any) -> None:
    """The float LSTM layers of one DynamicQuantizeLSTM node."""
    refs: dict[str, TensorRef] = {}
    for i, role in _INPUTS.items():
        t = node.input[i] if len(node.input) > i else ""
        ref = g.const(t) if t else None
        if ref is not None:
            refs[role] = ref
    learned = [r.name for r in refs.values()] + [r.name for r in g.data_constants(node)]
    try:
        for role in ("W", "R", "W_scale", "R_scale"):
            if role not in refs:
                raise SkipLayer(f"its {role} is not a constant")
        w, r = refs["W"], refs["R"]
        for role, ref in (("W", w), ("R", r)):
            if ref.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)) or len(ref.shape) != 3:
                raise SkipLayer(f"its {role} {ref.name!r} is {ref.dtype}{list(ref.shape)}, not "
                                "an 8-bit [directions, K, 4*hidden] tensor")

        def zp(role: str) -> np.ndarray | None:
            return refs[role].load() if role in refs else None

        wf = _dequantized(w, refs["W_scale"].load(), zp("W_zero_point"), "W")
        rf = _dequantized(r, refs["R_scale"].load(), zp("R_zero_point"), "R")
        parts = [x.name for k, x in refs.items() if k not in ("W", "R")]
        before = len(g.plan.layers)
        rnn.read_node(g, node, (wf, rf, parts))
        for layer in g.plan.layers[before:]:
            layer.notes.append(
                "DynamicQuantizeLSTM (ONNX Runtime): the 8-bit W and R dequantized to the "
                "float weights ORT multiplies by ((q - zero_point) * scale); MPS reads the "
                "float input, so the activation quantization is not part of it")
    except SkipLayer as e:
        g.plan.refuse(g.name(node), node.op_type, str(e), learned)
