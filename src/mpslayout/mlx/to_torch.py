"""``to_torch``: an MLX port's parameters back to a PyTorch state_dict (numpy arrays, torch
names), the inverse of :func:`mpslayout.mlx.sanitize` with ``source="torch"``.

Every tensor that sanitize only permuted comes back byte for byte. Summed biases cannot be
split again: LSTM/RNN ``bias`` becomes ``bias_ih`` with ``bias_hh`` zeros, GRU ``b``
becomes ``bias_ih`` and ``bhn`` the n block of ``bias_hh`` (exactly), zeros elsewhere; the
torch cell computes the same. Recurrent names follow sanitize's rule backwards: an MLX
module at ``T.{k}`` / ``T.layers.{k}`` gives ``T.weight_ih_l{k}``, at ``T.reverse...`` the
``_reverse`` tensors, any other path ``T`` gives ``T.weight_ih_l0`` (an ``nn.LSTM``; rename
to ``weight_ih`` for an LSTMCell).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import engine
from . import rules
from .modules import MHA_CHILDREN, describe, sequential_paths, to_source_name
from .sanitize import _torch_candidates
from .sources import read_state_dict

__all__ = ["to_torch"]

_INVERSE = {"lstm": rules.lstm_params_to_torch, "gru": rules.gru_params_to_torch,
            "rnn": rules.rnn_params_to_torch}


def to_torch(weights: Any, model: Any, flatten: Mapping[str, Any] | None = None, *,
             dtype: Any = None) -> dict[str, np.ndarray]:
    """``{torch_name: numpy array}`` in PyTorch's layouts from MLX ``weights`` (a dict of
    mx / numpy arrays or a .safetensors path) of the port ``model`` (an ``mlx.nn.Module`` or
    ``{path: MLX type name}``). ``flatten`` as given to sanitize. Names of ``weights`` that
    no module of ``model`` owns raise ValueError."""
    entries = describe(model)
    sd = read_state_dict(weights)
    flat = dict(flatten or {})
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(e_path: str, pname: str) -> np.ndarray | None:
        name = f"{e_path}.{pname}" if e_path else pname
        if name in sd:
            used.add(name)
            return sd[name]
        return None

    mha_children = set()
    for e in entries.values():
        if e.kind == "mha":
            p = e.path + "." if e.path else ""
            parts = {}
            for child in MHA_CHILDREN[:3]:
                mha_children.add(p + child)
                for pn in ("weight", "bias"):
                    a = take(p + child, pn)
                    if a is not None:
                        parts.setdefault(pn, []).append(rules.linear_weights_to_torch(
                            a, dtype=dtype) if pn == "weight" else _copy(a, dtype))
            if len(parts.get("weight", [])) == 3:
                out[p + "in_proj_weight"] = np.concatenate(parts["weight"])
            if len(parts.get("bias", [])) == 3:
                out[p + "in_proj_bias"] = np.concatenate(parts["bias"])
    for e in entries.values():
        if e.path in mha_children or e.kind == "mha":
            continue
        pre = e.path + "." if e.path else ""
        if e.kind in _INVERSE:
            got = {}
            for pn in e.params:
                a = take(e.path, pn)
                if a is not None:
                    got[pn] = a
            if not got:
                continue
            prefix, suffix = _torch_candidates(e.path)[0]
            for tn, a in _INVERSE[e.kind](got, dtype=dtype).items():
                out[f"{prefix}.{tn}{suffix}" if prefix else tn + suffix] = a
            continue
        for pn in e.params:
            a = take(e.path, pn)
            if a is None:
                continue
            if pn == "weight" and e.kind == "conv":
                a = rules.conv_weights_to_torch(a, dtype=dtype)
            elif pn == "weight" and e.kind == "conv_transpose":
                a = rules.conv_transpose_weights_to_torch(a, dtype=dtype)
            elif pn == "weight" and e.kind == "linear":
                a = rules.linear_weights_to_torch(a, input_shape=flat.get(e.path), dtype=dtype)
            else:
                a = _copy(a, dtype)
            out[pre + pn] = a
    extra = sorted(k for k in sd if k not in used)
    if extra:
        raise ValueError(f"weights {extra} belong to no module of the model")
    seq = sequential_paths(model)
    return {to_source_name(k, seq): v for k, v in out.items()} if seq else out


def _copy(a: np.ndarray, dtype: Any) -> np.ndarray:
    return engine.permute(a, tuple(range(a.ndim)), dtype=dtype)
