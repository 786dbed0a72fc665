"""MLX's affine quantization (``mode="affine"``), computed with numpy: no mlx import.

:func:`affine_quantize` gives the three arrays ``nn.QuantizedLinear`` and
``nn.QuantizedEmbedding`` load as ``weight``, ``scales`` and ``biases``; each is
bit-identical to ``mx.quantize(w, group_size, bits)`` on MLX's CPU (checked against mlx
0.32.4 in tests/test_mlx_quantize.py). :func:`affine_dequantize` equals ``mx.dequantize``.

The algorithm (mlx/backend/cpu/quantized.cpp, ``quantize``), per group of ``group_size``
consecutive elements of the last axis, all arithmetic in float32 whatever the input dtype::

    w_max, w_min = max(group), min(group)
    scale = max((w_max - w_min) / (2**bits - 1), 1e-7)
    if |w_min| > |w_max|: edge = w_min                    # the end farther from zero
    else:                 edge = w_max; scale = -scale
    q0 = rint(edge / scale)                               # half to even
    if q0 != 0: scale = edge / q0; bias = edge            # the edge is exact: q = 0
    else:       bias = 0
    q = clip(rint((w - bias) / scale), 0, 2**bits - 1)    # with the float32 scale
    scales, biases = scale, bias rounded to w's dtype

(``bits == 1``: ``scale = max(w_max - w_min, 1e-7)``, ``bias = w_min``.) The ``q`` of one
row form a little-endian bit stream: element ``j`` takes bits ``j*bits .. j*bits+bits-1``,
and bit ``i`` of the stream is bit ``i % 32`` of uint32 word ``i // 32`` (for 3, 5 and 6
bits an element may straddle two words). Dequantization is ``q * scales + biases`` in the
scales' dtype, one rounding per operation (no fused multiply-add).

Versions. Checked bit for bit against mlx 0.32.4 (Python 3.11) and mlx 0.29.3 (Python
3.9), which has no 1-bit mode (``bits=1`` needs a later MLX). An older mlx/ops.cpp (whose
``affine_quantize`` took only 2, 4 and 8 bits) computed ``mx.quantize`` on the CPU with
array ops in ``w``'s own dtype (its ``fallback``): the same operations for float32 input,
possibly different in the last bit of a float16 / bfloat16 scale. MLX's Metal kernel
(mlx/backend/metal/kernels/quantized.h, ``affine_quantize``, as shipped in 0.32.4) starts
its running maximum at 0, so on the GPU a group of only negative values gets a range
reaching up to 0; this module matches the CPU, which starts at -inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BITS", "GROUP_SIZES", "affine_dequantize", "affine_quantize"]

BITS = (1, 2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
_F4 = np.dtype(np.float32)
_EPS = np.float32(1e-7)


def _is_bf16(dt: np.dtype) -> bool:
    return dt.itemsize == 2 and dt.name == "bfloat16"


def _check_params(group_size: Any, bits: Any) -> tuple[int, int]:
    for name, value, allowed in (("group_size", group_size, GROUP_SIZES),
                                 ("bits", bits, BITS)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if int(value) not in allowed:
            raise ValueError(f"{name}={value} is not supported by MLX's affine mode; "
                             f"use one of {', '.join(map(str, allowed))}")
    return int(group_size), int(bits)


def _weights(w: Any, group_size: int) -> np.ndarray:
    a = np.asarray(w)
    dt = a.dtype
    if dt == np.float64:
        a = a.astype(_F4)  # as mx.array(w) stores a float64 numpy array
    elif dt not in (np.float32, np.float16) and not _is_bf16(dt):
        raise TypeError(f"w has dtype {dt}; MLX quantizes float32, float16 or bfloat16 "
                        "weights")
    if a.ndim < 2:
        raise ValueError(f"w must have at least 2 dimensions (as mx.quantize), got shape "
                         f"{a.shape}")
    if a.shape[-1] % group_size:
        raise ValueError(f"w's last dimension {a.shape[-1]} is not divisible by "
                         f"group_size={group_size}")
    return a


def affine_quantize(w: Any, group_size: int = 64, bits: int = 4
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(wq, scales, biases)`` of float weights ``w`` (groups along the last axis).

    Equals ``mx.quantize(w, group_size=group_size, bits=bits)`` (mode ``"affine"``) on
    MLX's CPU, bit for bit: ``wq`` is uint32 of shape ``(..., n * bits // 32)``, ``scales``
    and ``biases`` have ``w``'s dtype (float32, float16 or bfloat16; float64 is first
    rounded to float32, as ``mx.array`` does) and shape ``(..., n // group_size)``.
    ``nn.QuantizedLinear(I, O, bias, group_size, bits)`` loads them as ``weight``,
    ``scales`` and ``biases``. NaN and infinity are refused, and so is a group whose span
    ``max - min`` overflows float32 (MLX would store an infinite scale).
    """
    group_size, bits = _check_params(group_size, bits)
    a = _weights(w, group_size)
    lead, n = a.shape[:-1], a.shape[-1]
    g = a.astype(_F4).reshape(*lead, n // group_size, group_size)
    if not np.isfinite(g).all():
        raise ValueError("w holds NaN or infinity: an affine group cannot represent it")
    w_max = g.max(axis=-1, keepdims=True)
    w_min = g.min(axis=-1, keepdims=True)
    n_bins = np.float32((1 << bits) - 1)
    with np.errstate(over="ignore"):
        span = w_max - w_min
    if not np.isfinite(span).all():
        raise ValueError("w has a group whose span max - min overflows float32; MLX would "
                         "store an infinite scale for it")
    if bits == 1:
        scale = np.maximum(span, _EPS)
        bias = w_min
    else:
        scale = np.maximum(span / n_bins, _EPS)
        far_min = np.abs(w_min) > np.abs(w_max)
        scale = np.where(far_min, scale, -scale)
        edge = np.where(far_min, w_min, w_max)
        q0 = np.rint(edge / scale)
        moved = q0 != 0
        scale = np.where(moved, edge / np.where(moved, q0, np.float32(1)), scale)
        bias = np.where(moved, edge, np.float32(0))
    q = np.clip(np.rint((g - bias) / scale), 0, n_bins).astype(np.uint32)
    wq = _pack(q.reshape(*lead, n), bits)
    with np.errstate(over="ignore"):
        return wq, scale[..., 0].astype(a.dtype), bias[..., 0].astype(a.dtype)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Each row's values as one little-endian bit stream of uint32 words."""
    lead, n = q.shape[:-1], q.shape[-1]
    if 32 % bits == 0:
        return _or_shifted(q, 32 // bits, bits, np.uint32)
    # 3, 5, 6 bits: 8, 8 or 4 values fill 3, 5 or 3 whole bytes of the stream
    per = 4 if bits == 6 else 8
    packs = _or_shifted(q, per, bits, np.uint64)
    octets = packs.astype("<u8")[..., None].view(np.uint8)[..., : per * bits // 8]
    return np.ascontiguousarray(octets).reshape(*lead, n * bits // 8).view("<u4").astype(
        np.uint32)


def _or_shifted(q: np.ndarray, per: int, bits: int, dtype: type) -> np.ndarray:
    """Value ``k`` of each run of ``per`` values shifted left by ``k * bits``, or-ed."""
    out = q[..., 0::per].astype(dtype)
    for k in range(1, per):
        out |= q[..., k::per].astype(dtype) << dtype(k * bits)
    return out


def _unpack(wq: np.ndarray, bits: int) -> np.ndarray:
    lead, words = wq.shape[:-1], wq.shape[-1]
    n = words * 32 // bits
    if 32 % bits == 0:
        shifts = np.arange(0, 32, bits, dtype=np.uint32)
        q = (wq[..., None] >> shifts) & np.uint32((1 << bits) - 1)
        return q.reshape(*lead, n)
    octets = np.ascontiguousarray(wq.astype("<u4")).view(np.uint8)
    stream = np.unpackbits(octets, axis=-1, bitorder="little").reshape(*lead, n, bits)
    weights = np.uint32(1) << np.arange(bits, dtype=np.uint32)
    return (stream.astype(np.uint32) * weights).sum(axis=-1, dtype=np.uint32)


def affine_dequantize(wq: Any, scales: Any, biases: Any, group_size: int = 64,
                      bits: int = 4) -> np.ndarray:
    """The float weights ``q * scales + biases`` (in ``scales``' dtype) of packed ``wq``.

    Equals ``mx.dequantize(wq, scales, biases, group_size=group_size, bits=bits)`` (mode
    ``"affine"``) on MLX's CPU, bit for bit: shape ``(..., wq.shape[-1] * 32 // bits)``.
    """
    group_size, bits = _check_params(group_size, bits)
    q = np.asarray(wq)
    s = np.asarray(scales)
    b = np.asarray(biases)
    if q.dtype != np.uint32:
        raise TypeError(f"wq has dtype {q.dtype}; packed MLX weights are uint32")
    if s.dtype not in (np.float32, np.float16) and not _is_bf16(s.dtype):
        raise TypeError(f"scales has dtype {s.dtype}; MLX's scales are float32, float16 or "
                        "bfloat16")
    if b.dtype != s.dtype:
        raise TypeError(f"biases has dtype {b.dtype} but scales has {s.dtype}")
    if q.ndim < 2:
        raise ValueError(f"wq must have at least 2 dimensions, got shape {q.shape}")
    if s.shape != b.shape:
        raise ValueError(f"scales has shape {s.shape} but biases has {b.shape}")
    n = q.shape[-1] * 32 // bits
    want = (*q.shape[:-1], n // group_size)
    if (q.shape[-1] * 32) % (bits * group_size) or s.shape != want:
        raise ValueError(f"scales has shape {s.shape}; wq of shape {q.shape} with "
                         f"group_size={group_size}, bits={bits} needs {want}")
    values = _unpack(q, bits).reshape(*want, group_size).astype(s.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = values * s[..., None] + b[..., None]
    return out.reshape(*q.shape[:-1], n)
