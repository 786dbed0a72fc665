"""A convolution's spatial axes as MPS sees them: a 2-D Conv/ConvTranspose as it is, a 1-D
one (3-D weight, ``(N, C, L)`` activations) as a 2-D one of kernel height 1 whose width axis
is the sequence (docs/layouts.md section 1, "Conv1d"). The weight stays 3-D in the plan
(a target decides its layout: the MPS one views it as ``(O, I, 1, K)``); its dims are read
as ``(O, I, 1, K)`` (``(I, O, 1, K)`` transposed), strides, dilations and pads gain a height
axis of stride 1 and no padding, and the sequence is an image 1 pixel high: the geometry
is that of a 2-D convolution of kernel height 1.
"""

from __future__ import annotations

from typing import Any

from ...attrs import as_pair
from ...plan import SkipLayer, TensorRef


def dims4(w: TensorRef) -> tuple[int, int, int, int]:
    """A weight's dims as a 2-D convolution's: ``(A, B, K)`` is ``(A, B, 1, K)``."""
    if len(w.shape) == 3:
        a, b, k = w.shape
        return a, b, 1, k
    a, b, kh, kw = w.shape
    return a, b, kh, kw


def _pair_1d(g: Any, node: Any, key: str, unit: int = 1,
             what: str = "1-D convolution (3-D weight)") -> tuple[int, int]:
    """A 1-D attribute's one value as (height, width): (unit, value), (unit, unit) if absent."""
    v = g.attrs(node).ints(key)
    if v is None:
        return unit, unit
    if len(v) != 1:
        raise ValueError(f"node {g.name(node)!r}: {key} {v} of a {what} must hold one value")
    return as_pair([unit, v[0]], f"node {g.name(node)!r}: {key}", minimum=unit)


def is_1d(g: Any, node: Any) -> bool:
    w = g.const(node.input[1]) if len(node.input) > 1 else None
    return w is not None and len(w.shape) == 3


def kernel(g: Any, node: Any) -> tuple[TensorRef, Any, tuple[int, int], tuple[int, int], int]:
    """(weight, attributes, strides, dilations, group), 1-D or 2-D."""
    if not is_1d(g, node):
        return g.kernel(node)
    w = g.weight(node, 1, "weight")
    if w is None:
        raise SkipLayer("it has no weight input", unsupported=True)
    a = g.attrs(node)
    return (w, a, _pair_1d(g, node, "strides"), _pair_1d(g, node, "dilations"),
            a.int("group", 1, minimum=1))


def spatial(g: Any, name: str, one_d: bool) -> tuple[int | None, int | None]:
    """(height, width) of an activation: a 1-D one's length is the width, height 1."""
    if not one_d:
        return g.spatial(name)
    s = g.shape(name)
    return (1, s[2]) if s is not None and len(s) == 3 else (1, None)


def pads(g: Any, node: Any, attrs: Any, in_hw: tuple[int | None, int | None],
         k: tuple[int, int], stride: tuple[int, int], dil: tuple[int, int],
         one_d: bool) -> tuple[int, int, int, int]:
    """(top, left, bottom, right); a 1-D ``pads = [begin, end]`` is (0, begin, 0, end)."""
    if not one_d or attrs.text("auto_pad", "NOTSET") != "NOTSET":
        # SAME/VALID of a 1-D one: its height axis (k=1, stride 1) pads nothing
        return g.pads(node, attrs, in_hw, k, stride, dil)
    p = attrs.ints("pads") or [0, 0]
    if len(p) != 2:
        raise SkipLayer(f"pads {p} are not those of a 1-D convolution (begin, end)")
    return 0, p[0], 0, p[1]


def output_padding(g: Any, node: Any, one_d: bool) -> tuple[int, int]:
    if not one_d:
        return g.attrs(node).pair("output_padding", 0, minimum=0)
    return _pair_1d(g, node, "output_padding", 0, "1-D transposed convolution")
