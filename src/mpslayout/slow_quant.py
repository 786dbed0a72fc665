"""Slow twins of :mod:`mpslayout.quantize`: element loops from docs/layouts.md section 10
(``w = q/255*(max - min) + min`` per output channel; ``w = lut[q]``), on OHWI weights
whose output channel is axis 0."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["dequantize_weights", "from_onnx", "quantize_linear"]


def quantize_linear(w: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(w, np.float64)
    n = a.shape[0]
    flat = a.reshape(n, -1)
    q = np.zeros(flat.shape, np.uint8)
    ranges = np.zeros((n, 2), np.float32)
    for o in range(n):
        lo, hi = np.float32(min(flat[o])), np.float32(max(flat[o]))
        ranges[o] = lo, hi
        span = float(hi) - float(lo)
        for j in range(flat.shape[1]):
            if span > 0:
                step = round((flat[o, j] - float(lo)) / span * 255)  # half to even, as rint
                q[o, j] = min(255, max(0, step))
    return q.reshape(a.shape), ranges


def dequantize_weights(q: Any, ranges: Any) -> np.ndarray:
    qa = np.asarray(q)
    r = np.asarray(ranges, np.float32)
    flat = qa.reshape(qa.shape[0], -1)
    out = np.zeros(flat.shape, np.float32)
    for o in range(flat.shape[0]):
        lo, hi = r[o, 0], r[o, 1]
        for j in range(flat.shape[1]):
            unorm = np.float32(flat[o, j]) / np.float32(255)
            out[o, j] = unorm * (hi - lo) + lo
    return out.reshape(qa.shape)


def from_onnx(q: Any, scale: Any, zero_point: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (axis 0) or per-tensor scale / zero point, uint8 or int8 q."""
    qa = np.asarray(q)
    n = qa.shape[0]
    s = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (n,))
    zp = np.broadcast_to(np.asarray(zero_point, np.float64).reshape(-1), (n,))
    lowest = -128 if qa.dtype == np.int8 else 0
    flat = qa.reshape(n, -1)
    u = np.zeros(flat.shape, np.uint8)
    ranges = np.zeros((n, 2), np.float32)
    for o in range(n):
        ranges[o] = (lowest - zp[o]) * s[o], (lowest + 255 - zp[o]) * s[o]
        for j in range(flat.shape[1]):
            u[o, j] = int(flat[o, j]) - lowest
    return u.reshape(qa.shape), ranges
