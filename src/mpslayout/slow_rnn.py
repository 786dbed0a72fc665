"""Slow twins of :mod:`mpslayout.rnn`: plain loops from docs/layouts.md, "Recurrent layers".

Each gate property is filled element by element from the framework's packed tensor by the
documented index formula (bits moved as unsigned integers, the dtype applied at the end,
as in :mod:`mpslayout.slow`); each bias element is the float64 sum of the framework's
biases rounded to float32. Gate orders are spelled out here again, on purpose, from the
table in docs/layouts.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .slow import _bits, _finish, _mps_target

__all__ = ["gru_weights", "lstm_weights", "rnn_weights"]

_LSTM = {"ONNX": ["inputGate", "outputGate", "forgetGate", "cellGate"],
         "PyTorch": ["inputGate", "forgetGate", "cellGate", "outputGate"],
         "Keras": ["inputGate", "forgetGate", "cellGate", "outputGate"]}
_GRU = {"ONNX": ["inputGate", "recurrentGate", "outputGate"],
        "PyTorch": ["recurrentGate", "inputGate", "outputGate"],
        "Keras": ["inputGate", "recurrentGate", "outputGate"]}
_PEEPHOLES = ["inputGate", "outputGate", "forgetGate"]


def _gate_block(a: np.ndarray, k: int, h: int, layout: str, dtype: Any) -> np.ndarray:
    """dst[o][y][x][i] = a[k*H + o][i] (ONNX, PyTorch) or a[y][x][i][k*H + o] (Keras)."""
    target = _mps_target(a.dtype, dtype)
    bits = _bits(a)
    if layout == "Keras":
        k4 = bits if bits.ndim == 4 else bits.reshape(1, 1, *bits.shape)
        kh, kw, n_in = k4.shape[0], k4.shape[1], k4.shape[2]
        dst = np.zeros((h, kh, kw, n_in), bits.dtype)
        for o in range(h):
            for y in range(kh):
                for x in range(kw):
                    for i in range(n_in):
                        dst[o, y, x, i] = k4[y, x, i, k * h + o]
    else:
        n_in = bits.shape[1]
        dst = np.zeros((h, 1, 1, n_in), bits.dtype)
        for o in range(h):
            for i in range(n_in):
                dst[o, 0, 0, i] = bits[k * h + o, i]
    return _finish(dst, a.dtype, target)


def _bias(parts: list[np.ndarray], k: int, h: int) -> np.ndarray:
    out = np.zeros(h, np.float32)
    for o in range(h):
        total = 0.0  # a Python float: float64 arithmetic, one rounding at the end
        for p in parts:
            total += float(p[k * h + o])
        out[o] = np.float32(total)
    return out


def _one_direction(W: Any, R: Any, B: Any, layout: str, direction: int, gates: int
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None, int]:
    w, r = np.asarray(W), np.asarray(R)
    b = None if B is None else np.asarray(B)
    if layout == "ONNX":
        if w.ndim == 3:
            w, r = w[direction], r[direction]
            b = None if b is None else b[direction]
        h = r.shape[1]
        parts = None if b is None else [b[:gates * h], b[gates * h:]]
    elif layout == "PyTorch":
        h = r.shape[1]
        parts = None if b is None else [b[0], b[1]]
    elif layout == "Keras":
        h = r.shape[-2]
        parts = None if b is None else ([b] if b.ndim == 1 else [b[0], b[1]])
    else:
        raise ValueError(f"layout must be 'ONNX', 'PyTorch' or 'Keras', got {layout!r}")
    return w, r, parts, h


def _cell(W: Any, R: Any, B: Any, order: list[str], layout: str, direction: int,
          dtype: Any) -> tuple[dict[str, np.ndarray], int, list[np.ndarray] | None]:
    w, r, parts, h = _one_direction(W, R, B, layout, direction, len(order))
    found: dict[str, np.ndarray] = {}
    for k, gate in enumerate(order):
        found[gate + "InputWeights"] = _gate_block(w, k, h, layout, dtype)
        found[gate + "RecurrentWeights"] = _gate_block(r, k, h, layout, dtype)
        if parts is not None:
            found[gate + "InputWeights.bias"] = _bias(parts, k, h)
    return found, h, parts


def _ordered(found: dict[str, np.ndarray], gates: list[str]) -> dict[str, np.ndarray]:
    """MPS gate order; per gate input weights, their bias, recurrent, memory weights."""
    keys = [g + p for g in gates for p in
            ("InputWeights", "InputWeights.bias", "RecurrentWeights", "RecurrentBias",
             "MemoryWeights")]
    return {k: found[k] for k in keys if k in found}


def lstm_weights(W: Any, R: Any, B: Any = None, P: Any = None, *, layout: str = "ONNX",
                 direction: int = 0, dtype: Any = None) -> dict[str, np.ndarray]:
    found, h, _ = _cell(W, R, B, _LSTM[layout], layout, direction, dtype)
    if P is not None:
        p = np.asarray(P)
        if p.ndim == 2:
            p = p[direction]
        for j, gate in enumerate(_PEEPHOLES):
            target = _mps_target(p.dtype, dtype)
            bits = _bits(p)
            dst = np.zeros(h, bits.dtype)
            for o in range(h):
                dst[o] = bits[j * h + o]
            found[gate + "MemoryWeights"] = _finish(dst, p.dtype, target)
    return _ordered(found, ["inputGate", "forgetGate", "cellGate", "outputGate"])


def gru_weights(W: Any, R: Any, B: Any = None, *, layout: str = "ONNX", direction: int = 0,
                dtype: Any = None, linear_before_reset: bool = False
                ) -> dict[str, np.ndarray]:
    found, h, parts = _cell(W, R, B, _GRU[layout], layout, direction, dtype)
    if linear_before_reset and parts is not None and len(parts) == 2:
        k = _GRU[layout].index("outputGate")  # the h (PyTorch: n) block of the recurrent bias
        found["outputGateRecurrentBias"] = _bias(parts[1:], k, h)
    return _ordered(found, ["inputGate", "recurrentGate", "outputGate"])


def rnn_weights(W: Any, R: Any, B: Any = None, *, layout: str = "ONNX", direction: int = 0,
                dtype: Any = None) -> dict[str, np.ndarray]:
    found, _, _ = _cell(W, R, B, ["x"], layout, direction, dtype)
    names = {"xInputWeights": "inputWeights", "xRecurrentWeights": "recurrentWeights",
             "xInputWeights.bias": "inputWeights.bias"}
    return {names[k]: v for k, v in _ordered(found, ["x"]).items()}
