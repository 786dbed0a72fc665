"""Arrays in and out: numpy from numpy / PyTorch / MLX arrays (bfloat16 kept, through
ml_dtypes), and mx arrays from numpy. mlx and torch are imported only when given their
arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["mlx_available", "to_mx", "to_numpy"]


def _bf16(name: str) -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError(f"{name} is bfloat16: pass it through numpy with the ml_dtypes "
                        "package installed (pip install ml_dtypes)") from None
    return np.dtype(ml_dtypes.bfloat16)


def to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` as a numpy array without copying where the source allows: a torch tensor via
    ``detach().cpu().numpy()`` (bfloat16 as its int16 bits viewed as ml_dtypes'), an mx
    array via ``np.asarray`` (bfloat16 through its uint16 bits)."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import torch

            return t.view(torch.int16).numpy().view(_bf16(name))
        return t.numpy()
    if mod.startswith("mlx"):
        import mlx.core as mx

        if x.dtype == mx.bfloat16:
            return np.asarray(x.view(mx.uint16)).view(_bf16(name))
        return np.asarray(x)
    return np.asarray(x)


def mlx_available() -> bool:
    try:
        import mlx.core  # noqa: F401
    except ImportError:
        return False
    return True


def to_mx(a: np.ndarray) -> Any:
    """An mx array of ``a``'s values and dtype (bfloat16 through its bits)."""
    import mlx.core as mx

    if a.dtype.name == "bfloat16":
        return mx.array(np.ascontiguousarray(a).view(np.uint16)).view(mx.bfloat16)
    return mx.array(np.ascontiguousarray(a))
