"""MPSRNNMatrixInferenceLayer in numpy: LSTM, GRU and single-gate cells in the formulas of
``MPSRNNLayer.h`` (docs/layouts.md, "Recurrent layers"), fed with the exported gate data
sources (property name -> OHWI ``[H][1][1][I]`` weights, ``<property>.bias`` float32,
diagonal memory weights ``[H]``).

Rows are sequences (``y = x W^T``, as the header states for the matrix layer); ``x`` is
``(T, B, I)``. Everything is computed in float64; a gate whose data source is absent is
nil, i.e. zero weights (the header's "If nil then assumed zero weights"). Neurons are
``MPSCNNNeuronType`` names with parameters (a, b), as the manifest lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["MPS_NEURONS", "gru", "gru_reset_after", "lstm", "mps_neuron", "single_gate"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


# MPSCNNNeuronType formulas (MPSCNNNeuron.h), parameters a, b
MPS_NEURONS: dict[str, Any] = {
    "None": lambda x, a, b: x,
    "ReLU": lambda x, a, b: np.where(x >= 0, x, a * x),
    "Linear": lambda x, a, b: a * x + b,
    "Sigmoid": lambda x, a, b: _sigmoid(x),
    "HardSigmoid": lambda x, a, b: np.clip(a * x + b, 0.0, 1.0),
    "TanH": lambda x, a, b: a * np.tanh(b * x),
    "SoftSign": lambda x, a, b: x / (1.0 + np.abs(x)),
    "SoftPlus": lambda x, a, b: a * np.log1p(np.exp(b * x)),
    "ELU": lambda x, a, b: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1.0)),
}
SIGMOID = ("Sigmoid", 1.0, 1.0)
TANH = ("TanH", 1.0, 1.0)


def mps_neuron(x: np.ndarray, spec: Any) -> np.ndarray:
    """Apply a neuron given as (type name, a, b) (or a dict with keys type, a, b)."""
    if isinstance(spec, Mapping):
        spec = (spec["type"], spec.get("a", 1.0), spec.get("b", 1.0))
    kind, a, b = spec
    if kind not in MPS_NEURONS:
        raise ValueError(f"neuron type must be one of {sorted(MPS_NEURONS)}, got {kind!r}")
    return MPS_NEURONS[kind](x, float(a), float(b))


def _mat(gates: Mapping[str, Any], key: str, h: int, n: int) -> np.ndarray:
    w = gates.get(key)
    if w is None:
        return np.zeros((h, n))
    w = np.asarray(w, np.float64)
    if w.shape[1:3] != (1, 1):
        raise ValueError(f"{key}: matrix RNN weights are [H][1][1][I], got {w.shape}")
    return w.reshape(h, n)


def _vec(gates: Mapping[str, Any], key: str, h: int) -> np.ndarray:
    v = gates.get(key)
    return np.zeros(h) if v is None else np.asarray(v, np.float64).reshape(h)


def _affine(gates: Mapping[str, Any], prop: str, x: np.ndarray, h0: np.ndarray,
            h: int) -> np.ndarray:
    """W*x + U*h0 + b of one gate (input data source carries the bias)."""
    n_in = x.shape[-1]
    w_in, w_rec = (f"{prop}InputWeights", f"{prop}RecurrentWeights") if prop else (
        "inputWeights", "recurrentWeights")
    return (x @ _mat(gates, w_in, h, n_in).T + h0 @ _mat(gates, w_rec, h, h).T
            + _vec(gates, f"{w_in}.bias", h))


def _time(x: np.ndarray, reverse: bool) -> range:
    t = x.shape[0]
    return range(t - 1, -1, -1) if reverse else range(t)


def _sizes(x: Any, h: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(x, np.float64)
    if xs.ndim != 3:
        raise ValueError(f"x must be (T, B, I), got shape {xs.shape}")
    return xs, np.zeros((xs.shape[0], xs.shape[1], h))


def lstm(x: Any, gates: Mapping[str, Any], hidden: int, *, reverse: bool = False,
         neurons: Mapping[str, Any] | None = None, cell_to_output: Any = TANH,
         h0: Any = None, c0: Any = None, diagonal: bool = True
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y (T, B, H), last h, last c) of the MPSLSTMDescriptor formula:
    ``I = gi(Wi x + Ui h0 + Vi c0 + bi)``, ``F``, ``C`` alike, ``c1 = F c0 + I C``,
    ``O = go(Wo x + Uo h0 + Vo c1 + bo)``, ``h1 = O gh(c1)``."""
    h = hidden
    xs, y = _sizes(x, h)
    nb = xs.shape[1]
    ns = {"inputGate": SIGMOID, "forgetGate": SIGMOID, "cellGate": TANH,
          "outputGate": SIGMOID, **(neurons or {})}
    hp = np.zeros((nb, h)) if h0 is None else np.asarray(h0, np.float64)
    cp = np.zeros((nb, h)) if c0 is None else np.asarray(c0, np.float64)

    def memory(prop: str, c: np.ndarray) -> np.ndarray:
        key = f"{prop}MemoryWeights"
        if gates.get(key) is None:
            return np.zeros_like(c)
        if diagonal:
            return c * _vec(gates, key, h)
        return c @ _mat(gates, key, h, h).T

    for t in _time(xs, reverse):
        pre = {g: _affine(gates, g, xs[t], hp, h) for g in ns}
        i = mps_neuron(pre["inputGate"] + memory("inputGate", cp), ns["inputGate"])
        f = mps_neuron(pre["forgetGate"] + memory("forgetGate", cp), ns["forgetGate"])
        c = mps_neuron(pre["cellGate"] + memory("cellGate", cp), ns["cellGate"])
        c1 = f * cp + i * c
        o = mps_neuron(pre["outputGate"] + memory("outputGate", c1), ns["outputGate"])
        hp, cp = o * mps_neuron(c1, cell_to_output), c1
        y[t] = hp
    return y, hp, cp


