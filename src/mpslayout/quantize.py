"""8-bit weights for ``MPSCNNConvolutionDataSource`` (docs/layouts.md, section 10).

MPS reads ``MPSDataTypeUInt8`` weights in one of two forms (``MPSCNNConvolution.h``):

- linear (``rangesForUInt8Kernel``): one ``(min, max)`` float pair per output channel and
  ``w = q / 255 * (max - min) + min`` (float32);
- lookup table (``lookupTableForUInt8Kernel``): 256 floats for the whole kernel, ``w = lut[q]``.

:func:`quantize_weights` makes either form from float weights; :func:`from_onnx` maps
weights that are already 8-bit (ONNX ``DequantizeLinear`` / ``ConvInteger`` /
``MatMulInteger``: ``w = (q - zero_point) * scale``) to the linear form without
requantizing; :func:`dequantize_weights` is MPS's formula, for checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import engine

__all__ = ["MODES", "dequantize_weights", "from_onnx", "quantize_weights"]

MODES = ("linear", "lut")
_F4 = np.dtype(np.float32)
_F8 = np.dtype(np.float64)


def _floats(w: Any, name: str) -> np.ndarray:
    a = engine.as_input(w, name)
    if a.dtype.kind != "f" and not engine._is_bf16(a.dtype):
        raise TypeError(f"{name} has dtype {a.dtype}; quantize_weights takes float weights")
    if a.ndim < 1 or a.shape[0] == 0 or a.size == 0:
        raise ValueError(f"{name} must have at least one output channel and one weight per "
                         f"channel, got shape {a.shape}")
    v = a.astype(_F8)
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or infinity: an 8-bit range cannot represent it")
    return v


def _axis(axis: Any, ndim: int) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for {ndim}-D weights")
    return int(axis) % ndim


def quantize_weights(w: Any, *, mode: str = "linear", axis: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Quantize float weights (OHWI as MPS reads them; ``axis`` is the output channel).

    ``mode="linear"``: returns ``(q, ranges)``, ``q`` uint8 of ``w``'s shape and ``ranges``
    float32 ``(O, 2)`` = per channel ``(min, max)`` of ``w`` rounded to float32, and
    ``q = np.rint((w - lo) / (hi - lo) * 255)`` clipped to [0, 255] (0 where hi == lo),
    all in float64 with lo, hi the float32 range: the nearest step of MPS's grid, so
    ``|dequantize - w| <= (hi - lo) / 510`` plus float32 rounding.

    ``mode="lut"``: returns ``(q, lut)``, ``lut`` float32 ``(256,)`` sorted. When ``w`` holds
    at most 256 distinct float32 values the table is those values (padded with the last)
    and the mapping is exact; otherwise the table holds the 256 quantiles at
    ``(k + 0.5) / 256`` and ``q`` is the index of the nearest entry (ties to the upper).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    v = _floats(w, "w")
    ax = _axis(axis, v.ndim)
    if mode == "lut":
        return _lut(v)
    moved = np.moveaxis(v, ax, 0).reshape(v.shape[ax], -1)
    lo = moved.min(axis=1).astype(_F4)
    hi = moved.max(axis=1).astype(_F4)
    lo64, hi64 = lo.astype(_F8)[:, None], hi.astype(_F8)[:, None]
    span = hi64 - lo64
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(span > 0, np.rint((moved - lo64) / np.where(span > 0, span, 1) * 255), 0)
    q = np.clip(q, 0, 255).astype(np.uint8)
    shape = (v.shape[ax], *np.delete(v.shape, ax))
    q = np.ascontiguousarray(np.moveaxis(q.reshape(shape), 0, ax))
    return q, np.stack([lo, hi], axis=1)


def _lut(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = v.astype(_F4)
    uniq = np.unique(f)
    if uniq.size <= 256:
        table = np.concatenate([uniq, np.full(256 - uniq.size, uniq[-1], _F4)])
        return np.searchsorted(uniq, f).astype(np.uint8), table
    table = np.quantile(f.astype(_F8).ravel(), (np.arange(256) + 0.5) / 256).astype(_F4)
    table = np.sort(table)
    mid = (table[:-1].astype(_F8) + table[1:].astype(_F8)) / 2
    q = np.searchsorted(mid, f.astype(_F8), side="right").astype(np.uint8)
    return q, table


def dequantize_weights(q: Any, *, ranges: Any = None, lut: Any = None,
                       axis: int = 0) -> np.ndarray:
    """MPS's reading of uint8 weights, float32: ``lut[q]``, or per output channel o (along
    ``axis``) ``np.float32(q / np.float32(255)) * (max - min) + min`` with every operation
    in float32, as ``rangesForUInt8Kernel``'s comment writes it."""
    qa = np.asarray(q)
    if qa.dtype != np.uint8:
        raise TypeError(f"q must be uint8, got {qa.dtype}")
    if (ranges is None) == (lut is None):
        raise ValueError("give exactly one of ranges= (linear) and lut= (lookup table)")
    if lut is not None:
        t = np.asarray(lut, _F4)
        if t.shape != (256,):
            raise ValueError(f"lut must have 256 entries, got shape {t.shape}")
        return t[qa]
    r = np.asarray(ranges, _F4)
    ax = _axis(axis, qa.ndim)
    if r.shape != (qa.shape[ax], 2):
        raise ValueError(f"ranges must be ({qa.shape[ax]}, 2) (min, max per output channel), "
                         f"got shape {r.shape}")
    shape = [1] * qa.ndim
    shape[ax] = -1
    lo, hi = r[:, 0].reshape(shape), r[:, 1].reshape(shape)
    unorm = qa.astype(_F4) / _F4.type(255.0)
    return (unorm * (hi - lo) + lo).astype(_F4)


