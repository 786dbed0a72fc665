"""A fully connected layer followed by a reshape (Dense -> Reshape(H, W, C), PyTorch
``view(-1, C, H, W)``) in the plan: which rule exports it and which MPS targets are exact for
it (docs/layouts.md section 6)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import mps
from . import geometry as mf
from .plan import Layer, TensorRef

_F4 = np.dtype(np.float32)


def reshape_alternatives(bias: np.ndarray | None, n: int, shape: tuple[int, int, int],
                         order: str) -> list[dict[str, Any]]:
    """Which ``dense_reshape`` targets are exact for this layer, each with the reason when
    it is not. Checked by the converter itself, on a zero-width weight so nothing big is
    read."""
    h, w, _ = shape
    why = {"rows": "",
           "subpixel": "" if h == w else f"needs a square reshape (H == W), got {h}x{w}"}
    try:
        mps.dense_reshape(np.zeros((n, 0), _F4), bias, shape=shape, order=order,
                          target="conv_transpose")
        why["conv_transpose"] = ""
    except ValueError as e:
        why["conv_transpose"] = str(e)
    return [{"target": t, "available": not r, "reason": r or None} for t, r in why.items()]


def reshape_layer(name: str, source: dict[str, Any], w: TensorRef, b: TensorRef | None,
                  params: dict[str, Any], geo: dict[str, Any], shape: tuple[int, int, int],
                  order: str, node: str | None = None,
                  scale: np.ndarray | None = None) -> Layer:
    """A fully connected layer followed by a reshape to ``shape`` (H, W, C) in ``order``:
    a sub-pixel convolution when H == W, else HWC-ordered rows for MPSNNReshape
    (docs/layouts.md section 6, Dense followed by Reshape); the other exact targets are listed
    in the manifest."""
    h, ww, c = shape
    target = "subpixel" if h == ww else "rows"
    alts = reshape_alternatives(None if b is None else b.load(), geo["output_channels"],
                                shape, order)
    params.update(shape=tuple(shape), order=order, target=target)
    mf.add_reshape(geo, shape, order, target, alts, node)
    layer = Layer(name, "subpixel" if target == "subpixel" else "fully_connected",
                  "dense_reshape", source, w, b, params, geo, scale)
    layer.notes.append(
        f"rows reordered from {order} to HWC for a reshape to {h}x{ww}x{c}"
        + (f"; MPS runs it as a {h}x sub-pixel convolution of the 1x1 output"
           if target == "subpixel" else "; follow it with MPSNNReshape to HxWxC")
    )
    return layer
