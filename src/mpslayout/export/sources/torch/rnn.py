"""PyTorch ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` modules in a state_dict: the families
``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, one MPS
recurrent layer per stacked layer k and direction; and ``nn.LSTMCell`` / ``GRUCell`` /
``RNNCell`` (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, no ``_l{k}``): one
forward recurrent layer, the same cell run one step at a time. The cell type is read from
the shapes (4, 3 or 1 gate blocks of H rows, H = weight_hh's columns), which the manifest
states.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ....rnn import ONNX_OPS
from ...plan import Plan, TensorRef, const_tensor, is_float
from ...recurrent import SIGMOID, TANH, recurrent_layer

_LEAF = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
_CELL_LEAVES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_CELL = {4: "lstm", 3: "gru", 1: "rnn"}


def is_recurrent(leaves: dict[str, Any]) -> bool:
    return (any(_LEAF.match(k) for k in leaves) and "weight_ih_l0" in leaves) or is_cell(leaves)


def is_cell(leaves: dict[str, Any]) -> bool:
    """An nn.LSTMCell / GRUCell / RNNCell: weight_ih and weight_hh (and its biases) only."""
    return "weight_ih" in leaves and "weight_hh" in leaves and \
        set(leaves) <= set(_CELL_LEAVES)


def _stacked(b_ih: TensorRef, b_hh: TensorRef) -> TensorRef:
    """(bias_ih, bias_hh) as the (2, G*H) array lstm_weights(layout="PyTorch") takes."""
    n = b_ih.shape[0]
    return TensorRef(f"{b_ih.name}+{b_hh.name}", (2, n), np.result_type(b_ih.dtype, b_hh.dtype),
                     lambda: np.stack([b_ih.load(), b_hh.load()]))


def module(p: Plan, name: str, leaves: dict[str, TensorRef]) -> set[str]:
    """Add the layers of one recurrent module; returns the leaves it used."""
    used: set[str] = set()
    cell_module = is_cell(leaves)
    if cell_module:  # one step of the same cell: the layer-0 forward names
        leaves = {f"{k}_l0": v for k, v in leaves.items()}
    w_hh = leaves.get("weight_hh_l0")
    w_ih = leaves["weight_ih_l0"]
    if w_hh is None or len(w_hh.shape) != 2 or len(w_ih.shape) != 2 or w_hh.shape[1] == 0 \
            or w_hh.shape[0] % w_hh.shape[1]:
        p.skip(name, "module", "weight_ih_l0 without a (G*H, H) weight_hh_l0")
        return set(leaves) if not cell_module else set(_CELL_LEAVES)
    hidden = w_hh.shape[1]
    cell = _CELL.get(w_hh.shape[0] // hidden)
    if cell is None:
        p.skip(name, "module", f"weight_hh_l0 {list(w_hh.shape)}: {w_hh.shape[0] // hidden} "
               "gate blocks is not an LSTM (4), GRU (3) or RNN (1)",
               [r.name for r in leaves.values()])
        return set(leaves) if not cell_module else set(_CELL_LEAVES)
    if any(k.startswith("weight_hr") for k in leaves):
        p.skip(name, "LSTM", "proj_size > 0 (weight_hr): MPS LSTMs have no output projection")
        return {k for k in leaves if _LEAF.match(k)}
    dirs = 2 if "weight_ih_l0_reverse" in leaves else 1
    k = 0
    while f"weight_ih_l{k}" in leaves:
        pair = [f"{name}.l{k}", f"{name}.l{k}_reverse"] if dirs == 2 else None
        for d, suffix in enumerate(("", "_reverse")[:dirs]):
            keys = [f"{n}_l{k}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            refs = [leaves.get(key) for key in keys]
            w, r, bi, bh = refs
            used.update(key for key in keys if key in leaves)
            if w is None or r is None or any(x is not None and not is_float(x.dtype)
                                             for x in refs):
                p.skip(f"{name}.l{k}{suffix}", ONNX_OPS[cell], "missing or non-float weight_ih / "
                       "weight_hh")
                continue
            tensors = {"W": w, "R": r}
            if bi is not None or bh is not None:
                n = r.shape[0]
                zero = const_tensor(f"{name}:zero_bias", np.zeros(n, np.float32))
                tensors["B"] = _stacked(bi or zero, bh or zero)
            notes = []
            neurons: dict[str, Any]
            if cell == "lstm":
                neurons = {"inputGate": SIGMOID, "forgetGate": SIGMOID, "cellGate": TANH,
                           "outputGate": SIGMOID, "cellToOutput": TANH}
            elif cell == "gru":
                neurons = {"inputGate": SIGMOID, "recurrentGate": SIGMOID, "outputGate": TANH}
                notes.append("not exact: PyTorch's GRU applies the reset gate after the "
                             "recurrent matrix (ONNX linear_before_reset=1); MPS's GRU "
                             "applies it before. Output-gate biases are summed")
            else:
                neurons = {"input": TANH}
                notes.append("nonlinearity tanh assumed (nn.RNN's default; a state_dict does "
                             "not store it: use relu's neuron if the module used relu)")
            source = {"format": p.format, "module": name, "op": ONNX_OPS[cell],
                      "weights": w.name, "recurrent_weights": r.name,
                      "bias": tensors["B"].name if "B" in tensors else None}
            if cell_module:
                notes.append(f"an nn.{ONNX_OPS[cell]}Cell "
                             "(weight_ih, weight_hh without _l0): one forward layer, the "
                             "cell the module runs one step per call")
            p.layers.append(recurrent_layer(
                name if cell_module else f"{name}.l{k}{suffix}", cell, source, tensors,
                layout="PyTorch", direction=d,
                index=0, hidden=hidden, inputs=w.shape[1], neurons=neurons, notes=notes,
                pair=pair, settings={"stack_index": k,
                                     **({"linear_before_reset": 1} if cell == "gru" else {})}))
        k += 1
    return {key[:-3] for key in used} if cell_module else used