def from_onnx(q: Any, scale: Any, zero_point: Any = None, *, axis: int | None = None,
              out_axis: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """ONNX 8-bit weights ``w = (q - zero_point) * scale`` as MPS linear uint8 weights.

    ``q`` uint8 or int8 (any layout; ``out_axis`` is its output-channel axis), ``scale`` and
    ``zero_point`` scalars (per tensor) or vectors along ``axis`` (ONNX's per-axis form).
    Returns ``(u, ranges, exact)``: ``u = q`` (uint8) or ``q ^ 0x80`` (int8, i.e. q + 128),
    and per output channel ``min = (lowest - zp) * scale``, ``max = (lowest + 255 - zp) *
    scale`` with lowest 0 (uint8) or -128 (int8), computed in float64 and rounded to
    float32: ``u/255*(max - min) + min == (q - zp)*scale`` in exact arithmetic.
    ``exact`` is False when the scales run along another axis than the output channels
    (then the weights are requantized from their float values, per output channel).
    """
    qa = np.asarray(q)
    if qa.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise TypeError(f"q must be uint8 or int8, got {qa.dtype}")
    oa = _axis(out_axis, qa.ndim)
    s = np.asarray(scale, _F8).reshape(-1)
    zp = np.zeros(1) if zero_point is None else np.asarray(zero_point, _F8).reshape(-1)
    n_out = qa.shape[oa]
    per_tensor = s.size == 1 and zp.size == 1
    if not per_tensor:
        ax = None if axis is None else _axis(axis, qa.ndim)
        if ax != oa or s.size != n_out or zp.size not in (1, n_out):
            w = (qa.astype(_F8) - _along(zp, ax, qa.ndim)) * _along(s, ax, qa.ndim)
            u, ranges = quantize_weights(w, axis=oa)
            return u, ranges, False
    lowest = -128.0 if qa.dtype == np.int8 else 0.0
    s_o = np.broadcast_to(s, (n_out,))
    zp_o = np.broadcast_to(zp, (n_out,))
    ranges = np.stack([(lowest - zp_o) * s_o, (lowest + 255 - zp_o) * s_o], axis=1).astype(_F4)
    u = qa.view(np.uint8) ^ np.uint8(0x80) if qa.dtype == np.int8 else qa.copy()
    return np.ascontiguousarray(u), ranges, True


def _along(v: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    if v.size == 1 or axis is None:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)