def gru(x: Any, gates: Mapping[str, Any], hidden: int, *, reverse: bool = False,
        neurons: Mapping[str, Any] | None = None, p: float = 1.0, flip: bool = False,
        h0: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(Y, last h) of the MPSGRUDescriptor formula: ``z = gz(Wz x + Uz h0 + bz)``,
    ``r = gr(...)``, ``h = gh(Wh x + Uh (r h0) + Vh (z h0) + bh)``,
    ``h1 = (1 - z^p)^(1/p) h + z h0`` (``flip``: ``(1 - z^p)^(1/p) h0 + z h``)."""
    h = hidden
    xs, y = _sizes(x, h)
    ns = {"inputGate": SIGMOID, "recurrentGate": SIGMOID, "outputGate": TANH,
          **(neurons or {})}
    hp = np.zeros((xs.shape[1], h)) if h0 is None else np.asarray(h0, np.float64)
    n_in = xs.shape[-1]
    for t in _time(xs, reverse):
        z = mps_neuron(_affine(gates, "inputGate", xs[t], hp, h), ns["inputGate"])
        r = mps_neuron(_affine(gates, "recurrentGate", xs[t], hp, h), ns["recurrentGate"])
        c = ((r * hp) @ _mat(gates, "outputGateRecurrentWeights", h, h).T
             + (z * hp) @ _mat(gates, "outputGateInputGateWeights", h, h).T)
        cand = mps_neuron(xs[t] @ _mat(gates, "outputGateInputWeights", h, n_in).T + c
                          + _vec(gates, "outputGateInputWeights.bias", h), ns["outputGate"])
        keep = (1.0 - z**p) ** (1.0 / p)
        hp = keep * hp + z * cand if flip else keep * cand + z * hp
        y[t] = hp
    return y, hp


def gru_reset_after(x: Any, gates: Mapping[str, Any], hidden: int, *, reverse: bool = False,
                    neurons: Mapping[str, Any] | None = None, h0: Any = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(Y, last h) of the GRU MPS does *not* compute (ONNX ``linear_before_reset=1``,
    PyTorch ``nn.GRU``, Keras ``reset_after=True``), from the same exported files:
    ``h = gh(Wh x + bWh + r (Uh h0 + bRh))``, ``h1 = (1 - z) h + z h0``, where
    ``bRh`` is ``outputGateRecurrentBias`` and ``bWh = outputGateInputWeights.bias - bRh``
    (the export sums the two). verify uses it to check such an export's files."""
    h = hidden
    xs, y = _sizes(x, h)
    ns = {"inputGate": SIGMOID, "recurrentGate": SIGMOID, "outputGate": TANH,
          **(neurons or {})}
    hp = np.zeros((xs.shape[1], h)) if h0 is None else np.asarray(h0, np.float64)
    n_in = xs.shape[-1]
    b_rec = _vec(gates, "outputGateRecurrentBias", h)
    b_in = _vec(gates, "outputGateInputWeights.bias", h) - b_rec
    for t in _time(xs, reverse):
        z = mps_neuron(_affine(gates, "inputGate", xs[t], hp, h), ns["inputGate"])
        r = mps_neuron(_affine(gates, "recurrentGate", xs[t], hp, h), ns["recurrentGate"])
        inner = hp @ _mat(gates, "outputGateRecurrentWeights", h, h).T + b_rec
        cand = mps_neuron(xs[t] @ _mat(gates, "outputGateInputWeights", h, n_in).T + b_in
                          + r * inner, ns["outputGate"])
        hp = (1.0 - z) * cand + z * hp
        y[t] = hp
    return y, hp


def single_gate(x: Any, gates: Mapping[str, Any], hidden: int, *, reverse: bool = False,
                neuron: Any = TANH, h0: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(Y, last h) of MPSRNNSingleGateDescriptor: ``h1 = g(W x + U h0 + b)``."""
    h = hidden
    xs, y = _sizes(x, h)
    hp = np.zeros((xs.shape[1], h)) if h0 is None else np.asarray(h0, np.float64)
    for t in _time(xs, reverse):
        hp = mps_neuron(_affine(gates, "", xs[t], hp, h), neuron)
        y[t] = hp
    return y, hp
