"""MPSRNNMatrixInferenceLayer and MPSRNNImageInferenceLayer in numpy: LSTM, GRU and
single-gate cells in the formulas of ``MPSRNNLayer.h`` (docs/layouts.md, "Recurrent
layers"), fed with the exported gate data sources (property name -> OHWI weights,
``<property>.bias`` float32, diagonal memory weights ``[H]``).

Matrix layer (the default): rows are sequences (``y = x W^T``, as the header states), ``x``
is ``(T, B, I)`` and weights are ``[H][1][1][I]``. Image layer (``image=True``): ``x`` is
``(T, B, height, width, I)`` (NHWC per step) and every product of the formulas is an
MPSCNNConvolution of the ``[H][kH][kW][I]`` weights with stride 1 and offset 0, i.e. the
window of output pixel (y, x) starts at (y - (kH >> 1), x - (kW >> 1)), zeros outside the
image; the state images have the size of the input image (the header's "all intermediate
images have to be of same size"). Everything is computed in float64; a gate whose data
source is absent is nil, i.e. zero weights (the header's "If nil then assumed zero
weights"). Neurons are ``MPSCNNNeuronType`` names with parameters (a, b), as the manifest
lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["MPS_NEURONS", "conv_same", "gru", "gru_reset_after", "lstm", "mps_neuron",
           "single_gate"]


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
# each cell's neurons when the manifest names none: the frameworks' defaults
LSTM_NEURONS = {"inputGate": SIGMOID, "forgetGate": SIGMOID, "cellGate": TANH,
                "outputGate": SIGMOID}
GRU_NEURONS = {"inputGate": SIGMOID, "recurrentGate": SIGMOID, "outputGate": TANH}


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


def conv_same(v: Any, w: Any) -> np.ndarray:
    """``out[b][y][x][o] = sum(w[o][ky][kx][i] * v[b][y + ky - (kH >> 1)][x + kx - (kW >> 1)][i])``
    over taps inside the image (zeros outside): MPSCNNConvolution's window with offset 0
    and stride 1 (docs/layouts.md section 1), the output the size of the input. ``v`` is
    ``(B, height, width, I)``, ``w`` OHWI ``(O, kH, kW, I)``; float64."""
    v, w = np.asarray(v, np.float64), np.asarray(w, np.float64)
    o, kh, kw, n = w.shape
    b, ht, wd, _ = v.shape
    top, left = kh >> 1, kw >> 1
    pad = np.zeros((b, ht + kh - 1, wd + kw - 1, n))
    pad[:, top:top + ht, left:left + wd] = v
    out = np.zeros((b, ht, wd, o))
    for ky in range(kh):
        for kx in range(kw):
            out += pad[:, ky:ky + ht, kx:kx + wd] @ w[:, ky, kx].T
    return out


def _apply(gates: Mapping[str, Any], key: str, v: np.ndarray, h: int,
           image: bool) -> np.ndarray:
    """The product ``W * v`` of one data source: ``v W^T`` (matrix layer) or the
    convolution of :func:`conv_same` (image layer); a nil data source gives zeros."""
    n = v.shape[-1]
    if not image:
        return v @ _mat(gates, key, h, n).T
    w = gates.get(key)
    if w is None:
        return np.zeros((*v.shape[:-1], h))
    w = np.asarray(w, np.float64)
    if w.ndim != 4 or w.shape[0] != h or w.shape[3] != n:
        raise ValueError(f"{key}: image RNN weights are [H={h}][kH][kW][I={n}] (OHWI), got "
                         f"{w.shape}")
    return conv_same(v, w)


def _vec(gates: Mapping[str, Any], key: str, h: int) -> np.ndarray:
    v = gates.get(key)
    return np.zeros(h) if v is None else np.asarray(v, np.float64).reshape(h)


def _affine(gates: Mapping[str, Any], prop: str, x: np.ndarray, h0: np.ndarray,
            h: int, image: bool) -> np.ndarray:
    """W*x + U*h0 + b of one gate (input data source carries the bias)."""
    w_in, w_rec = (f"{prop}InputWeights", f"{prop}RecurrentWeights") if prop else (
        "inputWeights", "recurrentWeights")
    return (_apply(gates, w_in, x, h, image) + _apply(gates, w_rec, h0, h, image)
            + _vec(gates, f"{w_in}.bias", h))


def _time(x: np.ndarray, reverse: bool) -> range:
    t = x.shape[0]
    return range(t - 1, -1, -1) if reverse else range(t)


def _sizes(x: Any, h: int, image: bool, h0: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, Y, initial h): ``x`` (T, B, I), or (T, B, height, width, I) for an image layer."""
    xs = np.asarray(x, np.float64)
    want = 5 if image else 3
    if xs.ndim != want:
        raise ValueError(f"x must be {'(T, B, height, width, I)' if image else '(T, B, I)'}"
                         f", got shape {xs.shape}")
    state = (*xs.shape[1:-1], h)
    hp = np.zeros(state) if h0 is None else np.asarray(h0, np.float64)
    if hp.shape != state:
        raise ValueError(f"the initial state must have shape {state}, got {hp.shape}")
    return xs, np.zeros((xs.shape[0], *state)), hp


