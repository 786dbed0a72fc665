"""Reads a PyTorch ``state_dict`` saved with ``torch.save`` (``.pt``/``.pth``) through
``torch.load(weights_only=True)``, memory-mapped when the file format allows, so no code
in the file runs and tensors are read one at a time. The layers are found by rule
(:mod:`.statedict`). Needs PyTorch (any build; the CPU one is enough).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from ...plan import Overrides, Plan, TensorRef, bfloat16_ref
from . import statedict

_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net")


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading .pt/.pth files needs PyTorch: pip install torch (the CPU build is "
            "enough), or export the state_dict to safetensors"
        ) from None
    return torch


def _load(path: str) -> Any:
    torch = _torch()
    errors = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, KeyError)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # only the legacy (non-zip) format cannot be mapped
            raise ValueError(f"cannot load {path} with torch.load(weights_only=True): "
                             f"{e}") from None
    except errors as e:
        raise ValueError(
            f"cannot load {path} with torch.load(weights_only=True) (truncated, or not a "
            f"state_dict? save model.state_dict(), not the model): {type(e).__name__}: {e}"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except errors as e:
        raise ValueError(f"cannot load {path} with torch.load(weights_only=True): "
                         f"{type(e).__name__}: {e}") from None


def _numpy(t: Any) -> np.ndarray:
    torch = _torch()
    t = t.detach()
    if t.dtype == torch.bfloat16:  # raw bits; bfloat16_ref gives them their type
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _np_dtype(t: Any) -> np.dtype | None:
    torch = _torch()
    if t.dtype == torch.bfloat16:
        return np.dtype(np.uint16)
    try:
        return torch.empty(0, dtype=t.dtype).numpy().dtype
    except (TypeError, RuntimeError):
        return None


def read(path: str, *, overrides: Overrides) -> Plan:
    torch = _torch()
    obj = _load(path)
    notes = []
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                notes.append(f"the tensors are those of the file's {key!r} entry")
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of "
                         "tensors): save model.state_dict()")
    tensors: dict[str, TensorRef] = {}
    odd = []
    for name, t in obj.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            odd.append(str(name))
            continue
        dt = _np_dtype(t)
        if dt is None or t.is_sparse or t.is_quantized:
            odd.append(name)
            continue
        ref = TensorRef(name, tuple(t.shape), dt, lambda t=t: _numpy(t))
        tensors[name] = bfloat16_ref(ref) if t.dtype == torch.bfloat16 else ref
    plan = statedict.plan(tensors, "pytorch", overrides)
    plan.assumptions.extend(notes)
    for name in odd:
        plan.skip(name, "entry", "not a dense tensor of a numeric type")
    return plan
