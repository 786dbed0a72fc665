"""Keras recurrent layers (``LSTM``, ``GRU``, ``SimpleRNN`` and ``Bidirectional`` of them)
as ONNX ``LSTM`` / ``GRU`` / ``RNN`` nodes, with Transposes around them.

Keras sequences are ``(B, T, I)``; the ONNX node reads ``X`` ``(T, B, I)`` (layout 0) and
writes ``Y`` ``(T, dirs, B, H)`` and ``Y_h`` ``(dirs, B, H)``. The node is named after the
Keras layer (``source.layer`` of the exported directions); a Bidirectional layer is one
node with ``direction="bidirectional"`` (forward index 0, backward 1), a ``go_backwards``
layer one ``"reverse"`` node whose sequence is flipped back into Keras' processing order.

Weights (docs/layouts.md section 9): Keras ``kernel`` ``(I, G*H)`` and ``recurrent_kernel``
``(H, G*H)`` are transposed into ONNX ``W`` ``(G*H, I)`` and ``R``; the LSTM's gate blocks
go from Keras' i, f, c, o to ONNX's i, o, f, c (GRU z, r, h and SimpleRNN are the same in
both). Keras has one bias per gate (``B = [bias; 0]``) except ``GRU(reset_after=True)``,
whose ``(2, 3H)`` bias is ``[input; recurrent]`` = ONNX ``[Wb; Rb]`` with
``linear_before_reset=1``. ``activation_alpha``/``beta`` list the parameters of the
parameterised activations only, in activation order (ONNX Runtime's reading).

Keras' values of ``Y`` are not tensors of the Keras model: each direction's layer is run
again by Keras with ``return_sequences=True`` (``Translation.recurrent``), and the tensors
between the node and the Keras layer's output are that value moved by numpy
(``Translation.derived``), so that verify judges the exported cells against Keras itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..rnn import GRU_ORDER, LSTM_ORDER
from .base import Base, RecurrentValue, Tensor, Untranslatable, _weights, act_name

_OPS = {"LSTM": ("LSTM", 4), "GRU": ("GRU", 3), "SimpleRNN": ("RNN", 1)}
# Keras' gate blocks taken in ONNX's order (docs/layouts.md section 9): LSTM i, f, c, o
# -> i, o, f, c, that is (0, 3, 1, 2); GRU z, r, h in both
LSTM_BLOCKS = tuple(LSTM_ORDER["Keras"].index(g) for g in LSTM_ORDER["ONNX"])
GRU_BLOCKS = tuple(GRU_ORDER["Keras"].index(g) for g in GRU_ORDER["ONNX"])
# Keras activation -> ONNX recurrent activation, alpha, beta (None: no such parameter)
_ACTS: dict[str, tuple[str, float | None, float | None]] = {
    "sigmoid": ("Sigmoid", None, None), "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),  # Keras 3: relu6(x + 3) / 6
    "linear": ("Affine", 1.0, 0.0), "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None), "elu": ("Elu", 1.0, None),
}


def _direction(layer: Any, op: str, gates: int) -> dict[str, Any]:
    """ONNX W, R, B (or None), activations and linear_before_reset of one Keras RNN."""
    cell = getattr(layer, "cell", None)
    w = _weights(cell if cell is not None else layer)
    if "kernel" not in w or "recurrent_kernel" not in w:
        raise Untranslatable(f"{layer.name}: no kernel / recurrent_kernel")
    k, rk = w["kernel"], w["recurrent_kernel"]
    hidden = rk.shape[0]
    if k.ndim != 2 or rk.shape != (hidden, gates * hidden) or k.shape[1] != gates * hidden:
        raise Untranslatable(f"{layer.name}: kernel {list(k.shape)} / recurrent_kernel "
                             f"{list(rk.shape)} are not (I, {gates}H) / (H, {gates}H)")
    blocks = {"LSTM": LSTM_BLOCKS, "GRU": GRU_BLOCKS}.get(op, (0,))

    def onnx_rows(a: np.ndarray) -> np.ndarray:  # (n, G*H) Keras columns -> (G*H, n)
        return np.concatenate([a[:, g * hidden:(g + 1) * hidden] for g in blocks], axis=1).T

    bias = w.get("bias")
    lbr = 0
    if op == "GRU" and bool(getattr(cell, "reset_after", False)):
        lbr = 1
    if bias is None:
        b = None
    elif bias.ndim == 2 and bias.shape == (2, gates * hidden) and lbr:
        b = np.concatenate([bias[0], bias[1]])  # [input; recurrent] = ONNX [Wb; Rb]
    elif bias.shape == (gates * hidden,):
        b = np.concatenate([onnx_rows(bias[None, :])[:, 0], np.zeros(gates * hidden,
                                                                     np.float32)])
    else:
        raise Untranslatable(f"{layer.name}: bias {list(bias.shape)}")
    names = [act_name(getattr(layer, "recurrent_activation", None)),
             act_name(layer.activation)] if op != "RNN" else [act_name(layer.activation)]
    if op == "LSTM":
        names.append(names[1])  # Keras' h = o * activation(c)
    acts = []
    for a in names:
        if a not in _ACTS:
            raise Untranslatable(f"{layer.name}: activation {a!r} has no ONNX recurrent "
                                 "activation")
        acts.append(_ACTS[a])
    return {"W": onnx_rows(k), "R": onnx_rows(rk), "B": b, "hidden": hidden, "acts": acts,
            "lbr": lbr, "backwards": bool(layer.go_backwards), "layer": layer}


def _check_layer(layer: Any) -> None:
    if getattr(layer, "stateful", False):
        raise Untranslatable(f"{layer.name}: stateful=True (the state carries over between "
                             "calls; ONNX has no such state)")


class RecurrentLayers(Base):
    """Translations ``t_CLASS`` of Keras recurrent layers (see the module docstring)."""

    def move(self, op: str, src: str, out: str, fn: Callable[[np.ndarray], np.ndarray],
             consts: tuple[str, ...] = (), **attrs: Any) -> str:
        """A data-movement node ``op`` of ``src`` whose oracle value is ``fn`` of Keras'
        value of ``src``."""
        y = self.b.node(op, [src, *consts], self.b.unique(out), **attrs)
        self.out.derived[y] = ((src,), fn)
        return y

    def sequence(self, ins: list[Tensor]) -> Tensor:
        """The layer's input: a ``(batch, time, features)`` sequence without a mask."""
        x = ins[0] if ins else None
        if x is None or x.layout != "keras" or len(x.shape) != 3:
            raise Untranslatable("the input is not a (batch, time, features) sequence")
        if getattr(self.node.input_tensors[0], "_keras_mask", None) is not None:
            raise Untranslatable("the input sequence carries a Keras mask (Masking, "
                                 "Embedding(mask_zero=True)): ONNX has no per-step mask")
        return x

    def recurrent(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                  ) -> Tensor:
        x = self.sequence(ins)
        _check_layer(op)
        onnx_op, gates = _OPS[type(op).__name__]
        d = _direction(op, onnx_op, gates)
        direction = "reverse" if d["backwards"] else "forward"
        return self.rnn_node(x, [d], onnx_op, direction, None, shape, name)

    t_LSTM = t_GRU = t_SimpleRNN = recurrent

    def t_Bidirectional(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                        ) -> Tensor:
        x = self.sequence(ins)
        fwd, bwd = op.forward_layer, op.backward_layer
        cls = type(fwd).__name__
        if cls not in _OPS or type(bwd).__name__ != cls:
            raise Untranslatable(f"Bidirectional of {cls} / {type(bwd).__name__}: only LSTM, "
                                 "GRU and SimpleRNN are translated")
        for layer in (fwd, bwd):
            _check_layer(layer)
        if fwd.go_backwards or not bwd.go_backwards:
            raise Untranslatable("a Bidirectional whose forward layer has go_backwards=True")
        if op.merge_mode not in ("concat", "sum", "mul", "ave"):
            raise Untranslatable(f"merge_mode={op.merge_mode!r}")
        onnx_op, gates = _OPS[cls]
        dirs = [_direction(layer, onnx_op, gates) for layer in (fwd, bwd)]
        if dirs[0]["hidden"] != dirs[1]["hidden"] or dirs[0]["lbr"] != dirs[1]["lbr"]:
            raise Untranslatable("forward and backward layers of different units or "
                                 "reset_after")
        return self.rnn_node(x, dirs, onnx_op, "bidirectional", op.merge_mode, shape, name)

    def rnn_node(self, x: Tensor, dirs: list[dict[str, Any]], onnx_op: str, direction: str,
                 merge: str | None, shape: tuple[Any, ...], name: str) -> Tensor:
        """The ONNX node of ``dirs`` on sequence ``x`` and the nodes that bring its result
        to the Keras layer's output ``name``."""
        seq = bool(dirs[0]["layer"].return_sequences)
        hidden = dirs[0]["hidden"]
        xt = self.move("Transpose", x.name, name + "/X", lambda a: a.transpose(1, 0, 2),
                       perm=[1, 0, 2])
        inputs = [xt, self.b.init(name + "/W", np.stack([d["W"] for d in dirs])),
                  self.b.init(name + "/R", np.stack([d["R"] for d in dirs]))]
        if any(d["B"] is not None for d in dirs):
            zeros = np.zeros(2 * dirs[0]["W"].shape[0], np.float32)
            inputs.append(self.b.init(name + "/B", np.stack(
                [zeros if d["B"] is None else d["B"] for d in dirs])))
        acts = [a for d in dirs for a in d["acts"]]
        attrs: dict[str, Any] = {"hidden_size": hidden, "direction": direction,
                                 "activations": [a[0] for a in acts]}
        alphas = [a[1] for a in acts if a[1] is not None]
        betas = [a[2] for a in acts if a[2] is not None]
        if alphas:
            attrs["activation_alpha"] = alphas
        if betas:
            attrs["activation_beta"] = betas
        if onnx_op == "GRU":
            attrs["linear_before_reset"] = dirs[0]["lbr"]
        y_name = self.b.unique(name + "/Y")
        outs = [y_name]
        if not seq:
            outs.append(self.b.unique(name + "/Y_h"))
        self.b.node(onnx_op, inputs, outs, name=name, **attrs)
        self.out.recurrent[y_name] = RecurrentValue([d["layer"] for d in dirs], x.name)
        if seq:
            y = self.move("Transpose", y_name, name + "/btdh", lambda a: a.transpose(2, 0, 1, 3),
                          perm=[2, 0, 1, 3])  # (B, T, dirs, H)
        else:
            last = [-1 if not d["backwards"] else 0 for d in dirs]  # the direction's last step
            self.out.derived[outs[1]] = ((y_name,), lambda a: np.stack(
                [a[t, k] for k, t in enumerate(last)]))
            y = self.move("Transpose", outs[1], name + "/bdh", lambda a: a.transpose(1, 0, 2),
                          perm=[1, 0, 2])  # (B, dirs, H)
        if merge in (None, "concat"):
            y = self.flat_dirs(y, seq, name)
        else:
            y = self.merge_dirs(y, merge, seq, name)
        if direction == "reverse" and seq:  # Keras returns go_backwards outputs reversed
            consts = tuple(self.b.init(f"{name}/flip_{k}", np.array([v], np.int64))
                           for k, v in (("start", -1), ("end", -(2 ** 62)), ("axis", 1),
                                        ("step", -1)))
            y = self.move("Slice", y, name + "/flipped", lambda a: a[:, ::-1], consts)
        self.b.rename(y, name)  # Keras gives the layer's output itself
        del self.out.derived[y]
        return Tensor(name, shape, "keras")

    def flat_dirs(self, y: str, seq: bool, name: str) -> str:
        """(B, [T,] dirs, H) -> (B, [T,] dirs*H): the directions concatenated, forward first."""
        shape = [0, 0, -1] if seq else [0, -1]
        target = self.b.init(name + "/shape", np.array(shape, np.int64))
        return self.move("Reshape", y, name + "/concat",
                         lambda a: a.reshape(*a.shape[:-2], -1), (target,))

    def merge_dirs(self, y: str, merge: str, seq: bool, name: str) -> str:
        """(B, [T,] 2, H) -> (B, [T,] H): Keras' sum, mul or ave of the two directions."""
        axis = 2 if seq else 1
        parts = []
        sq = self.b.init(f"{name}/squeeze", np.array([axis], np.int64))
        axes = self.b.init(f"{name}/axis", np.array([axis], np.int64))
        for k in (0, 1):
            starts, ends = (self.b.init(f"{name}/{what}", np.array([v], np.int64))
                            for what, v in (("start", k), ("end", k + 1)))
            s = self.move("Slice", y, f"{name}/dir{k}", lambda a, k=k: np.take(
                a, [k], axis=axis), (starts, ends, axes))
            parts.append(self.move("Squeeze", s, f"{name}/dir{k}/squeezed",
                                   lambda a: a.squeeze(axis), (sq,)))
        op = {"sum": "Add", "ave": "Add", "mul": "Mul"}[merge]
        out = self.b.node(op, parts, self.b.unique(f"{name}/{merge}"))
        self.out.derived[out] = (tuple(parts), np.multiply if merge == "mul" else np.add)
        if merge == "ave":  # Keras: (y + y_rev) / 2
            two = self.b.init(name + "/two", np.array(2, np.float32))
            half = self.b.node("Div", [out, two], self.b.unique(name + "/half"))
            self.out.derived[half] = ((out,), lambda a: a / np.float32(2))
            out = half
        return out