def lstm(x: Any, gates: Mapping[str, Any], hidden: int, *, reverse: bool = False,
         neurons: Mapping[str, Any] | None = None, cell_to_output: Any = TANH,
         h0: Any = None, c0: Any = None, diagonal: bool = True, image: bool = False
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y (T, B, H), last h, last c) of the MPSLSTMDescriptor formula:
    ``I = gi(Wi x + Ui h0 + Vi c0 + bi)``, ``F``, ``C`` alike, ``c1 = F c0 + I C``,
    ``O = go(Wo x + Uo h0 + Vo c1 + bo)``, ``h1 = O gh(c1)``. ``image``: the
    MPSRNNImageInferenceLayer, products as convolutions, Y ``(T, B, height, width, H)``."""
    h = hidden
    xs, y, hp = _sizes(x, h, image, h0)
    ns = {**LSTM_NEURONS, **(neurons or {})}
    cp = np.zeros_like(hp) if c0 is None else np.asarray(c0, np.float64)

    def memory(prop: str, c: np.ndarray) -> np.ndarray:
        key = f"{prop}MemoryWeights"
        if gates.get(key) is None:
            return np.zeros_like(c)
        if diagonal:
            return c * _vec(gates, key, h)
        return _apply(gates, key, c, h, image)

    for t in _time(xs, reverse):
        pre = {g: _affine(gates, g, xs[t], hp, h, image) for g in ns}
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
        h0: Any = None, image: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(Y, last h) of the MPSGRUDescriptor formula: ``z = gz(Wz x + Uz h0 + bz)``,
    ``r = gr(...)``, ``h = gh(Wh x + Uh (r h0) + Vh (z h0) + bh)``,
    ``h1 = (1 - z^p)^(1/p) h + z h0`` (``flip``: ``(1 - z^p)^(1/p) h0 + z h``)."""
    h = hidden
    xs, y, hp = _sizes(x, h, image, h0)
    ns = {**GRU_NEURONS, **(neurons or {})}
    for t in _time(xs, reverse):
        z = mps_neuron(_affine(gates, "inputGate", xs[t], hp, h, image), ns["inputGate"])
        r = mps_neuron(_affine(gates, "recurrentGate", xs[t], hp, h, image),
                       ns["recurrentGate"])
        c = (_apply(gates, "outputGateRecurrentWeights", r * hp, h, image)
             + _apply(gates, "outputGateInputGateWeights", z * hp, h, image))
        cand = mps_neuron(_apply(gates, "outputGateInputWeights", xs[t], h, image) + c
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
    xs, y, hp = _sizes(x, h, False, h0)
    ns = {**GRU_NEURONS, **(neurons or {})}
    b_rec = _vec(gates, "outputGateRecurrentBias", h)
    b_in = _vec(gates, "outputGateInputWeights.bias", h) - b_rec
    for t in _time(xs, reverse):
        z = mps_neuron(_affine(gates, "inputGate", xs[t], hp, h, False), ns["inputGate"])
        r = mps_neuron(_affine(gates, "recurrentGate", xs[t], hp, h, False),
                       ns["recurrentGate"])
        inner = _apply(gates, "outputGateRecurrentWeights", hp, h, False) + b_rec
        cand = mps_neuron(_apply(gates, "outputGateInputWeights", xs[t], h, False) + b_in
                          + r * inner, ns["outputGate"])
        hp = (1.0 - z) * cand + z * hp
        y[t] = hp
    return y, hp


def single_gate(x: Any, gates: Mapping[str, Any], hidden: int, *, reverse: bool = False,
                neuron: Any = TANH, h0: Any = None, image: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """(Y, last h) of MPSRNNSingleGateDescriptor: ``h1 = g(W x + U h0 + b)``."""
    h = hidden
    xs, y, hp = _sizes(x, h, image, h0)
    for t in _time(xs, reverse):
        hp = mps_neuron(_affine(gates, "", xs[t], hp, h, image), neuron)
        y[t] = hp
    return y, hp
