"""A state_dict from wherever it lives, as ``{name: numpy array}``: a dict of numpy / torch /
mx arrays, or a path to .safetensors, .pt / .pth / .bin (``torch.load(weights_only=True)``)
or .npz. A safetensors file written by :func:`mpslayout.mlx.save` keeps its record (a
:class:`~mpslayout.mlx.schema.Weights`), so nothing converts it a second time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .arrays import to_numpy
from .files import load
from .schema import Weights

__all__ = ["CHECKPOINT_KEYS", "read_state_dict"]

# where training checkpoints keep their weights, tried in this order
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


def _is_tensor(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def read_state_dict(state_dict: Any) -> Weights:
    if isinstance(state_dict, (str, os.PathLike)):
        return _read_path(os.fspath(state_dict))
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of arrays or a file path, got "
                        f"{type(state_dict).__name__}")
    arrays = {}
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise TypeError(f"state_dict keys must be str, got {k!r}")
        arrays[k] = to_numpy(v, f"state_dict[{k!r}]")
    return Weights(arrays, tensors=getattr(state_dict, "tensors", None),
                   facts=getattr(state_dict, "facts", None))


def _read_path(path: str) -> Weights:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        return load(path)
    if ext == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return Weights({k: z[k] for k in z.files})
    if ext in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            import torch
        except ImportError:
            raise ImportError(f"reading {path!r} needs torch (pip install torch)") from None
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, Mapping):
            raise TypeError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
        if not any(_is_tensor(v) for v in obj.values()):
            # a training checkpoint: the weights under one of the usual keys
            inner = [k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)]
            if not inner:
                raise TypeError(f"{path!r} holds no tensors at its top level and none of the "
                                f"keys {list(CHECKPOINT_KEYS)}; its keys: {sorted(obj)[:20]}")
            obj = obj[inner[0]]
        return read_state_dict({k: v for k, v in obj.items() if _is_tensor(v)})
    raise ValueError(f"cannot read {path!r}: expected .safetensors, .pt, .pth, .bin or .npz")
