"""ONNX ``LSTM``, ``GRU`` and ``RNN`` nodes: one MPS recurrent layer per direction
(docs/layouts.md, section 9). Called from the ONNX reader's op dispatch with the reader
(for constants and attributes) and the node; raises SkipLayer for what it cannot export.
"""

from __future__ import annotations

from typing import Any

from ....rnn import ONNX_OPS
from ...plan import SkipLayer, TensorRef
from ...recurrent import TAKES_ALPHA, TAKES_BETA, gate_neurons, neuron, recurrent_layer

OPS = {op: cell for cell, op in ONNX_OPS.items()}  # op_type -> cell
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_DEFAULT_ACTS = {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"],
                 "rnn": ["Tanh"]}
# optional inputs by position: 4 sequence_lens, 5 initial_h, 6 initial_c (LSTM), 7 P (LSTM)
_STATE_INPUTS = {4: "sequence_lens", 5: "initial_h", 6: "initial_c"}


def _list(attrs: Any, key: str, kind: int) -> list[Any] | None:
    """A FLOATS (6) or STRINGS (8) attribute, refused when stored as another type."""
    a = attrs.raw.get(key)
    if a is None:
        return None
    if a.type != kind:
        raise SkipLayer(f"{attrs.where}: attribute {key!r} has type {a.type}, ONNX defines "
                        f"it as {'FLOATS' if kind == 6 else 'STRINGS'} (a malformed model)")
    return list(a.floats) if kind == 6 else [v.decode("utf-8", "replace") for v in a.strings]


def _activations(attrs: Any, cell: str, dirs: int, where: str) -> list[list[Any]]:
    """Per direction, the MPS neurons of the node's activation list (None where MPS has
    none), with activation_alpha/beta consumed in list order by the activations that take
    them, as ONNX Runtime does."""
    names = _list(attrs, "activations", 8)
    per = len(_DEFAULT_ACTS[cell])
    if names is None:
        names = _DEFAULT_ACTS[cell] * dirs
        alphas: list[float] = []
        betas: list[float] = []
    else:
        alphas = _list(attrs, "activation_alpha", 6) or []
        betas = _list(attrs, "activation_beta", 6) or []
    if len(names) != per * dirs:
        raise SkipLayer(f"{where}: {len(names)} activations for {dirs} direction(s); "
                        f"{cell.upper()} needs {per} per direction")
    out = []
    ia, ib = iter(alphas), iter(betas)
    for n in names:
        # ONNX Runtime hands the lists out in order, but only to the activations that take
        # that parameter (a Tanh before an Affine does not use up the Affine's alpha)
        a = next(ia, None) if n in TAKES_ALPHA else None
        b = next(ib, None) if n in TAKES_BETA else None
        out.append(neuron(n, a, b))
    return [out[d * per:(d + 1) * per] for d in range(dirs)]


def read_node(reader: Any, node: Any,
              wr: tuple[TensorRef, TensorRef, list[str]] | None = None) -> None:
    """Add the layers of one LSTM/GRU/RNN node to ``reader.plan``; ``wr``: its W and R
    in ONNX LSTM layout and the source tensors they stand for, when the node's own inputs
    are not (com.microsoft DynamicQuantizeLSTM: :mod:`.quant_rnn`)."""
    cell = OPS.get(node.op_type, "lstm")
    name = reader.name(node)
    attrs = reader.attrs(node)
    w, r = (reader.weight(node, 1, "W"), reader.weight(node, 2, "R")) if wr is None \
        else wr[:2]
    if w is None or r is None:
        raise SkipLayer("it has no W or R input", unsupported=True)
    b = reader.weight(node, 3, "B")
    p = reader.weight(node, 7, "P") if cell == "lstm" else None
    if len(w.shape) != 3 or len(r.shape) != 3:
        raise SkipLayer(f"W {list(w.shape)} and R {list(r.shape)} must be 3-D "
                        "[num_directions][gates*H][...]")
    dirs, rows, n_in = w.shape
    hidden = r.shape[2]
    declared = attrs.int("hidden_size", hidden, minimum=1)
    g = _GATES[cell]
    if rows != g * hidden or r.shape != (dirs, g * hidden, hidden) or declared != hidden:
        raise SkipLayer(f"W {list(w.shape)}, R {list(r.shape)} and hidden_size={declared} "
                        f"do not describe a {cell.upper()} ({g} gates)")
    direction = attrs.text("direction", "forward")
    want_dirs = {"forward": 1, "reverse": 1, "bidirectional": 2}.get(direction)
    if want_dirs != dirs:
        raise SkipLayer(f"direction={direction!r} with {dirs} direction(s) in W")
    notes: list[str] = []
    settings: dict[str, Any] = {"clip": None}
    if "clip" in attrs.raw:
        clip = attrs.float("clip", 0.0)
        settings["clip"] = float(clip)
        notes.append(f"not exact: clip={clip} (MPS RNN cells have no clip; the weights are "
                     "exported as they are)")
    if cell == "lstm" and attrs.int("input_forget", 0):
        settings["input_forget"] = 1
        notes.append("not exact: input_forget=1 couples the input and forget gates; MPS "
                     "computes independent gates")
    if cell == "gru":
        lbr = attrs.int("linear_before_reset", 0)
        settings["linear_before_reset"] = lbr
        if lbr:
            notes.append("not exact: linear_before_reset=1 (PyTorch's GRU) applies the reset "
                         "gate after the recurrent matrix; MPS's GRU applies it before "
                         "(linear_before_reset=0). Output-gate biases are summed")
    for i, what in _STATE_INPUTS.items():
        if len(node.input) > i and node.input[i] and (cell == "lstm" or i < 6):
            notes.append(f"input {what} {node.input[i]!r}: pass it to the encode call "
                         "(recurrentInputState / per-sequence lengths); weights unchanged")
    acts = _activations(attrs, cell, dirs, f"node {name!r}")
    tensors: dict[str, TensorRef] = {"W": w, "R": r}
    if b is not None:
        if b.shape != (dirs, 2 * g * hidden):
            raise SkipLayer(f"B has shape {list(b.shape)}, expected {[dirs, 2 * g * hidden]}")
        tensors["B"] = b
    if p is not None:
        if p.shape != (dirs, 3 * hidden):
            raise SkipLayer(f"P has shape {list(p.shape)}, expected {[dirs, 3 * hidden]}")
        tensors["P"] = p
    if dirs == 2:
        names = [f"{name}.forward", f"{name}.backward"]
        order = [(0, 0), (1, 1)]
    else:
        names = [name]
        order = [(0, 1 if direction == "reverse" else 0)]
    for (index, d), layer_name in zip(order, names):
        source = {"format": "onnx", "node": name, "op": node.op_type,
                  "weights": w.name, "recurrent_weights": r.name,
                  "bias": b.name if b is not None else None,
                  "peepholes": p.name if p is not None else None, "direction_index": index}
        layer = recurrent_layer(
            layer_name, cell, source, tensors, layout="ONNX", direction=d, index=index,
            hidden=hidden, inputs=n_in, neurons=gate_neurons(cell, acts[index]),
            notes=notes, pair=names if dirs == 2 else None, settings=dict(settings))
        if wr is not None:
            layer.carried.extend(wr[2])
        reader.plan.layers.append(layer)
