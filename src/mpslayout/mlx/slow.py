"""Obviously-correct slow twins of :mod:`mpslayout.mlx.rules`: index loops written straight
from MLX's formulas (docs/mlx.md), walking the destination and computing each source index.

Elements move as unsigned integers of their width (every bit survives); ``dtype=`` is
applied with ``astype`` at the end. Gate orders are spelled out again here, on purpose, as
letters. Nothing from the rest of the package is imported.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "conv_transpose_weights",
    "conv_transpose_weights_to_torch",
    "conv_weights",
    "conv_weights_to_torch",
    "depthwise_weights",
    "gru_params",
    "gru_params_to_torch",
    "linear_weights",
    "linear_weights_to_torch",
    "lstm_params",
    "lstm_params_to_torch",
    "rnn_params",
    "rnn_params_to_torch",
]

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _dt(dtype: Any) -> np.dtype:
    if isinstance(dtype, str) and dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _fill(src: Any, dst_shape: Sequence[int], index: Any, dtype: Any) -> np.ndarray:
    """dst[d] = src[index(d)] for every d, bits moved, then cast to dtype."""
    a = np.asarray(src)
    if not a.dtype.isnative and a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder("="))
    bits = a.view(_UINT[a.dtype.itemsize])
    dst = np.zeros(tuple(dst_shape), bits.dtype)
    for d in itertools.product(*(range(n) for n in dst_shape)):
        dst[d] = bits[index(d)]
    res = dst.view(a.dtype)
    if dtype is not None and _dt(dtype) != a.dtype:
        with np.errstate(all="ignore"):
            res = res.astype(_dt(dtype))
    return np.ascontiguousarray(res)


def conv_weights(w: Any, *, layout: str = "OIHW", dtype: Any = None) -> np.ndarray:
    """dst[o, *k, i] = w[o, i, *k] (OI...) or w[*k, i, o] (...IO)."""
    a = np.asarray(w)
    if layout.startswith("OI"):
        o, i, *ks = a.shape
        return _fill(a, (o, *ks, i), lambda d: (d[0], d[-1], *d[1:-1]), dtype)
    *ks, i, o = a.shape
    return _fill(a, (o, *ks, i), lambda d: (*d[1:-1], d[-1], d[0]), dtype)


def conv_weights_to_torch(w: Any, *, dtype: Any = None) -> np.ndarray:
    """dst[o, i, *k] = w[o, *k, i]."""
    a = np.asarray(w)
    o, *ks, i = a.shape
    return _fill(a, (o, i, *ks), lambda d: (d[0], *d[2:], d[1]), dtype)


def depthwise_weights(k: Any, *, layout: str = "HWCM", dtype: Any = None) -> np.ndarray:
    """dst[c*M + m, *k, 0] = k[*k, c, m]."""
    a = np.asarray(k)
    *ks, c, m = a.shape
    return _fill(a, (c * m, *ks, 1), lambda d: (*d[1:-1], d[0] // m, d[0] % m), dtype)


def conv_transpose_weights(w: Any, *, layout: str = "IOHW", groups: int = 1,
                           dtype: Any = None) -> np.ndarray:
    """dst[o, *k, i] = w[i, o, *k] (IO...) or w[*k, o, i] (...OI); no flip."""
    if groups != 1:
        raise ValueError("groups must be 1")
    a = np.asarray(w)
    if layout.startswith("IO"):
        i, o, *ks = a.shape
        return _fill(a, (o, *ks, i), lambda d: (d[-1], d[0], *d[1:-1]), dtype)
    *ks, o, i = a.shape
    return _fill(a, (o, *ks, i), lambda d: (*d[1:-1], d[0], d[-1]), dtype)


def conv_transpose_weights_to_torch(w: Any, *, dtype: Any = None) -> np.ndarray:
    """dst[i, o, *k] = w[o, *k, i]."""
    a = np.asarray(w)
    o, *ks, i = a.shape
    return _fill(a, (i, o, *ks), lambda d: (d[1], *d[2:], d[0]), dtype)


def _ravel(idx: Sequence[int], shape: Sequence[int]) -> int:
    n = 0
    for v, s in zip(idx, shape):
        n = n * s + v
    return n


def _unravel(n: int, shape: Sequence[int]) -> list[int]:
    out = []
    for s in reversed(shape):
        out.append(n % s)
        n //= s
    return out[::-1]


def linear_weights(w: Any, *, layout: str = "OI", input_shape: Sequence[int] | None = None,
                   flatten: str = "CHW", dtype: Any = None) -> np.ndarray:
    """dst[o, n] = w[o, src(n)] (IO: w[src(n), o]) where, for input_shape (C, *S) and
    flatten CHW, column n = ravel(*s, c) of MLX's channels-last map is torch's column
    ravel(c, *s)."""
    a = np.asarray(w)
    o, n = a.shape if layout == "OI" else a.shape[::-1]

    def col(j: int) -> int:
        if input_shape is None or flatten == "HWC" or len(input_shape) == 1:
            return j
        c, sp = input_shape[0], list(input_shape[1:])
        *s, ch = _unravel(j, [*sp, c])
        return _ravel([ch, *s], [c, *sp])

    if layout == "OI":
        return _fill(a, (o, n), lambda d: (d[0], col(d[1])), dtype)
    return _fill(a, (o, n), lambda d: (col(d[1]), d[0]), dtype)


def linear_weights_to_torch(w: Any, *, input_shape: Sequence[int] | None = None,
                            dtype: Any = None) -> np.ndarray:
    """dst[o, ravel(c, *s)] = w[o, ravel(*s, c)]."""
    a = np.asarray(w)
    o, n = a.shape

    def col(j: int) -> int:
        if input_shape is None or len(input_shape) == 1:
            return j
        c, sp = input_shape[0], list(input_shape[1:])
        ch, *s = _unravel(j, [c, *sp])
        return _ravel([*s, ch], [*sp, c])

    return _fill(a, (o, n), lambda d: (d[0], col(d[1])), dtype)


# the letters of each source's packed gate blocks, and MLX's order
_LSTM_SRC = {"torch": "ifgo", "onnx": "iofg", "keras": "ifgo"}  # ONNX i o f c; Keras i f c o
_GRU_SRC = {"torch": "rzn", "onnx": "zrn", "keras": "zrn"}  # ONNX/Keras z r h


def _packed_rows(a: np.ndarray, src: str, dst: str, h: int, keras: bool,
                 dtype: Any) -> np.ndarray:
    """dst[k*H + j, x] = a[src.index(dst[k])*H + j, x] (Keras: a[x, ...])."""
    n_in = a.shape[0] if keras else a.shape[1]

    def index(d: tuple[int, ...]) -> tuple[int, int]:
        row = src.index(dst[d[0] // h]) * h + d[0] % h
        return (d[1], row) if keras else (row, d[1])

    return _fill(a, (len(dst) * h, n_in), index, dtype)


def _sum(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    out = np.zeros(parts[0].shape, np.float64)
    for j in range(out.shape[0]):
        total = 0.0  # a Python float: float64, one rounding at the end
        for p in parts:
            total += float(p[j])
        out[j] = total
    return out.astype(parts[0].dtype if dtype is None else _dt(dtype))


def _vec_rows(v: np.ndarray, src: str, dst: str, h: int) -> np.ndarray:
    out = np.zeros(len(dst) * h, v.dtype)
    for k in range(len(dst)):
        for j in range(h):
            out[k * h + j] = v[src.index(dst[k]) * h + j]
    return out


def _cell(W: Any, R: Any, b_ih: Any, b_hh: Any, src_order: str, dst: str, layout: str,
          direction: int, dtype: Any) -> tuple[dict[str, np.ndarray], list[np.ndarray], int]:
    w, r = np.asarray(W), np.asarray(R)
    biases = []
    if layout == "onnx":
        w, r = w[direction], r[direction]
        h = r.shape[1]
        if b_ih is not None:
            b = np.asarray(b_ih)[direction]
            biases = [b[:len(dst) * h], b[len(dst) * h:]]
    else:
        h = r.shape[0] if layout == "keras" else r.shape[1]
        if b_ih is not None and np.ndim(b_ih) == 2:
            biases = [np.asarray(b_ih)[0], np.asarray(b_ih)[1]]
        else:
            biases = [np.asarray(b) for b in (b_ih, b_hh) if b is not None]
    keras = layout == "keras"
    res = {"Wx": _packed_rows(w, src_order, dst, h, keras, dtype),
           "Wh": _packed_rows(r, src_order, dst, h, keras, dtype)}
    return res, [_vec_rows(b, src_order, dst, h) for b in biases], h


def lstm_params(W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None, *,
                layout: str = "torch", direction: int = 0,
                dtype: Any = None) -> dict[str, np.ndarray]:
    res, biases, _ = _cell(W_ih, W_hh, b_ih, b_hh, _LSTM_SRC[layout], "ifgo", layout,
                           direction, dtype)
    if len(biases) == 1:
        res["bias"] = _fill(biases[0], biases[0].shape, lambda d: d, dtype)
    elif biases:
        res["bias"] = _sum(biases, dtype)
    return res


def gru_params(W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None, *,
               layout: str = "torch", direction: int = 0, dtype: Any = None,
               linear_before_reset: bool | None = None,
               reset_after: bool | None = None) -> dict[str, np.ndarray]:
    res, biases, h = _cell(W_ih, W_hh, b_ih, b_hh, _GRU_SRC[layout], "rzn", layout,
                           direction, dtype)
    if len(biases) == 2:
        bi, bh = biases
        rz = np.array([bh[j] if j < 2 * h else 0 for j in range(3 * h)], bh.dtype)
        res["b"] = _sum([bi, rz], dtype)
        res["bhn"] = _fill(bh, (h,), lambda d: (2 * h + d[0],), dtype)
    elif len(biases) == 1:
        res["b"] = _same(biases[0], dtype)
        res["bhn"] = _same(np.zeros(h, biases[0].dtype), dtype)
    return res


def rnn_params(W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None, *,
               layout: str = "torch", direction: int = 0,
               dtype: Any = None) -> dict[str, np.ndarray]:
    res, biases, _ = _cell(W_ih, W_hh, b_ih, b_hh, "x", "x", layout, direction, dtype)
    out = {"Wxh": res["Wx"], "Whh": res["Wh"]}
    if len(biases) == 1:
        out["bias"] = _fill(biases[0], biases[0].shape, lambda d: d, dtype)
    elif biases:
        out["bias"] = _sum(biases, dtype)
    return out


def _same(x: Any, dtype: Any) -> np.ndarray:
    a = np.asarray(x)
    return _fill(a, a.shape, lambda d: d, dtype)


def lstm_params_to_torch(p: dict[str, Any], *, dtype: Any = None) -> dict[str, np.ndarray]:
    res = {"weight_ih": _same(p["Wx"], dtype), "weight_hh": _same(p["Wh"], dtype)}
    if "bias" in p:
        res["bias_ih"] = _same(p["bias"], dtype)
        res["bias_hh"] = np.zeros(res["bias_ih"].shape, res["bias_ih"].dtype)
    return res


def gru_params_to_torch(p: dict[str, Any], *, dtype: Any = None) -> dict[str, np.ndarray]:
    res = {"weight_ih": _same(p["Wx"], dtype), "weight_hh": _same(p["Wh"], dtype)}
    if "b" in p:
        b = _same(p["b"], dtype)
        h = b.shape[0] // 3
        bhn = _same(p["bhn"], dtype)
        res["bias_ih"] = b
        hh = np.zeros(3 * h, b.dtype)
        for j in range(h):
            hh[2 * h + j] = bhn[j]
        res["bias_hh"] = hh
    return res


def rnn_params_to_torch(p: dict[str, Any], *, dtype: Any = None) -> dict[str, np.ndarray]:
    res = {"weight_ih": _same(p["Wxh"], dtype), "weight_hh": _same(p["Whh"], dtype)}
    if "bias" in p:
        res["bias_ih"] = _same(p["bias"], dtype)
        res["bias_hh"] = np.zeros(res["bias_ih"].shape, res["bias_ih"].dtype)
    return res
