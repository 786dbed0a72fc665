"""What a builder of :mod:`mpslayout.reference.onnx_ops` returns (:class:`Kernel`), what it
may ask of a node (:class:`NodeView`), and the helpers the builders share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .image import Image

__all__ = ["F32", "Kernel", "NodeView", "NotExpressible", "abs_image", "attr", "float_image",
           "linear_kernel"]

F32 = np.dtype(np.float32)


class NotExpressible(Exception):
    """The node is an operator MPSCNN has a kernel for, but not in this form (the reason)."""


class NodeView(Protocol):
    """What a builder may ask of a graph node."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int

    def const(self, tensor: str) -> np.ndarray | None: ...

    def shape(self, tensor: str) -> tuple[int, ...] | None: ...


Run = Callable[[list[Image], Any], Image]
Bound = Callable[[list[Image], list[np.ndarray]], np.ndarray]


@dataclass
class Kernel:
    """An MPS kernel bound to one node.

    ``run(images, out_dtype)``: the result. ``bound(images, deltas)``: an NHWC bound on
    how much the result moves when each input image moves by at most ``deltas`` (NHWC,
    element by element). ``magnitude(images)``: NHWC sum of the absolute values of the
    terms each output sums (what rounding of a sum is relative to), with ``terms`` terms.
    ``stores``: roundings to the image type inside the kernel (a HardSwish stores its
    HardSigmoid).
    """

    mps: str
    images: list[str]
    run: Run
    bound: Bound
    magnitude: Callable[[list[Image]], np.ndarray] | None = None
    terms: int = 1
    stores: int = 1


def abs_image(img: Image) -> Image:
    return Image(np.abs(img.data).astype(np.float32), img.channels)


def float_image(a: np.ndarray) -> Image:
    return Image.from_nhwc(a, np.float32)


def linear_kernel(mps: str, images: list[str], run: Run, terms: int = 1) -> Kernel:
    """A kernel linear in its inputs with non-negative coefficients, or a max of them:
    ``|f(x + d) - f(x)| <= f(|d|)``."""
    return Kernel(mps, images, run,
                  lambda xs, ds: run([float_image(d) for d in ds], F32).nhwc(),
                  lambda xs: run([abs_image(x) for x in xs], F32).nhwc(), terms)


def attr(node: NodeView, key: str, default: Any) -> Any:
    v = node.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v
