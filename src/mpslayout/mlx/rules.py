"""MLX's weight layouts (docs/mlx.md), each rule one engine call per block.

Every function takes numpy-convertible arrays in a framework's layout (a layout string, as
the export's plan names them) and returns C-contiguous numpy arrays in the layout MLX's
``mlx.nn`` layers read, bit for bit the numpy one-liner its docstring gives. Permutations
and the optional ``dtype=`` cast (float32 -> float16 / bfloat16, float16 / bfloat16 ->
float32, float64 -> float32) run in the package's C++ engine; only bias sums are computed in
numpy (float64, rounded once). The ``..._to_torch`` functions are the inverses, for
:func:`mpslayout.mlx.to_torch`. mlx itself is never imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import engine

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

# framework layout -> (ndim, axes giving MLX's (O, *K, I)); PyTorch/ONNX and Keras
CONV_LAYOUTS = {"OIW": (0, 2, 1), "OIHW": (0, 2, 3, 1), "OIDHW": (0, 2, 3, 4, 1),
                "WIO": (2, 0, 1), "HWIO": (3, 0, 1, 2), "DHWIO": (4, 0, 1, 2, 3)}
# transposed convolutions: PyTorch/ONNX (I, O, *K), Keras (*K, O, I) -> MLX (O, *K, I)
CONV_TRANSPOSE_LAYOUTS = {"IOW": (1, 2, 0), "IOHW": (1, 2, 3, 0), "IODHW": (1, 2, 3, 4, 0),
                          "WOI": (1, 0, 2), "HWOI": (2, 0, 1, 3), "DHWOI": (3, 0, 1, 2, 4)}
DEPTHWISE_LAYOUTS = ("WCM", "HWCM")  # Keras DepthwiseConv1D / DepthwiseConv2D
RNN_SOURCES = ("torch", "onnx", "keras")
# for each MLX gate (in MLX's order), its block index in the source's packed tensors
LSTM_BLOCKS = {"torch": (0, 1, 2, 3), "onnx": (0, 2, 3, 1), "keras": (0, 1, 2, 3)}  # i f g o
GRU_BLOCKS = {"torch": (0, 1, 2), "onnx": (1, 0, 2), "keras": (1, 0, 2)}  # r z n
RNN_NAMES = ("Wxh", "Whh", "bias")  # mlx.nn.RNN's parameter names


def _array(x: Any, name: str) -> np.ndarray:
    a = engine.as_input(x, name)
    if not a.dtype.isnative and a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _choice(value: Any, options: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def _permute(a: np.ndarray, axes: Sequence[int], dtype: Any, out: np.ndarray | None = None,
             threads: int | None = None) -> np.ndarray:
    return engine.permute(a, tuple(axes), dtype=dtype, out=out, threads=threads)


def _rank(a: np.ndarray, layout: str, name: str) -> None:
    if a.ndim != len(layout):
        raise ValueError(f"{name} has shape {a.shape}, but layout={layout!r} is "
                         f"{len(layout)}-D")


def conv_weights(w: Any, *, layout: str = "OIHW", dtype: Any = None,
                 out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """``mlx.nn.Conv1d/2d/3d`` weight ``(O, *K, I/groups)``.

    ``layout`` ``"OIW"``/``"OIHW"``/``"OIDHW"`` (PyTorch, ONNX ``(O, I/g, *K)``): equals
    ``np.ascontiguousarray(np.moveaxis(w, 1, -1))``, e.g. ``w.transpose(0, 2, 3, 1)``.
    ``"WIO"``/``"HWIO"``/``"DHWIO"`` (Keras ``(*K, I/g, O)``):
    ``np.ascontiguousarray(np.moveaxis(w, -1, 0))``, e.g. ``w.transpose(3, 0, 1, 2)``.
    A PyTorch depthwise ``(C*M, 1, kH, kW)`` is an ordinary OIHW weight here.
    """
    _choice(layout, tuple(CONV_LAYOUTS), "layout")
    a = _array(w, "w")
    _rank(a, layout, "w")
    return _permute(a, CONV_LAYOUTS[layout], dtype, out, threads)


def conv_weights_to_torch(w: Any, *, dtype: Any = None) -> np.ndarray:
    """MLX ``(O, *K, I/g)`` back to PyTorch ``(O, I/g, *K)``:
    ``np.ascontiguousarray(np.moveaxis(w, -1, 1))``."""
    a = _array(w, "w")
    if a.ndim not in (3, 4, 5):
        raise ValueError(f"w has shape {a.shape}; an MLX convolution weight is 3-D to 5-D")
    return _permute(a, (0, a.ndim - 1, *range(1, a.ndim - 1)), dtype)


def depthwise_weights(k: Any, *, layout: str = "HWCM", dtype: Any = None,
                      out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """A Keras ``DepthwiseConv2D`` kernel ``(kH, kW, C, M)`` (``"HWCM"``; ``DepthwiseConv1D``
    ``"WCM"``) as the weight ``(C*M, kH, kW, 1)`` of ``mlx.nn.Conv2d(C, C*M, groups=C)``.

    MLX's grouped convolution gives output channel o to group ``o // M`` (as PyTorch), and
    Keras's depthwise output channel ``c*M + m`` reads input channel c, so equals
    ``np.ascontiguousarray(k.reshape(kH, kW, C*M, 1).transpose(2, 0, 1, 3))``
    (``"WCM"``: ``k.reshape(kW, C*M, 1).transpose(1, 0, 2)``).
    """
    _choice(layout, DEPTHWISE_LAYOUTS, "layout")
    a = _array(k, "k")
    _rank(a, layout, "k")
    *ks, c, m = a.shape
    *kst, s_c, s_m = a.strides
    a, out_dt, cast = engine.resolve_dtype(a, dtype, "k", mps=False)
    result = engine.prepare_out(out, (c * m, *ks, 1), out_dt, a)
    engine.run(a, result, (c, m, *ks), (s_c, s_m, *kst), cast=cast, threads=threads)
    return result


def conv_transpose_weights(w: Any, *, layout: str = "IOHW", groups: int = 1, dtype: Any = None,
                           out: np.ndarray | None = None,
                           threads: int | None = None) -> np.ndarray:
    """``mlx.nn.ConvTranspose1d/2d/3d`` weight ``(O, *K, I)``, with NO kernel flip: MLX's
    ``conv_transpose_general`` (mlx/ops.cpp) calls ``conv_general`` with ``flip=true``.

    ``"IOW"``/``"IOHW"``/``"IODHW"`` (PyTorch, ONNX ``(I, O, *K)``): equals
    ``np.ascontiguousarray(np.moveaxis(w, 0, -1))``, e.g. ``w.transpose(1, 2, 3, 0)``.
    ``"WOI"``/``"HWOI"``/``"DHWOI"`` (Keras ``(*K, O, I)``):
    ``np.ascontiguousarray(np.moveaxis(w, -2, 0))``, e.g. ``w.transpose(2, 0, 1, 3)``.
    ``groups`` must be 1: ``mx.conv_transpose1d/2d/3d`` document "Only the default
    ``groups=1`` is currently supported", so a grouped layer has no MLX weight; port it as
    ``groups`` ConvTranspose layers, group j taking ``w[j*I//g:(j+1)*I//g]`` and input
    channels ``j*I//g ...``, its outputs concatenated on the channel axis.
    """
    _choice(layout, tuple(CONV_TRANSPOSE_LAYOUTS), "layout")
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups != 1:
        raise ValueError(
            f"groups={groups}: mx.conv_transpose1d/2d/3d support only groups=1 (their "
            "docstring: 'Only the default groups=1 is currently supported'), so MLX has no "
            "weight for a grouped transposed convolution; split it into one ConvTranspose "
            "per group (w[j*I//g:(j+1)*I//g] each, outputs concatenated on channels)")
    a = _array(w, "w")
    _rank(a, layout, "w")
    return _permute(a, CONV_TRANSPOSE_LAYOUTS[layout], dtype, out, threads)


def conv_transpose_weights_to_torch(w: Any, *, dtype: Any = None) -> np.ndarray:
    """MLX ``(O, *K, I)`` back to PyTorch ``(I, O, *K)``:
    ``np.ascontiguousarray(np.moveaxis(w, -1, 0))``."""
    a = _array(w, "w")
    if a.ndim not in (3, 4, 5):
        raise ValueError(f"w has shape {a.shape}; an MLX transposed-convolution weight is "
                         "3-D to 5-D")
    return _permute(a, (a.ndim - 1, *range(a.ndim - 1)), dtype)


def _flat_shape(input_shape: Any, n: int, w_shape: tuple[int, ...], layout: str
                ) -> tuple[int, ...]:
    try:
        t = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if not t or any(v < 1 for v in t):
        raise ValueError(f"input_shape must be positive sizes, got {input_shape!r}")
    if int(np.prod(t)) != n:
        raise ValueError(f"input_shape={t} holds {int(np.prod(t))} values but w has {n} "
                         f"inputs (w.shape={w_shape}, layout={layout!r})")
    return t


def linear_weights(w: Any, *, layout: str = "OI", input_shape: Sequence[int] | None = None,
                   flatten: str = "CHW", dtype: Any = None, out: np.ndarray | None = None,
                   threads: int | None = None) -> np.ndarray:
    """``mlx.nn.Linear`` weight ``(O, I)``.

    ``layout="OI"`` (PyTorch Linear, ONNX Gemm transB=1): a copy; ``"IO"`` (Keras Dense):
    ``np.ascontiguousarray(w.T)``. A Linear after ``torch.flatten`` of a channels-first map
    ``input_shape=(C, *S)`` (``flatten="CHW"``, e.g. ``(C, H, W)``) reads, in an MLX port,
    the channels-last map flattened, so its columns go from CHW to HWC order:
    ``np.ascontiguousarray(w.reshape(O, C, H, W).transpose(0, 2, 3, 1)).reshape(O, -1)``
    (after the ``"IO"`` transpose). ``flatten="HWC"`` (a Keras Flatten of NHWC) is already
    MLX's order and changes nothing.
    """
    _choice(layout, ("OI", "IO"), "layout")
    _choice(flatten, ("CHW", "HWC"), "flatten")
    a = _array(w, "w")
    _rank(a, layout, "w")
    o_ax, n_ax = (0, 1) if layout == "OI" else (1, 0)
    o, n = a.shape[o_ax], a.shape[n_ax]
    t = None if input_shape is None else _flat_shape(input_shape, n, a.shape, layout)
    if t is None or flatten == "HWC" or len(t) == 1:
        return _permute(a, (o_ax, n_ax), dtype, out, threads)
    c, spatial = t[0], t[1:]
    s_n = a.strides[n_ax]
    # column index of (c, *s) in CHW order: c*prod(S) + ravel(s)
    st_sp = [int(np.prod(spatial[i + 1:])) * s_n for i in range(len(spatial))]
    st_c = int(np.prod(spatial)) * s_n
    a2, out_dt, cast = engine.resolve_dtype(a, dtype, "w", mps=False)
    result = engine.prepare_out(out, (o, n), out_dt, a2)
    engine.run(a2, result, (o, *spatial, c), (a.strides[o_ax], *st_sp, st_c), cast=cast,
               threads=threads)
    return result


def linear_weights_to_torch(w: Any, *, input_shape: Sequence[int] | None = None,
                            dtype: Any = None) -> np.ndarray:
    """MLX ``(O, I)`` back to PyTorch: a copy, or for ``input_shape=(C, *S)`` (the torch
    flatten's channels-first shape) columns from HWC back to CHW:
    ``np.ascontiguousarray(w.reshape(O, H, W, C).transpose(0, 3, 1, 2)).reshape(O, -1)``."""
    a = _array(w, "w")
    _rank(a, "OI", "w")
    o, n = a.shape
    if input_shape is None:
        return _permute(a, (0, 1), dtype)
    t = _flat_shape(input_shape, n, a.shape, "OI")
    c, spatial = t[0], t[1:]
    s_n = a.strides[1]
    # HWC column of (c, *s): ravel(s)*C + c; walk the result in (o, c, *s) order
    st_sp = [int(np.prod(spatial[i + 1:])) * c * s_n for i in range(len(spatial))]
    a2, out_dt, cast = engine.resolve_dtype(a, dtype, "w", mps=False)
    result = np.empty((o, n), out_dt)
    engine.run(a2, result, (o, c, *spatial), (a.strides[0], s_n, *st_sp), cast=cast)
    return result


# ------------------------------------------------------------------ recurrent layers


def _direction(direction: Any) -> int:
    if isinstance(direction, (bool, np.bool_)) or direction not in (0, 1):
        raise ValueError(f"direction must be 0 (forward) or 1 (reverse), got {direction!r}")
    return int(direction)


def _one_dir(a: np.ndarray, ndim: int, d: int, name: str, source: str) -> np.ndarray:
    """ONNX tensors lead with num_directions: pick direction ``d``."""
    if source == "onnx":
        if a.ndim != ndim + 1 or d >= a.shape[0]:
            raise ValueError(f"{name} has shape {a.shape}; ONNX packs (num_directions, ...) "
                             f"and direction={d} must exist")
        return a[d]
    if d:
        raise ValueError(f"direction={d}: {source} tensors hold one direction each (pass "
                         "the '_reverse' / backward tensors themselves)")
    return a


def _packed(W: Any, R: Any, gates: int, source: str, d: int
            ) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """(W, R, H, keras) of one direction; W as (G*H, I) or Keras (I, G*H)."""
    _choice(source, RNN_SOURCES, "layout")
    w = _one_dir(_array(W, "W"), 2, d, "W", source)
    r = _one_dir(_array(R, "R"), 2, d, "R", source)
    keras = source == "keras"
    for a, n in ((w, "W"), (r, "R")):
        if a.ndim != 2:
            raise ValueError(f"{n} has shape {a.shape}; expected 2-D for layout={source!r}")
    h = r.shape[0] if keras else r.shape[1]
    rows_r = r.shape[1] if keras else r.shape[0]
    rows_w = w.shape[1] if keras else w.shape[0]
    if h == 0 or rows_r != gates * h or rows_w != gates * h:
        what = "(I, G*H) / (H, G*H)" if keras else "(G*H, I) / (G*H, H)"
        raise ValueError(f"W has shape {w.shape} and R has shape {r.shape}: expected "
                         f"{what} with G={gates} gates for layout={source!r}")
    return w, r, h, keras


def _gate_rows(a: np.ndarray, blocks: Sequence[int], h: int, keras: bool, dtype: Any
               ) -> np.ndarray:
    """MLX's packed ``(G*H, X)``: gate k is the source's block ``blocks[k]``; Keras
    tensors ``(X, G*H)`` are transposed per block. One engine call per block, each
    writing its rows of the result."""
    axes = (1, 0) if keras else (0, 1)
    if list(blocks) == list(range(len(blocks))):
        return _permute(a, axes, dtype)
    n_in = a.shape[0] if keras else a.shape[1]
    a, out_dt, _ = engine.resolve_dtype(a, dtype, "W", mps=False)
    result = np.empty((len(blocks) * h, n_in), out_dt)
    for k, b in enumerate(blocks):
        blk = a[:, b * h:(b + 1) * h] if keras else a[b * h:(b + 1) * h]
        _permute(blk, axes, dtype, out=result[k * h:(k + 1) * h])
    return result


def _vec(b: Any, name: str) -> np.ndarray:
    a = _array(b, name)
    if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
        raise TypeError(f"{name} has dtype {a.dtype}; a bias must be real numbers")
    return a


def _bias_sum(parts: Sequence[np.ndarray], dtype: Any) -> np.ndarray:
    """``sum(p.astype(np.float64) for p in parts).astype(dtype or parts[0].dtype)``: the
    exact float64 sum of float32 biases, rounded once."""
    total = np.zeros(parts[0].shape, np.float64)
    for p in parts:
        total = total + p.astype(np.float64)
    target = parts[0].dtype if dtype is None else engine.resolve_dtype(
        parts[0], dtype, "dtype", mps=False)[1]
    return total.astype(target)


def _biases(b_ih: Any, b_hh: Any, g: int, h: int, source: str, d: int
            ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(input bias, recurrent bias) of one direction, each (G*H,) in source gate order."""
    if source == "onnx":
        if b_hh is not None:
            raise ValueError("layout='onnx' takes B (num_directions, 2*G*H) as b_ih, and no b_hh")
        if b_ih is None:
            return None, None
        b = _one_dir(_vec(b_ih, "B"), 1, d, "B", source)
        if b.shape != (2 * g * h,):
            raise ValueError(f"B has shape {b.shape} per direction; expected ({2 * g * h},) "
                             f"= [Wb | Rb] for {g} gates, H={h}")
        return b[:g * h], b[g * h:]
    if source == "keras" and b_ih is not None and b_hh is None and np.ndim(b_ih) == 2:
        b = _vec(b_ih, "b_ih")
        if b.shape != (2, g * h):
            raise ValueError(f"b_ih (Keras bias) has shape {b.shape}; expected ({g * h},) "
                             f"or (2, {g * h})")
        return b[0], b[1]
    out = []
    for v, n in ((b_ih, "b_ih"), (b_hh, "b_hh")):
        a = None if v is None else _vec(v, n)
        if a is not None and a.shape != (g * h,):
            raise ValueError(f"{n} has shape {a.shape}; expected ({g * h},) for {g} gates, H={h}")
        out.append(a)
    return out[0], out[1]


def _reorder(v: np.ndarray, blocks: Sequence[int], h: int) -> np.ndarray:
    return np.concatenate([v[b * h:(b + 1) * h] for b in blocks]) if v.size else v


def lstm_params(W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None, *,
                layout: str = "torch", direction: int = 0,
                dtype: Any = None) -> dict[str, np.ndarray]:
    """``mlx.nn.LSTM`` parameters ``{"Wx": (4H, I), "Wh": (4H, H), "bias": (4H,)}`` in
    MLX's gate order i, f, g, o (python/mlx/nn/layers/recurrent.py, ``LSTM.__call__``).

    ``layout="torch"``: ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (order i, f,
    g, o): ``Wx = W_ih.copy()``, ``Wh = W_hh.copy()``,
    ``bias = (b_ih.astype(np.float64) + b_hh.astype(np.float64)).astype(dtype or
    b_ih.dtype)`` (one bias given: a copy). ``"onnx"``: ``W (dirs, 4H, I)``, ``R (dirs,
    4H, H)``, ``B (dirs, 8H)`` as ``W_ih, W_hh, b_ih`` in order i, o, f, c: ``Wx =
    W[direction].reshape(4, H, I)[[0, 2, 3, 1]].reshape(4*H, I)``, ``bias`` the sum of
    ``B[direction][:4H]`` and ``[4H:]`` in that order. ``"keras"``: ``kernel (I, 4H)``,
    ``recurrent_kernel (H, 4H)``, ``bias (4H,)`` (order i, f, c, o): ``Wx = kernel.T``.
    """
    d = _direction(direction)
    w, r, h, keras = _packed(W_ih, W_hh, 4, layout, d)
    blocks = LSTM_BLOCKS[layout]
    res = {"Wx": _gate_rows(w, blocks, h, keras, dtype),
           "Wh": _gate_rows(r, blocks, h, keras, dtype)}
    bi, bh = _biases(b_ih, b_hh, 4, h, layout, d)
    parts = [_reorder(b, blocks, h) for b in (bi, bh) if b is not None]
    if len(parts) == 1:
        res["bias"] = _permute(parts[0], (0,), dtype)
    elif parts:
        res["bias"] = _bias_sum(parts, dtype)
    return res


def gru_params(W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None, *,
               layout: str = "torch", direction: int = 0, dtype: Any = None,
               linear_before_reset: bool | None = None,
               reset_after: bool | None = None) -> dict[str, np.ndarray]:
    """``mlx.nn.GRU`` parameters ``{"Wx": (3H, I), "Wh": (3H, H), "b": (3H,), "bhn": (H,)}``
    in MLX's gate order r, z, n; MLX computes ``n = tanh(Wx_n x + b_n + r * (Wh_n h +
    bhn))`` (recurrent.py, ``GRU``), PyTorch's cell.

    ``layout="torch"`` (order r, z, n): ``Wx = W_ih.copy()``, ``b = (b_ih + concat(b_hh[:2H],
    zeros(H)))`` summed in float64 and rounded once to ``dtype or b_ih.dtype``,
    ``bhn = b_hh[2H:].copy()``.
    ``"onnx"`` (order z, r, h; ``B = [Wb | Rb]``) needs ``linear_before_reset=True`` (ONNX's
    default 0 applies r before the recurrent matmul, a cell MLX does not compute):
    ``Wx = W[direction].reshape(3, H, I)[[1, 0, 2]].reshape(3*H, I)``. ``"keras"`` (order
    z, r, h; ``kernel (I, 3H)``, ``bias (2, 3H)``): ``Wx = kernel.reshape(I, 3, H)[:, [1, 0,
    2]].reshape(I, 3*H).T``; only ``reset_after=True`` (Keras's default, a bias of shape
    ``(2, 3H)``) is MLX's cell, ``reset_after=False`` is refused.
    """
    d = _direction(direction)
    if layout == "onnx" and linear_before_reset is not True:
        raise ValueError(
            "layout='onnx' needs linear_before_reset=True: with ONNX's default 0 the reset "
            "gate multiplies h before the recurrent matmul, a cell mlx.nn.GRU does not compute")
    w, r, h, keras = _packed(W_ih, W_hh, 3, layout, d)
    if keras:
        after = reset_after
        if after is None and b_ih is not None:
            after = np.ndim(b_ih) == 2
        if after is not True:
            raise ValueError(
                "a Keras GRU with reset_after=False (a bias of shape (3H,)) applies the reset "
                "gate before the recurrent matmul, a cell mlx.nn.GRU does not compute; pass "
                "reset_after=True only for a layer built with it")
    blocks = GRU_BLOCKS[layout]
    res = {"Wx": _gate_rows(w, blocks, h, keras, dtype),
           "Wh": _gate_rows(r, blocks, h, keras, dtype)}
    bi, bh = _biases(b_ih, b_hh, 3, h, layout, d)
    bi = None if bi is None else _reorder(bi, blocks, h)
    bh = None if bh is None else _reorder(bh, blocks, h)
    if bi is None and bh is None:
        return res
    if bh is None:
        res["b"] = _permute(bi, (0,), dtype)
        res["bhn"] = _permute(np.zeros(h, bi.dtype), (0,), dtype)
        return res
    rz = np.concatenate([bh[:2 * h], np.zeros(h, bh.dtype)])
    res["b"] = _bias_sum([rz] if bi is None else [bi, rz], dtype)
    res["bhn"] = _permute(bh[2 * h:], (0,), dtype)
    return res


def rnn_params(W_ih: Any, W_hh: Any, b_ih: Any = None, b_hh: Any = None, *,
               layout: str = "torch", direction: int = 0,
               dtype: Any = None) -> dict[str, np.ndarray]:
    """``mlx.nn.RNN`` parameters ``{"Wxh": (H, I), "Whh": (H, H), "bias": (H,)}`` (MLX names
    them ``Wxh``/``Whh``, recurrent.py ``RNN``). torch/onnx: ``Wxh = W_ih.copy()`` (ONNX:
    ``W[direction]``); keras (``SimpleRNN``): ``Wxh = kernel.T``, ``Whh = recurrent_kernel.T``;
    ``bias`` the float64 sum of the biases rounded once to ``dtype or b_ih.dtype`` (one
    bias: a copy).
    """
    d = _direction(direction)
    w, r, h, keras = _packed(W_ih, W_hh, 1, layout, d)
    res = {"Wxh": _gate_rows(w, (0,), h, keras, dtype),
           "Whh": _gate_rows(r, (0,), h, keras, dtype)}
    parts = [b for b in _biases(b_ih, b_hh, 1, h, layout, d) if b is not None]
    if len(parts) == 1:
        res["bias"] = _permute(parts[0], (0,), dtype)
    elif parts:
        res["bias"] = _bias_sum(parts, dtype)
    return res


# ------------------------------------------------------------------ back to PyTorch


def _copy(x: Any, name: str, dtype: Any) -> np.ndarray:
    a = _array(x, name)
    return _permute(a, tuple(range(a.ndim)), dtype)


def lstm_params_to_torch(p: dict[str, Any], *, dtype: Any = None) -> dict[str, np.ndarray]:
    """``{"weight_ih", "weight_hh", "bias_ih", "bias_hh"}`` from MLX's LSTM parameters
    (same gate order): copies, ``bias_ih = bias``, ``bias_hh = np.zeros_like(bias)`` (the
    sum cannot be split again; the torch cell computes the same)."""
    res = {"weight_ih": _copy(p["Wx"], "Wx", dtype), "weight_hh": _copy(p["Wh"], "Wh", dtype)}
    if "bias" in p:
        res["bias_ih"] = _copy(p["bias"], "bias", dtype)
        res["bias_hh"] = np.zeros_like(res["bias_ih"])
    return res


def gru_params_to_torch(p: dict[str, Any], *, dtype: Any = None) -> dict[str, np.ndarray]:
    """PyTorch GRU tensors from MLX's: copies (same order r, z, n), ``bias_ih = b``,
    ``bias_hh = np.concatenate([np.zeros(2*H), bhn])`` (``bhn`` exactly)."""
    res = {"weight_ih": _copy(p["Wx"], "Wx", dtype), "weight_hh": _copy(p["Wh"], "Wh", dtype)}
    if "b" in p:
        res["bias_ih"] = _copy(p["b"], "b", dtype)
        bhn = _copy(p["bhn"], "bhn", dtype) if "bhn" in p else None
        h = res["bias_ih"].shape[0] // 3
        bias_hh = np.zeros_like(res["bias_ih"])
        if bhn is not None:
            if bhn.shape != (h,):
                raise ValueError(f"bhn has shape {bhn.shape}; expected ({h},) for b of shape "
                                 f"{res['bias_ih'].shape}")
            bias_hh[2 * h:] = bhn
        res["bias_hh"] = bias_hh
    return res


def rnn_params_to_torch(p: dict[str, Any], *, dtype: Any = None) -> dict[str, np.ndarray]:
    """PyTorch RNN tensors from MLX's ``Wxh``/``Whh``/``bias``: copies, ``bias_hh`` zeros."""
    res = {"weight_ih": _copy(p["Wxh"], "Wxh", dtype),
           "weight_hh": _copy(p["Whh"], "Whh", dtype)}
    if "bias" in p:
        res["bias_ih"] = _copy(p["bias"], "bias", dtype)
        res["bias_hh"] = np.zeros_like(res["bias_ih"])
    return res
