"""The tolerance model (docs/verify.md): what rounding explains of a difference between
the reference executor and the oracle, element by element.

A compared value passes when ``|ref - oracle| <= atol + rtol*|oracle| + explained``, with

``explained = 1.01 * (B(|d_in|) + k*u32*M + u_w*M_w + Q + s*u_s*|y|)``

- ``B(|d_in|)``: how far the kernel's result can move when its inputs move by ``d_in``,
  the difference between the input the reference was fed and the oracle's value of it
  (for the isolated check, the rounding to the image type; for the chained check,
  everything upstream). For a convolution that is the convolution of ``|d_in|`` with
  ``|w|``; for a neuron its slope; each kernel of the table gives its own.
- ``k*u32*M``: the oracle's float32 rounding of a sum of ``k`` terms whose absolute
  values add up to ``M`` (the kernel run on ``|x|`` with ``|w|``, plus ``|b|``): the
  classical worst-case bound ``gamma_k = k*u`` on recursive summation, ``u32 = 2^-24``.
- ``u_w*M_w``: float16 weights (``u_w = 2^-11``) against the oracle's float32 ones; also
  for 8-bit weights, which MPS dequantizes to half precision (MPSCNNConvolution.h).
- ``Q``: weights requantized to 8 bits from floats: the kernel run on ``|x|`` with, for
  each weight, a bound ``e_o`` of its output channel on how far MPS's weight lies from
  the model's (:mod:`.quant_bounds`: ``(max - min)/510`` plus float32 rounding for linear
  ranges, the largest distance of a model weight to the table for a lookup table). 0 for
  8-bit source weights mapped exactly.
- ``s*u_s*|y|``: the reference's own ``s`` roundings to the image type (``u_s`` = 2^-11
  for float16, 2^-24 for float32), each relative to the value rounded.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .report import Check

__all__ = ["U16", "U32", "check", "unit"]

U16 = 2.0**-11  # unit roundoff of float16
U32 = 2.0**-24  # unit roundoff of float32
SAFETY = 1.01  # the bounds are computed in float32/float64 themselves


def unit(dtype: Any) -> float:
    return U16 if np.dtype(dtype) == np.float16 else U32


def check(ref: np.ndarray, oracle: np.ndarray, atol: float, rtol: float,
          explained: np.ndarray | float, part: np.ndarray | None = None) -> Check:
    """Compare ``ref`` with ``oracle`` (same shape) under the tolerance above. ``part``: the
    share of ``explained`` one term makes (requantized weights); the Check then says what
    fraction of the tolerance it is at the element closest to failing."""
    ort = oracle.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(ref - ort)
        same = (ref == ort) | (np.isnan(ref) & np.isnan(ort))
        diff = np.where(same, 0.0, diff)
        extra = np.where(np.isnan(explained), np.inf, explained)
        tol = np.broadcast_to(atol + rtol * np.abs(ort) + SAFETY * extra, diff.shape)
        ok = bool(np.all(diff <= tol))
        ratio = np.where(diff == 0, 0.0, diff / np.where(tol > 0, tol, np.inf))
        ratio = np.where((diff > 0) & (tol == 0), np.inf, ratio)
        ratio = np.where(np.isnan(diff), np.inf, ratio)
        worst = float(np.max(ratio)) if ratio.size else 0.0
        max_abs = float(np.max(diff)) if diff.size else 0.0
        scale = float(np.nanmax(np.abs(ort))) if ort.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    share = None
    if part is not None and ratio.size:
        at = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        p = float(np.broadcast_to(part, diff.shape)[at]) * SAFETY
        share = p / float(tol[at]) if tol[at] > 0 and math.isfinite(p) else 0.0
    return Check(max_abs, max_rel, worst, ok, share)
