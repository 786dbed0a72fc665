"""Recurrent layers: framework LSTM / GRU / RNN tensors as the per-gate data sources of
MPS's ``MPSLSTMDescriptor``, ``MPSGRUDescriptor`` and ``MPSRNNSingleGateDescriptor``.

The rules (gate orders, the summed bias, peepholes as diagonal memory weights) are in
docs/layouts.md, "Recurrent layers", each with the SDK header it comes from. Every gate
block goes through :func:`mpslayout.conv_weights` (the engine), so dtype handling is that of
the convolution converters; biases are float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import engine, mps

__all__ = [
    "GRU_GATES",
    "LSTM_GATES",
    "RNN_LAYOUTS",
    "gru_weights",
    "lstm_weights",
    "rnn_weights",
]

RNN_LAYOUTS = ("ONNX", "PyTorch", "Keras")
# each cell's ONNX operator (the manifest's kind -> op_type)
ONNX_OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}

# the gate order of each framework's packed tensors (docs/layouts.md, gate order table)
LSTM_ORDER = {"ONNX": "iofc", "PyTorch": "ifco", "Keras": "ifco"}
GRU_ORDER = {"ONNX": "zrh", "PyTorch": "rzh", "Keras": "zrh"}
# framework gate letter -> MPS property prefix (MPSLSTMDescriptor / MPSGRUDescriptor)
LSTM_GATES = {"i": "inputGate", "f": "forgetGate", "c": "cellGate", "o": "outputGate"}
GRU_GATES = {"z": "inputGate", "r": "recurrentGate", "h": "outputGate"}
PEEPHOLE_ORDER = "iof"  # ONNX P[dir] = [Pi | Po | Pf]
BIAS_SUFFIX = ".bias"  # key of an input data source's biasTerms: "<property>.bias"
# GRU linear_before_reset: the output gate's recurrent bias, no MPS property (gru_weights)
RECURRENT_BIAS = "outputGateRecurrentBias"


def _array(x: Any, name: str) -> np.ndarray:
    a = engine.as_input(x, name)
    if not a.dtype.isnative and a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _direction(direction: Any) -> int:
    if isinstance(direction, (bool, np.bool_)) or not isinstance(direction, (int, np.integer)):
        raise TypeError(f"direction must be an int (0 forward, 1 backward), "
                        f"got {type(direction).__name__}")
    if direction not in (0, 1):
        raise ValueError(f"direction must be 0 (forward) or 1 (backward), got {direction}")
    return int(direction)


def _pick(a: np.ndarray, ndim: int, d: int, name: str, layout: str) -> np.ndarray:
    """ONNX tensors carry a leading num_directions axis; take direction ``d`` of it."""
    if layout == "ONNX" and a.ndim == ndim + 1:
        if d >= a.shape[0]:
            raise ValueError(f"{name} has {a.shape[0]} direction(s) (shape {a.shape}); "
                             f"direction={d} does not exist")
        return a[d]
    if d and layout == "ONNX":
        raise ValueError(f"direction={d} needs {name} with a leading num_directions axis, "
                         f"got shape {a.shape}")
    if d:
        raise ValueError(f"direction={d}: {layout} tensors hold one direction each; pass the "
                         "backward tensors (PyTorch '_reverse', Keras backward_layer) with "
                         "direction=0")
    return a


def _packed(W: Any, R: Any, gates: int, layout: str, d: int
            ) -> tuple[np.ndarray, np.ndarray, int]:
    """(W, R, H) of one direction, shapes checked: ONNX/PyTorch ``W (G*H, I)``, ``R (G*H,
    H)``; Keras ``kernel (I, G*H)`` or ``(kH, kW, I, G*H)``, ``recurrent_kernel`` alike."""
    layout = mps._choice(layout, RNN_LAYOUTS, "layout")
    w, r = _array(W, "W"), _array(R, "R")
    if layout == "Keras":
        if w.ndim not in (2, 4):
            raise ValueError(f"W (Keras kernel) must be (I, {gates}*H) or (kH, kW, I, "
                             f"{gates}*H), got shape {w.shape}")
        if r.ndim != w.ndim:
            raise ValueError(f"R (Keras recurrent_kernel) must be {w.ndim}-D like W, got "
                             f"shape {r.shape}")
        h = r.shape[-2]
        if d:
            _pick(w, 2, d, "W", layout)
        rows_w, rows_r = w.shape[-1], r.shape[-1]
    else:
        w, r = _pick(w, 2, d, "W", layout), _pick(r, 2, d, "R", layout)
        for a, n in ((w, "W"), (r, "R")):
            if a.ndim != 2:
                extra = " (or 3-D, num_directions first)" if layout == "ONNX" else ""
                raise ValueError(f"{n} must be 2-D ({gates}*H, ...) for layout={layout!r}"
                                 f"{extra}, got shape {a.shape}")
        h = r.shape[1]
        rows_w, rows_r = w.shape[0], r.shape[0]
    what = "columns" if layout == "Keras" else "rows"
    if h == 0 or rows_r != gates * h:
        raise ValueError(f"R has shape {r.shape}: expected {gates}*H gate {what} for hidden "
                         f"size H={h} ({gates} gates)")
    if rows_w != gates * h:
        raise ValueError(f"W has shape {w.shape}: expected {gates}*H = {gates * h} gate "
                         f"{what} (H={h} from R)")
    return w, r, h


def _block(a: np.ndarray, k: int, h: int, layout: str, dtype: Any, name: str) -> np.ndarray:
    """Gate ``k`` of a packed tensor as OHWI ``(H, kH, kW, I)`` through the conv rule."""
    if layout == "Keras":
        blk = a[..., k * h:(k + 1) * h]
        return mps.conv_weights(blk if blk.ndim == 4 else blk[None, None], layout="HWIO",
                                dtype=dtype)
    return mps.conv_weights(a[k * h:(k + 1) * h, :, None, None], layout="OIHW", dtype=dtype)


def _biases(B: Any, gates: int, h: int, layout: str, d: int) -> list[np.ndarray] | None:
    """The bias vectors of one direction: [input] or [input, recurrent], each (G*H,)."""
    if B is None:
        return None
    b = _array(B, "B")
    if b.dtype.kind not in "fiu" and not engine._is_bf16(b.dtype):
        raise TypeError(f"B has dtype {b.dtype}; a bias must be real numbers")
    n = gates * h
    if layout == "ONNX":
        b = _pick(b, 1, d, "B", layout)
        if b.shape != (2 * n,):
            raise ValueError(f"B must be ({2 * n},) per direction ([Wb | Rb], {gates} gates, "
                             f"H={h}), got shape {b.shape}")
        return [b[:n], b[n:]]
    if layout == "PyTorch":
        if b.shape != (2, n):
            raise ValueError(f"B must be (2, {n}): (bias_ih, bias_hh) stacked, got shape "
                             f"{b.shape}")
        return [b[0], b[1]]
    if b.shape == (n,):
        return [b]
    if b.shape == (2, n):
        return [b[0], b[1]]
    raise ValueError(f"B (Keras bias) must be ({n},) or (2, {n}) (GRU reset_after: input "
                     f"and recurrent rows), got shape {b.shape}")


def _sum_bias(parts: list[np.ndarray], k: int, h: int) -> np.ndarray:
    """MPS has one bias per gate (the input data source's): the sum of the framework's
    biases, in float64, rounded once to float32 (the correctly rounded sum)."""
    s = np.zeros(h, np.float64)
    for p in parts:
        s = s + p[k * h:(k + 1) * h].astype(np.float64)
    return s.astype(np.float32)


def _gates(W: Any, R: Any, B: Any, order: str, names: Mapping[str, str], layout: str,
           direction: Any, dtype: Any
           ) -> tuple[dict[str, np.ndarray], int, str, list[np.ndarray] | None]:
    """(gate arrays, H, layout, the framework's bias vectors of this direction)."""
    d = _direction(direction)
    w, r, h = _packed(W, R, len(order), layout, d)
    biases = _biases(B, len(order), h, layout, d)
    result: dict[str, np.ndarray] = {}
    for k, g in enumerate(order):
        prop = names[g]
        result[f"{prop}InputWeights"] = _block(w, k, h, layout, dtype, "W")
        result[f"{prop}RecurrentWeights"] = _block(r, k, h, layout, dtype, "R")
        if biases is not None:
            result[f"{prop}InputWeights{BIAS_SUFFIX}"] = _sum_bias(biases, k, h)
    return result, h, layout, biases


_PER_GATE = ("InputWeights", "InputWeights" + BIAS_SUFFIX, "RecurrentWeights", "RecurrentBias",
             "MemoryWeights")


def _sorted(result: dict[str, np.ndarray], gate_names: Any) -> dict[str, np.ndarray]:
    """The MPS descriptor's gate order, and per gate: input weights, their bias, recurrent
    weights, memory weights; whatever the framework's order."""
    keys = [g + p for g in gate_names for p in _PER_GATE]
    return {k: result[k] for k in keys if k in result}


def lstm_weights(
    W: Any,
    R: Any,
    B: Any = None,
    P: Any = None,
    *,
    layout: str = "ONNX",
    direction: int = 0,
    dtype: Any = None,
) -> dict[str, np.ndarray]:
    """``MPSLSTMDescriptor`` data sources of one direction of a framework LSTM.

    Returns ``{property: array}`` in the descriptor's gate order (input, forget, cell,
    output): ``<gate>InputWeights`` ``(H, 1, 1, I)`` (OHWI; ``(H, kH, kW, I)`` for a Keras
    ConvLSTM2D kernel), ``<gate>RecurrentWeights`` ``(H, 1, 1, H)`` (ConvLSTM2D:
    ``(H, kH, kW, H)``), and when ``B`` is given
    ``<gate>InputWeights.bias`` (float32, the input data source's ``biasTerms``, the sum of
    the framework's input and recurrent biases). With ONNX peepholes ``P``:
    ``inputGateMemoryWeights``, ``forgetGateMemoryWeights``, ``outputGateMemoryWeights``,
    each ``(H,)`` (use ``memoryWeightsAreDiagonal = YES``); ``cellGateMemoryWeights`` is nil.

    Gate k of ``order`` (ONNX "iofc", PyTorch "ifco" with g as c, Keras "ifco"), with
    ``H = R.shape[-1]`` (ONNX/PyTorch) or ``R.shape[-2]`` (Keras), equals:

    - ONNX ``W[dirs][4H][I]`` (``direction`` indexes dirs), PyTorch ``weight_ih (4H, I)``:
      ``np.ascontiguousarray(W[direction][k*H:(k+1)*H]).reshape(H, 1, 1, I)``
      (``R`` alike, with H columns);
    - Keras ``kernel (I, 4H)``: ``np.ascontiguousarray(W[:, k*H:(k+1)*H].T).reshape(H, 1, 1, I)``;
      ``(kH, kW, I, 4H)``: ``np.ascontiguousarray(W[..., k*H:(k+1)*H].transpose(3, 0, 1, 2))``;
    - bias: ``(sum(b[k*H:(k+1)*H].astype(np.float64) for b in biases)).astype(np.float32)``
      with biases ONNX ``B[direction][:4H], B[direction][4H:]``; PyTorch ``B = (bias_ih,
      bias_hh)`` stacked as ``(2, 4H)``; Keras ``bias (4H,)`` (or ``(2, 4H)``);
    - ``P`` (ONNX only, ``[dirs][3H]`` in order i, o, f): gate g's memory weights
      ``P[direction][j*H:(j+1)*H]`` with j = "iof".index(g).

    ``dtype`` as in :func:`mpslayout.conv_weights` (None keeps float32/float16/uint8,
    float64 becomes float32). Bias and memory-weight dtype rules: bias always float32.
    """
    order = LSTM_ORDER[mps._choice(layout, RNN_LAYOUTS, "layout")]
    result, h, layout, _ = _gates(W, R, B, order, LSTM_GATES, layout, direction, dtype)
    if P is not None:
        if layout != "ONNX":
            raise ValueError(f"P (peepholes) exists only for layout='ONNX', got layout={layout!r}")
        p = _pick(_array(P, "P"), 1, int(direction), "P", layout)
        if p.shape != (3 * h,):
            raise ValueError(f"P must be (3*H,) = ({3 * h},) per direction (i, o, f), got "
                             f"shape {p.shape}")
        for j, g in enumerate(PEEPHOLE_ORDER):
            vec = p[j * h:(j + 1) * h, None, None, None]
            result[f"{LSTM_GATES[g]}MemoryWeights"] = mps.conv_weights(
                vec, layout="OIHW", dtype=dtype).reshape(h)
    return _sorted(result, LSTM_GATES.values())


def gru_weights(
    W: Any,
    R: Any,
    B: Any = None,
    *,
    layout: str = "ONNX",
    direction: int = 0,
    dtype: Any = None,
    linear_before_reset: bool = False,
) -> dict[str, np.ndarray]:
    """``MPSGRUDescriptor`` data sources of one direction of a framework GRU.

    Keys ``inputGate`` (z), ``recurrentGate`` (r), ``outputGate`` (h) ``InputWeights``
    ``(H, 1, 1, I)``, ``...RecurrentWeights`` ``(H, 1, 1, H)`` and, with ``B``,
    ``...InputWeights.bias`` (float32). ``outputGateInputGateWeights`` has no framework
    counterpart and stays nil. Gate orders: ONNX "zrh", PyTorch "rzh" (n as h), Keras "zrh";
    the one-liners are those of :func:`lstm_weights` with 3H instead of 4H (Keras
    ``reset_after=True`` bias: ``(2, 3H)``, its two rows summed).

    MPS computes ONNX's ``linear_before_reset=0`` cell exactly; for PyTorch's GRU, Keras
    ``reset_after=True`` and ONNX ``linear_before_reset=1`` the summed output-gate bias is
    exact only where the reset gate is 1 (docs/layouts.md). For those cells pass
    ``linear_before_reset=True``: with a recurrent bias (ONNX ``Rb``, PyTorch ``bias_hh``,
    Keras ``bias[1]``) the result also holds ``outputGateRecurrentBias`` (float32 ``(H,)``,
    ``np.float32(Rb[2H:3H])`` in the framework's h/n block), which is no MPS property: it
    is the bias inside ``r * (Uh h0 + bRh)`` that the framework's cell needs (already summed
    into ``outputGateInputWeights.bias``), kept so no learned tensor is lost.
    """
    if not isinstance(linear_before_reset, (bool, np.bool_)):
        raise TypeError(f"linear_before_reset must be a bool, got "
                        f"{type(linear_before_reset).__name__}")
    order = GRU_ORDER[mps._choice(layout, RNN_LAYOUTS, "layout")]
    result, h, layout, biases = _gates(W, R, B, order, GRU_GATES, layout, direction, dtype)
    if linear_before_reset and biases is not None and len(biases) == 2:
        k = order.index("h")
        result[RECURRENT_BIAS] = _sum_bias(biases[1:], k, h)
    return _sorted(result, GRU_GATES.values())


def rnn_weights(
    W: Any,
    R: Any,
    B: Any = None,
    *,
    layout: str = "ONNX",
    direction: int = 0,
    dtype: Any = None,
) -> dict[str, np.ndarray]:
    """``MPSRNNSingleGateDescriptor`` data sources (ONNX ``RNN``, PyTorch ``nn.RNN``, Keras
    ``SimpleRNN``): ``inputWeights`` ``(H, 1, 1, I)``, ``recurrentWeights`` ``(H, 1, 1, H)``
    and with ``B`` ``inputWeights.bias`` (float32, input + recurrent bias). One gate, so the
    one-liners of :func:`lstm_weights` with k = 0: ONNX/PyTorch
    ``np.ascontiguousarray(W[direction]).reshape(H, 1, 1, I)``, Keras
    ``np.ascontiguousarray(W.T).reshape(H, 1, 1, I)``.
    """
    result, _, _, _ = _gates(W, R, B, "x", {"x": ""}, layout, direction, dtype)
    return {k[0].lower() + k[1:]: v for k, v in _sorted(result, [""]).items()}
