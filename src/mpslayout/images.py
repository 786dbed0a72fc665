"""MPSImage's 4-channel slices (docs/layouts.md section 5, MPSImage: 4-channel slices) and
reshapes on slice data (section 6): the CPU side of what a texture holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import engine
from .layouts import parse_layout, physical_shape, run_layouts

__all__ = ["image_from_slices", "image_slices", "reshape_gather", "reshape_slices"]

_IMAGE_LAYOUTS = ("NCHW", "NHWC", "CHW", "HWC")


def slice_geometry(c: int) -> tuple[int, int]:
    """(S, P): slices per image and components per pixel for C channels."""
    if c <= 2:
        return 1, c
    return -(-c // 4), 4


def _layout(layout: Any) -> str:
    if layout not in _IMAGE_LAYOUTS:
        raise ValueError(
            f"layout must be one of {', '.join(map(repr, _IMAGE_LAYOUTS))}; got {layout!r}"
        )
    return layout


def _sliced_layout(layout: str, c: int) -> str:
    """Layout string of the slice array, with N kept apart so it can merge with S."""
    batch = "N" if "N" in layout else ""
    if c <= 2:
        return batch + "HWC"
    return batch + "CHW4c"


def image_slices(
    x: Any,
    *,
    layout: str = "NCHW",
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """The slice-major dump of an MPSImage: ``(N*S, H, W, P)``, or ``(S, H, W, P)`` without N.

    ``P = C`` and ``S = 1`` when C <= 2, else ``P = 4`` and ``S = ceil(C/4)`` with the padding
    channels zero. From NCHW with C > 2 this equals ``np.pad(x, ((0, 0), (0, 4*S - C), (0, 0),
    (0, 0))).reshape(N, S, 4, H, W).transpose(0, 1, 3, 4, 2).reshape(N*S, H, W, 4)``.
    """
    lay = _layout(layout)
    a = engine.as_input(x, "x")
    if a.ndim != len(lay):
        raise ValueError(f"x must be {len(lay)}-D for layout={lay!r}, got shape {a.shape}")
    ext = dict(zip(lay, a.shape))
    s, p = slice_geometry(ext["C"])
    src = parse_layout(lay)
    dst = parse_layout(_sliced_layout(lay, ext["C"]))
    a, out_dt, cast = engine.resolve_dtype(a, dtype, "x", mps=True)
    shape = (ext.get("N", 1) * s, ext["H"], ext["W"], p)
    if "N" not in lay:
        shape = (s, ext["H"], ext["W"], p)
    result = engine.prepare_out(out, shape, out_dt, a)
    run_layouts(
        a, src, result.reshape(physical_shape(dst, ext)), dst, ext, cast=cast, threads=threads
    )
    return result


def image_from_slices(
    t: Any,
    *,
    channels: int,
    layout: str = "NCHW",
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """The inverse of :func:`image_slices`: ``t`` is ``(N*S, H, W, P)``; padding is dropped.

    For NCHW with C > 2 this equals ``t.reshape(N, S, H, W, 4).transpose(0, 1, 4, 2, 3)
    .reshape(N, 4*S, H, W)[:, :C]`` (made contiguous).
    """
    lay = _layout(layout)
    if isinstance(channels, (bool, np.bool_)) or not isinstance(channels, (int, np.integer)):
        raise TypeError(f"channels must be an int, got {type(channels).__name__}")
    if channels < 0:
        raise ValueError(f"channels must be >= 0, got {channels}")
    c = int(channels)
    a = engine.as_input(t, "t")
    s, p = slice_geometry(c)
    if a.ndim != 4:
        raise ValueError(f"t must be 4-D (N*S, H, W, P), got shape {a.shape}")
    if a.shape[3] != p:
        raise ValueError(f"t.shape[3] must be {p} for {c} channels, got {a.shape[3]}")
    batch = "N" in lay
    if batch:
        if a.shape[0] % s:
            raise ValueError(
                f"t.shape[0]={a.shape[0]} is not a multiple of the {s} slices of {c} channels"
            )
        n = a.shape[0] // s
    elif a.shape[0] != s:
        raise ValueError(f"t.shape[0] must be {s} slices for {c} channels, got {a.shape[0]}")
    else:
        n = 1
    ext = {"N": n, "C": c, "H": a.shape[1], "W": a.shape[2]}
    if not batch:
        del ext["N"]
    src = parse_layout(_sliced_layout(lay, c))
    view = a.reshape(physical_shape(src, ext))
    a2, out_dt, cast = engine.resolve_dtype(view, dtype, "t", mps=True)
    dst = parse_layout(lay)
    result = engine.prepare_out(out, physical_shape(dst, ext), out_dt, a)
    run_layouts(a2, src, result, dst, ext, cast=cast, threads=threads)
    return result


def _image_shape(v: Any, name: str) -> tuple[int, int, int]:
    try:
        t = tuple(v)
    except TypeError:
        raise TypeError(f"{name} must be an (H, W, C) tuple, got {type(v).__name__}") from None
    if len(t) != 3 or any(
        isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1 for k in t
    ):
        raise ValueError(f"{name} must be an (H, W, C) tuple of positive ints, got {v!r}")
    return int(t[0]), int(t[1]), int(t[2])


def _order(order: Any) -> str:
    if order not in ("HWC", "CHW"):
        raise ValueError(f"order must be 'HWC' or 'CHW'; got {order!r}")
    return order


def reshape_slices(
    t: Any,
    *,
    src: Sequence[int],
    dst: Sequence[int],
    order: str = "HWC",
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """An MPS reshape on slice-layout data: images of shape ``src`` -> ``dst`` (both (H, W, C)).

    Each image is read out of its slices, flattened in ``order`` (``"HWC"``: channels
    fastest, MPS's reshape; ``"CHW"``: a PyTorch ``view``), reshaped to ``dst`` in the same
    order and sliced again. Equals ``image_slices(image_from_slices(t, channels=C1,
    layout="NHWC").reshape(N, H2, W2, C2), layout="NHWC")`` for ``order="HWC"``.
    """
    h1, w1, c1 = _image_shape(src, "src")
    h2, w2, c2 = _image_shape(dst, "dst")
    o = _order(order)
    if h1 * w1 * c1 != h2 * w2 * c2:
        raise ValueError(f"src={src!r} and dst={dst!r} must hold the same number of values")
    a = engine.as_input(t, "t")
    if a.ndim != 4 or a.shape[1:3] != (h1, w1):
        raise ValueError(f"t must be (N*S, {h1}, {w1}, P) for src={src!r}, got shape {a.shape}")
    lay = "NHWC" if o == "HWC" else "NCHW"
    img = image_from_slices(a, channels=c1, layout=lay, threads=threads)
    n = img.shape[0]
    img = img.reshape((n, h2, w2, c2) if o == "HWC" else (n, c2, h2, w2))
    return image_slices(img, layout=lay, dtype=dtype, out=out, threads=threads)


def reshape_gather(src: Sequence[int], dst: Sequence[int], *, order: str = "HWC") -> np.ndarray:
    """Index map of an MPS reshape for a custom Metal kernel.

    Returns an int64 array of the destination slice shape ``(S2, H2, W2, P2)``: for each
    destination component, the flat index into the source slice array ``(S1, H1, W1, P1)``,
    or -1 for padding. ``reshape_slices(t, ...)`` equals
    ``np.where(g >= 0, t.reshape(-1)[g], 0)`` for ``g = reshape_gather(...)`` (one image).
    """
    h1, w1, c1 = _image_shape(src, "src")
    h2, w2, c2 = _image_shape(dst, "dst")
    o = _order(order)
    if h1 * w1 * c1 != h2 * w2 * c2:
        raise ValueError(f"src={src!r} and dst={dst!r} must hold the same number of values")
    _s1, p1 = slice_geometry(c1)
    s2, p2 = slice_geometry(c2)
    s, y, x, k = np.meshgrid(
        np.arange(s2), np.arange(h2), np.arange(w2), np.arange(p2), indexing="ij"
    )
    c = s * p2 + k if p2 == 4 else k
    valid = c < c2
    n = (y * w2 + x) * c2 + c if o == "HWC" else c * (h2 * w2) + y * w2 + x
    if o == "HWC":
        cs, xs, ys = n % c1, (n // c1) % w1, n // (c1 * w1)
    else:
        cs, ys, xs = n // (h1 * w1), (n // w1) % h1, n % w1
    if p1 == 4:
        flat = (((cs // 4) * h1 + ys) * w1 + xs) * 4 + cs % 4
    else:
        flat = (ys * w1 + xs) * c1 + cs
    return np.where(valid, flat, -1).astype(np.int64)
