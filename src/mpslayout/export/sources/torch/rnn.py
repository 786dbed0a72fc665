"""PyTorch ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` modules in a state_dict: the families
``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, one MPS
recurrent layer per stacked layer k and direction. The cell type is read from the shapes
(4, 3 or 1 gate blocks of H rows, H = weight_hh's columns), which the manifest states.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ....rnn import ONNX_OPS
from ...plan import Plan, TensorRef, const_tensor, is_float
from ...recurrent import SIGMOID, TANH, recurrent_layer

_LEAF = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
_CELL = {4: "lstm", 3: "gru", 1: "rnn"}


def is_recurrent(leaves: dict[str, Any]) -> bool:
    return any(_LEAF.match(k) for k in leaves) and "weight_ih_l0" in leaves


def _stacked(b_ih: TensorRef, b_hh: TensorRef) -> TensorRef:
    """(bias_ih, bias_hh) as the (2, G*H) array lstm_weights(layout="PyTorch") takes."""
    n = b_ih.shape[0]
    return TensorRef(f"{b_ih.name}+{b_hh.name}", (2, n), np.result_type(b_ih.dtype, b_hh.dtype),
                     lambda: np.stack([b_ih.load(), b_hh.load()]))


def module(p: Plan, name: str, leaves: dict[str, TensorRef]) -> set[str]:
    """Add the layers of one recurrent module; returns the leaves it used."""
    used: set[str] = set()
    w_hh = leaves.get("weight_hh_l0")
    w_ih = leaves["weight_ih_l0"]
    if w_hh is None or len(w_hh.shape) != 2 or len(w_ih.shape) != 2 or w_hh.shape[1] == 0 \
            or w_hh.shape[0] % w_hh.shape[1]:
        p.skip(name, "module", "weight_ih_l0 without a (G*H, H) weight_hh_l0")
        return set(leaves)
    hidden = w_hh.shape[1]
    cell = _CELL.get(w_hh.shape[0] // hidden)
    if cell is None:
        p.skip(name, "module", f"weight_hh_l0 {list(w_hh.shape)}: {w_hh.shape[0] // hidden} "
               "gate blocks is not an LSTM (4), GRU (3) or RNN (1)")
        return set(leaves)
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
            p.layers.append(recurrent_layer(
                f"{name}.l{k}{suffix}", cell, source, tensors, layout="PyTorch", direction=d,
                index=0, hidden=hidden, inputs=w.shape[1], neurons=neurons, notes=notes,
                pair=pair, settings={"stack_index": k,
                                     **({"linear_before_reset": 1} if cell == "gru" else {})}))
        k += 1
    return used
