"""Slow twin of :mod:`mpslayout.mlx.quantize`: one group and one element at a time,
straight from MLX's CPU formula (mlx/backend/cpu/quantized.cpp, ``quantize``) with float32
scalars, Python's ``round`` (half to even) and a Python integer as each row's bit stream."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["affine_dequantize", "affine_quantize"]

F32 = np.float32


def affine_quantize(w: Any, group_size: int, bits: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(w)
    if a.dtype == np.float64:
        a = a.astype(F32)
    rows = a.reshape(-1, a.shape[-1])
    n_groups = rows.shape[1] // group_size
    n_bins = F32(2**bits - 1)
    wq = np.zeros((rows.shape[0], rows.shape[1] * bits // 32), np.uint32)
    scales = np.zeros((rows.shape[0], n_groups), F32)
    biases = np.zeros((rows.shape[0], n_groups), F32)
    for r in range(rows.shape[0]):
        stream = 0
        for gi in range(n_groups):
            group = [F32(rows[r, gi * group_size + j]) for j in range(group_size)]
            w_max, w_min = F32(-np.inf), F32(np.inf)
            for x in group:
                w_max = x if x > w_max else w_max
                w_min = x if x < w_min else w_min
            if bits == 1:
                scale = max(F32(w_max - w_min), F32(1e-7))
                bias = w_min
            else:
                scale = max(F32(F32(w_max - w_min) / n_bins), F32(1e-7))
                if abs(w_min) > abs(w_max):
                    edge = w_min
                else:
                    edge, scale = w_max, -scale
                q0 = round(float(F32(edge / scale)))
                if q0 != 0:
                    scale, bias = F32(edge / F32(q0)), edge
                else:
                    bias = F32(0)
            scales[r, gi], biases[r, gi] = scale, bias
            for j, x in enumerate(group):
                q = round(float(F32(F32(x - bias) / scale)))
                q = min(max(q, 0), int(n_bins))
                stream |= q << ((gi * group_size + j) * bits)
        for k in range(wq.shape[1]):
            wq[r, k] = (stream >> (32 * k)) & 0xFFFFFFFF
    lead = a.shape[:-1]
    return (wq.reshape(*lead, -1), scales.astype(a.dtype).reshape(*lead, -1),
            biases.astype(a.dtype).reshape(*lead, -1))


def affine_dequantize(wq: Any, scales: Any, biases: Any, group_size: int, bits: int
                      ) -> np.ndarray:
    q = np.asarray(wq)
    s = np.asarray(scales)
    b = np.asarray(biases)
    rows = q.reshape(-1, q.shape[-1])
    s2, b2 = s.reshape(rows.shape[0], -1), b.reshape(rows.shape[0], -1)
    n = rows.shape[1] * 32 // bits
    out = np.zeros((rows.shape[0], n), s.dtype)
    dt = s.dtype.type
    for r in range(rows.shape[0]):
        stream = 0
        for k in range(rows.shape[1]):
            stream |= int(rows[r, k]) << (32 * k)
        for j in range(n):
            value = (stream >> (j * bits)) & (2**bits - 1)
            gi = j // group_size
            out[r, j] = dt(dt(value) * s2[r, gi]) + b2[r, gi]
    return out.reshape(*q.shape[:-1], n)
