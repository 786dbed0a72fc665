"""The weight rules of docs/layouts.md, each a layout rule (axes, flips, strides) handed to
the engine in one call. Section numbers refer to that document.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import engine

__all__ = [
    "MPSLayoutWarning",
    "bias",
    "conv_transpose_weights",
    "conv_weights",
    "dense_reshape",
    "depthwise_weights",
    "expand_depthwise",
    "fc_weights",
]


class MPSLayoutWarning(UserWarning):
    """A conversion that is exact but produces something MPS may refuse."""


def _weights(w: Any, ndim: int, name: str, layout: str) -> np.ndarray:
    a = engine.as_input(w, name)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D for layout={layout!r}, got shape {a.shape}")
    if not a.dtype.isnative and a.dtype.itemsize > 1:
        # MPS reads native (little-endian) values: swap first, so that every stride the
        # converters take below belongs to the array that is actually read
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _choice(value: Any, options: Sequence[str], name: str) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def _groups(groups: Any, total: int, what: str, name: str = "groups") -> int:
    if groups == 1 and type(groups) is int:
        return 1
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"{name} must be a positive int, got {groups}")
    if total % groups:
        raise ValueError(f"{name}={groups} does not divide the {what} ({total})")
    return int(groups)


def _warn_groups(groups: int, in_per_group: int, out_per_group: int) -> None:
    if groups > 1 and (in_per_group % 4 or out_per_group % 4):
        warnings.warn(
            f"MPS grouped convolutions need input and output channels per group that are "
            f"multiples of 4; this layer has {in_per_group} in and {out_per_group} out per group "
            f"(groups={groups}). The weights are converted as given, not padded.",
            MPSLayoutWarning,
            stacklevel=3,
        )


def _move(
    a: np.ndarray,
    shape: tuple[int, ...],
    src_strides: Sequence[int],
    dtype: Any,
    out: np.ndarray | None,
    threads: int | None,
    *,
    src_offset: int = 0,
    result_shape: tuple[int, ...] | None = None,
    name: str = "w",
) -> np.ndarray:
    """Resolve dtype and out, then copy the box ``shape`` (C order) of ``a`` into the result."""
    a, out_dt, cast = engine.resolve_dtype(a, dtype, name, mps=True)
    result = engine.prepare_out(out, result_shape or shape, out_dt, a)
    engine.run(a, result, shape, src_strides, src_offset=src_offset, cast=cast, threads=threads)
    return result


@engine.fast_path("conv")
def conv_weights(
    w: Any,
    *,
    layout: str = "OIHW",
    groups: int = 1,
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """MPSCNNConvolution weights, OHWI ``(O, kH, kW, I/groups)`` (docs/layouts.md section 1,
    Convolution weights).

    ``layout="OIHW"`` (PyTorch, ONNX): ``np.ascontiguousarray(w.transpose(0, 2, 3, 1))``.
    ``layout="HWIO"`` (Keras, TF): ``np.ascontiguousarray(w.transpose(3, 0, 1, 2))``.
    ``groups`` only checks the shape: MPS wants I/g and O/g multiples of 4 (a
    :class:`MPSLayoutWarning` otherwise).
    """
    _choice(layout, ("OIHW", "HWIO"), "layout")
    a = _weights(w, 4, "w", layout)
    sh, st = a.shape, a.strides
    if layout == "OIHW":
        shape, strides = (sh[0], sh[2], sh[3], sh[1]), (st[0], st[2], st[3], st[1])
    else:
        shape, strides = (sh[3], sh[0], sh[1], sh[2]), (st[3], st[0], st[1], st[2])
    if groups != 1 or type(groups) is not int:
        g = _groups(groups, shape[0], "output channels")
        _warn_groups(g, shape[3], shape[0] // g)
    return _move(a, shape, strides, dtype, out, threads)


@engine.fast_path("depthwise")
def depthwise_weights(
    w: Any,
    *,
    layout: str = "OIHW",
    in_channels: int | None = None,
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """MPSCNNDepthWiseConvolution weights ``(C, kH, kW)`` (section 2); multiplier 1 only.

    ``layout="OIHW"``: ``w`` is ``(C, 1, kH, kW)``; equals ``np.ascontiguousarray(w[:, 0])``.
    ``layout="HWCM"`` (Keras): ``w`` is ``(kH, kW, C, 1)``; equals
    ``np.ascontiguousarray(w[:, :, :, 0].transpose(2, 0, 1))``.
    A channel multiplier above 1 raises ValueError: use :func:`expand_depthwise`.
    """
    _choice(layout, ("OIHW", "HWCM"), "layout")
    a = _weights(w, 4, "w", layout)
    if layout == "OIHW":
        if a.shape[1] != 1:
            raise ValueError(
                f"w has shape {a.shape}: a depthwise OIHW weight is (C, 1, kH, kW); "
                "for an ordinary grouped convolution use conv_weights"
            )
        c = a.shape[0]
        if in_channels is not None:
            cin = _groups(in_channels, c, "output channels", "in_channels")
            if c != cin:
                raise ValueError(
                    f"channel multiplier {c // cin} (w has {c} outputs for in_channels={cin}): "
                    "MPS depthwise supports multiplier 1 only; use expand_depthwise(w, "
                    f"in_channels={cin}) for an equivalent ordinary convolution"
                )
        shape = (c, a.shape[2], a.shape[3])
        strides = [a.strides[0], a.strides[2], a.strides[3]]
    else:
        if a.shape[3] != 1:
            raise ValueError(
                f"channel multiplier {a.shape[3]} (w has shape {a.shape}): MPS depthwise "
                "supports multiplier 1 only; use expand_depthwise(w, layout='HWCM') for an "
                "equivalent ordinary convolution"
            )
        shape = (a.shape[2], a.shape[0], a.shape[1])
        strides = [a.strides[2], a.strides[0], a.strides[1]]
    return _move(a, shape, strides, dtype, out, threads)


def expand_depthwise(
    w: Any,
    *,
    layout: str = "OIHW",
    in_channels: int | None = None,
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """A depthwise convolution with multiplier m as ordinary OHWI weights ``(C*m, kH, kW, C)``.

    Output channel ``o`` reads only input channel ``o // m`` (zeros elsewhere), so
    MPSCNNConvolution computes the same result as the depthwise layer.
    ``layout="OIHW"`` (PyTorch ``groups=C``): ``w`` is ``(C*m, 1, kH, kW)`` and
    ``in_channels=C`` is required; equals ``r = np.zeros((C*m, kH, kW, C));
    r[o, :, :, o // m] = w[o, 0]`` for every o.
    ``layout="HWCM"`` (Keras): ``w`` is ``(kH, kW, C, m)``; ``r[c*m + j, :, :, c] = w[:, :, c, j]``.
    """
    _choice(layout, ("OIHW", "HWCM"), "layout")
    a = _weights(w, 4, "w", layout)
    if layout == "OIHW":
        if a.shape[1] != 1:
            raise ValueError(f"w has shape {a.shape}: a depthwise OIHW weight is (C*m, 1, kH, kW)")
        if in_channels is None:
            raise ValueError(
                "in_channels= is required with layout='OIHW': the weight alone does not tell "
                "the channel multiplier"
            )
        c = _groups(in_channels, a.shape[0], "output channels", "in_channels")
        m = a.shape[0] // c if c else 0
        kh, kw = a.shape[2], a.shape[3]
        s_c, s_j, s_h, s_w = a.strides[0] * m, a.strides[0], a.strides[2], a.strides[3]
    else:
        kh, kw, c, m = a.shape
        s_c, s_j, s_h, s_w = a.strides[2], a.strides[3], a.strides[0], a.strides[1]
    a, out_dt, cast = engine.resolve_dtype(a, dtype, "w", mps=True)
    n_threads = engine.resolve_threads(threads)
    result = engine.prepare_out(out, (c * m, kh, kw, c), out_dt, a)
    engine.check_overlap(result, a)  # checked before the zero fill touches anything
    result[...] = 0
    e = result.itemsize
    # (c, j, kh, kw) lands at [c*m + j][kh][kw][c]: the diagonal of each block
    dst = [(m * kh * kw * c + 1) * e, kh * kw * c * e, kw * c * e, c * e]
    engine.run(a, result, (c, m, kh, kw), [s_c, s_j, s_h, s_w], dst, cast=cast, threads=n_threads)
    return result


def conv_transpose_weights(
    w: Any,
    *,
    layout: str = "IOHW",
    groups: int = 1,
    flip: bool = True,
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """MPSCNNConvolutionTranspose weights, OHWI ``(O, kH, kW, I/groups)`` (section 3).

    Swaps input and output channels and (``flip=True``) rotates the kernel 180 degrees.
    ``layout="IOHW"`` (PyTorch, ONNX; ``w`` is ``(I, O/g, kH, kW)``), groups=1: equals
    ``np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 2, 3, 0))``; with groups g,
    ``w.reshape(g, I//g, O//g, kH, kW)[:, :, :, ::-1, ::-1].transpose(0, 2, 3, 4, 1)
    .reshape(O, kH, kW, I//g)``.
    ``layout="HWOI"`` (Keras): ``np.ascontiguousarray(w[::-1, ::-1].transpose(2, 0, 1, 3))``.
    """
    _choice(layout, ("IOHW", "HWOI"), "layout")
    if not isinstance(flip, (bool, np.bool_)):
        raise TypeError(f"flip must be a bool, got {type(flip).__name__}")
    a = _weights(w, 4, "w", layout)
    if layout == "IOHW":
        i_all, o_g, kh, kw = a.shape
        g = _groups(groups, i_all, "input channels (w.shape[0])")
        i_g = i_all // g
        _warn_groups(g, i_g, o_g)
        s_i, s_o, s_h, s_w = a.strides
        shape = (g, o_g, kh, kw, i_g)
        strides = [i_g * s_i, s_o, s_h, s_w, s_i]
        h_ax, w_ax = 2, 3
        result_shape = (g * o_g, kh, kw, i_g)
    else:
        if groups != 1:
            raise ValueError("groups must be 1 with layout='HWOI' (Keras has no grouped transpose)")
        kh, kw, o, i = a.shape
        shape = (o, kh, kw, i)
        strides = [a.strides[2], a.strides[0], a.strides[1], a.strides[3]]
        h_ax, w_ax = 1, 2
        result_shape = shape
    offset = 0
    if flip:
        for ax in (h_ax, w_ax):
            if shape[ax] > 0:
                offset += (shape[ax] - 1) * strides[ax]
            strides[ax] = -strides[ax]
    return _move(
        a, shape, strides, dtype, out, threads, src_offset=offset, result_shape=result_shape
    )


def _shape3(shape: Any, name: str) -> tuple[int, int, int]:
    try:
        t = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of 3 ints, got {type(shape).__name__}") from None
    if len(t) != 3 or any(
        isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in t
    ):
        raise ValueError(f"{name} must be a tuple of 3 ints, got {shape!r}")
    if any(v < 1 for v in t):
        raise ValueError(f"{name} must have positive sizes, got {t}")
    return int(t[0]), int(t[1]), int(t[2])


def _neuron_strides(s_n: int, h: int, w: int, c: int, order: str) -> tuple[int, int, int]:
    """Strides of (y, x, c) over a flat neuron axis of stride s_n, flattened in ``order``."""
    if order == "CHW":  # n = c*H*W + y*W + x
        return w * s_n, s_n, h * w * s_n
    return w * c * s_n, c * s_n, s_n  # HWC: n = (y*W + x)*C + c


@engine.fast_path("fc")
def fc_weights(
    w: Any,
    *,
    input_shape: Sequence[int] | None = None,
    layout: str = "OI",
    flatten: str = "CHW",
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """MPSCNNFullyConnected weights ``(O, H, W, C)`` (section 4).

    ``layout="OI"`` (PyTorch Linear, ONNX Gemm transB=1) or ``"IO"`` (Keras Dense).
    ``input_shape`` is the image the layer reads in ``flatten`` order: ``(C, H, W)`` for
    ``flatten="CHW"`` (PyTorch ``torch.flatten`` of NCHW), ``(H, W, C)`` for ``"HWC"``
    (Keras Flatten of NHWC); None means a plain vector, giving ``(O, 1, 1, N)``.
    For OI/CHW this equals ``np.ascontiguousarray(w.reshape(O, C, H, W).transpose(0, 2, 3, 1))``.
    """
    _choice(layout, ("OI", "IO"), "layout")
    _choice(flatten, ("CHW", "HWC"), "flatten")
    a = _weights(w, 2, "w", layout)
    o_ax, n_ax = (0, 1) if layout == "OI" else (1, 0)
    o, n = a.shape[o_ax], a.shape[n_ax]
    if input_shape is None:
        h, ww, c = 1, 1, n
        order = "HWC"
    else:
        t = _shape3(input_shape, "input_shape")
        c, h, ww = t if flatten == "CHW" else (t[2], t[0], t[1])
        order = flatten
        if c * h * ww != n:
            raise ValueError(
                f"input_shape={t} holds {c * h * ww} values but w has {n} inputs "
                f"(w.shape={a.shape}, layout={layout!r})"
            )
    sy, sx, sc = _neuron_strides(a.strides[n_ax], h, ww, c, order)
    return _move(a, (o, h, ww, c), [a.strides[o_ax], sy, sx, sc], dtype, out, threads)


@engine.fast_path("dense_reshape")
def dense_reshape(
    w: Any,
    b: Any = None,
    *,
    shape: Sequence[int],
    layout: str = "OI",
    order: str = "CHW",
    target: str = "rows",
    dtype: Any = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A Dense layer followed by Reshape to ``shape = (H, W, C)``, for MPS (section 6).

    ``order`` is how the source framework lays out the reshaped neurons: ``"CHW"`` for a
    PyTorch ``view(-1, C, H, W)``, ``"HWC"`` for Keras ``Reshape((H, W, C))``. Returns
    ``(weights, bias)`` (bias float32, None if ``b`` is None) for ``target``:

    - ``"rows"``: ``(H*W*C, I)`` rows in HWC order (for MPSNNReshape). For OI/CHW equals
      ``np.ascontiguousarray(w.reshape(C, H, W, I).transpose(1, 2, 0, 3).reshape(-1, I))``.
    - ``"subpixel"``: the same rows as OHWI ``(H*W*C, 1, 1, I)`` for a sub-pixel
      convolution of factor H (needs H == W).
    - ``"conv_transpose"``: OHWI ``(C, H, W, I)``, a transposed convolution with an HxW kernel
      on the 1x1 input, 180-degree flip applied:
      ``rows.reshape(H, W, C, I)[::-1, ::-1].transpose(2, 0, 1, 3)``; its bias ``(C,)``
      requires the dense bias to be constant over (y, x) for each channel.
    """
    _choice(layout, ("OI", "IO"), "layout")
    _choice(order, ("CHW", "HWC"), "order")
    _choice(target, ("rows", "subpixel", "conv_transpose"), "target")
    h, ww, c = _shape3(shape, "shape")
    a = _weights(w, 2, "w", layout)
    n_ax, i_ax = (0, 1) if layout == "OI" else (1, 0)
    n, i = a.shape[n_ax], a.shape[i_ax]
    if n != h * ww * c:
        raise ValueError(
            f"shape={(h, ww, c)} holds {h * ww * c} neurons but w has {n} outputs "
            f"(w.shape={a.shape}, layout={layout!r})"
        )
    if target == "subpixel" and h != ww:
        raise ValueError(
            f"target='subpixel' needs a square reshape (H == W), got shape={(h, ww, c)}"
        )
    bv = None
    if b is not None:
        bv = engine.as_input(b, "b")
        if bv.shape != (n,):
            raise ValueError(f"b must have shape ({n},), got {bv.shape}")
    sy, sx, sc = _neuron_strides(a.strides[n_ax], h, ww, c, order)
    si = a.strides[i_ax]
    if target == "conv_transpose":
        box = (c, h, ww, i)
        strides = [sc, -sy, -sx, si]
        offset = (h - 1) * sy + (ww - 1) * sx
        res_shape = box
    else:
        box = (h, ww, c, i)
        strides = [sy, sx, sc, si]
        offset = 0
        res_shape = (n, i) if target == "rows" else (n, 1, 1, i)
    bias_out = None
    if bv is not None:
        by, bx, bc = _neuron_strides(bv.strides[0], h, ww, c, order)
        view = np.lib.stride_tricks.as_strided(bv, (h, ww, c), (by, bx, bc), writeable=False)
        if target == "conv_transpose":
            if not np.array_equal(view, np.broadcast_to(view[:1, :1], view.shape), equal_nan=True):
                raise ValueError(
                    "target='conv_transpose' needs the dense bias constant over (y, x) for each "
                    "channel (a transposed convolution has one bias per output channel); use "
                    "target='subpixel' or 'rows' instead"
                )
            bias_out = _float32(view[0, 0], None)
        else:
            bias_out = _float32(view, None).reshape(n)
    weights = _move(a, box, strides, dtype, out, threads, src_offset=offset, result_shape=res_shape)
    return weights, bias_out


def bias(b: Any, *, out: np.ndarray | None = None) -> np.ndarray:
    """MPS biases are always float32: ``np.ascontiguousarray(b, dtype=np.float32)``, 1-D."""
    a = b if type(b) is np.ndarray else np.asarray(b)
    if a.ndim != 1:
        raise ValueError(f"b must be 1-D (one value per output channel), got shape {a.shape}")
    return _float32(a, out)


def _float32(a: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
        raise TypeError(f"b has dtype {a.dtype}; a bias must be real numbers")
    result = engine.prepare_out(out, a.shape, np.dtype(np.float32), a)
    engine.check_overlap(result, a)
    np.copyto(result, a, casting="unsafe")
    return result
