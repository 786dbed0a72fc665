"""Hostile input, beyond the bad-input matrix of test_errors.py (which it does not repeat).

Every row of ``CASES`` is one input that must be refused with the given exception type and
a message matching the given pattern (which names the offending argument), never a crash:
sizes that exceed memory or overflow 64 bits (zero-stride views make huge logical arrays
from one byte), odd dtypes through every converter, ``out=`` that is read-only, wrongly
shaped, wrongly typed, non-contiguous or overlapping the input (same buffer included) for
every converter that takes it, layout strings with repeated, missing or lowercase letters,
block size 0, bad thread counts. Rows marked ``BUG`` are known defects (strict xfail).

Further down: byte-swapped inputs through every converter (converted correctly, compared
with numpy / the slow twins, or refused clearly), and NaN / infinity through every cast on
both the vector and the scalar paths (NaN stays NaN, +-inf stays +-inf, bits as numpy).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided, sliding_window_view

import mpslayout
from mpslayout import slow

try:
    import ml_dtypes

    BF16: Any = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - optional dependency
    ml_dtypes = None
    BF16 = None

rng = np.random.default_rng(6)
F32 = np.float32
X2 = rng.standard_normal((3, 4)).astype(F32)
X3 = rng.standard_normal((2, 3, 4)).astype(F32)
X4 = rng.standard_normal((2, 5, 3, 4)).astype(F32)  # NCHW
W4 = rng.standard_normal((8, 4, 3, 3)).astype(F32)  # OIHW
DW = rng.standard_normal((6, 1, 3, 3)).astype(F32)
L = rng.standard_normal((4, 60)).astype(F32)  # (O, N)
DENSE = rng.standard_normal((60, 6)).astype(F32)  # (H*W*C, I) for shape (3, 4, 5)
SLICES = rng.standard_normal((4, 3, 4, 4)).astype(F32)  # image_slices of (2, 5, 3, 4)
BLOCKED = np.zeros((2, 2, 3, 4, 4), dtype=F32)  # NCHW4c of C=5..8

BUG = "BUG"  # marks a row that documents a known defect (strict xfail, see `reason`)

EiB = 2**60


def huge(shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
    """A read-only array of any logical size backed by a single element (all strides 0)."""
    return as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape), writeable=False)


def ro(shape: tuple[int, ...], dtype: Any = F32) -> np.ndarray:
    o = np.zeros(shape, dtype)
    o.setflags(write=False)
    return o


def noncontig(shape: tuple[int, ...], dtype: Any = F32) -> np.ndarray:
    big = np.zeros((*shape[:-1], 2 * shape[-1]), dtype)
    return big[..., ::2]


def fortran(shape: tuple[int, ...], dtype: Any = F32) -> np.ndarray:
    return np.zeros(shape, dtype, order="F")


def same_buffer(f: Callable[..., Any], x: np.ndarray, *args: Any, **kw: Any) -> Callable[[], Any]:
    """f(x, ..., out=x): the output is the input's own buffer."""
    return lambda: f(x, *args, out=x, **kw)


def _square(shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape).astype(F32)


def _overlap_half(shape: tuple[int, ...], f: Callable[..., Any], **kw: Any) -> Callable[[], Any]:
    """Input and out are two views of one buffer, overlapping by half."""

    def call() -> Any:
        args = dict(kw)
        n = int(np.prod(shape))
        base = np.zeros(n + n // 2, F32)
        x = base[:n].reshape(shape)
        out_shape = args.pop("out_shape")
        out = base[n // 2 : n // 2 + int(np.prod(out_shape))].reshape(out_shape)
        return f(x, out=out, **args)

    return call


def _out_tail_overlap_cast() -> Any:
    # float32 input, float16 out that lives in the input's last bytes
    base = np.zeros(48, F32)
    out = base.view(np.float16)[40:72].reshape(8, 4)
    return mpslayout.permute(base[:32].reshape(4, 8), (1, 0), dtype=np.float16, out=out)


def _out_view_other_dtype() -> Any:
    # the same bytes seen as float32 (input) and as float32 via a uint32 round trip (out)
    raw = np.zeros((4, 4), np.uint32)
    return mpslayout.permute(raw.view(F32), (1, 0), out=raw.view(F32))


def _out_zero_stride_input() -> Any:
    x = np.zeros((4, 4), F32)
    return mpslayout.permute(np.broadcast_to(x[0, :1], (4, 4)), (1, 0), out=x)


def _expand_depthwise_overlap() -> Any:
    e = np.zeros((4, 1, 4, 4), F32)
    return mpslayout.expand_depthwise(e, in_channels=1, out=e.reshape(4, 4, 4, 1))


def _bias_overlap() -> Any:
    base = np.zeros(24, F32)
    return mpslayout.bias(base[:16], out=base[8:24])


def _dense_same() -> Any:
    d = np.zeros((60, 6), F32)
    return mpslayout.dense_reshape(d, shape=(3, 4, 5), out=d)


def _f64_out_in_input() -> Any:
    x = np.zeros((4, 8), np.float64)
    return mpslayout.permute(x, (1, 0), dtype=F32, out=x.reshape(-1).view(F32)[:32].reshape(8, 4))


MSG_OUT = r"\bout\b"
MSG_DT = r"dtype|\bx\b"
MSG_W = r"dtype|\bw\b"
SIZE = (MemoryError, ValueError)  # allocation refused: either is a clear Python error
MSG_SIZE = r"."  # numpy's own message ("Unable to allocate ...", "array is too big")

# (id, call, exception type(s), regex the message must match[, BUG, reason])
CASES: list[tuple[Any, ...]] = [
    # ---------------------------------------------------------------- sizes and memory
    (
        "permute_1EiB_zero_stride",
        lambda: mpslayout.permute(huge((2**20,) * 3), (2, 1, 0)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "permute_1EiB_identity",
        lambda: mpslayout.permute(huge((2**20,) * 3), (0, 1, 2)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "permute_cast_f64_huge",
        lambda: mpslayout.permute(huge((2**31, 2**28), np.float64), (1, 0), dtype=F32),
        SIZE,
        MSG_SIZE,
    ),
    (
        "permute_8d_huge",
        lambda: mpslayout.permute(huge((2**8,) * 8), tuple(range(7, -1, -1))),
        SIZE,
        MSG_SIZE,
    ),
    (
        "convert_16TiB",
        lambda: mpslayout.convert(huge((2**20, 2**10, 2**10, 16)), "NCHW", "NHWC"),
        SIZE,
        MSG_SIZE,
    ),
    (
        "convert_blocked_16TiB",
        lambda: mpslayout.convert(huge((2**20, 2**10, 2**10, 16)), "NCHW", "NCHW4c"),
        SIZE,
        MSG_SIZE,
    ),
    (
        "convert_from_blocked_huge",
        lambda: mpslayout.convert(
            huge((2**20, 2**10, 2**10, 16, 4)), "NCHW4c", "NCHW", channels=2**12
        ),
        SIZE,
        MSG_SIZE,
    ),
    (
        "convert_block_4G_padding",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW4294967296c"),
        SIZE,
        MSG_SIZE,
    ),
    (
        "convert_block_overflows_int64",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW" + "9" * 20 + "c"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "convert_block_int64_max",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW9223372036854775807c"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "conv_weights_64TiB",
        lambda: mpslayout.conv_weights(huge((2**20, 2**10, 2**10, 16), F32)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "conv_transpose_huge",
        lambda: mpslayout.conv_transpose_weights(huge((2**20, 2**10, 2**10, 16), F32)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "depthwise_huge",
        lambda: mpslayout.depthwise_weights(huge((2**30, 1, 2**10, 2**10), F32)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "expand_depthwise_huge",
        lambda: mpslayout.expand_depthwise(huge((2**20, 1, 2, 2), F32), in_channels=2**20),
        SIZE,
        MSG_SIZE,
    ),
    ("fc_weights_huge", lambda: mpslayout.fc_weights(huge((2**30, 2**30), F32)), SIZE, MSG_SIZE),
    (
        "dense_reshape_huge",
        lambda: mpslayout.dense_reshape(huge((2**30, 2**20), F32), shape=(2**10, 2**10, 2**10)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "image_slices_huge",
        lambda: mpslayout.image_slices(huge((2**20, 2**10, 2**10, 16), F32)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "image_from_slices_huge",
        lambda: mpslayout.image_from_slices(huge((2**20, 2**10, 2**10, 4), F32), channels=4),
        SIZE,
        MSG_SIZE,
    ),
    (
        "reshape_gather_32TiB",
        lambda: mpslayout.reshape_gather((2**20, 2**20, 4), (2**20, 2**20, 4)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "reshape_gather_overflow",
        lambda: mpslayout.reshape_gather((2**62, 2**62, 4), (2**62, 2**62, 4)),
        SIZE,
        MSG_SIZE,
    ),
    (
        "fc_input_shape_overflow",
        lambda: mpslayout.fc_weights(L, input_shape=(2**62, 2**62, 4)),
        ValueError,
        r"input_shape",
    ),
    (
        "dense_shape_overflow",
        lambda: mpslayout.dense_reshape(DENSE, shape=(2**62, 2**62, 4)),
        ValueError,
        r"\bshape\b",
    ),
    (
        "channels_2_64",
        lambda: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW", channels=2**64),
        ValueError,
        r"channels|'C'",
    ),
    (
        "sizes_2_64",
        lambda: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW", sizes={"C": 2**64}),
        ValueError,
        r"sizes|'C'",
    ),
    (
        "image_from_slices_channels_2_63",
        lambda: mpslayout.image_from_slices(SLICES, channels=2**63),
        ValueError,
        r"channels",
    ),
    ("groups_2_64", lambda: mpslayout.conv_weights(W4, groups=2**64), ValueError, r"groups"),
    ("axes_2_64", lambda: mpslayout.permute(X3, (2**64, 0, 1)), ValueError, r"axes"),
    # ---------------------------------------------------------------- negative / zero dims
    (
        "dense_shape_zero",
        lambda: mpslayout.dense_reshape(DENSE, shape=(0, 4, 5)),
        ValueError,
        r"\bshape\b",
    ),
    (
        "dense_shape_negative",
        lambda: mpslayout.dense_reshape(DENSE, shape=(-3, -4, 5)),
        ValueError,
        r"\bshape\b",
    ),
    (
        "fc_input_shape_negative",
        lambda: mpslayout.fc_weights(L, input_shape=(-5, -3, 4)),
        ValueError,
        r"input_shape",
    ),
    (
        "reshape_slices_src_zero",
        lambda: mpslayout.reshape_slices(SLICES, src=(0, 4, 5), dst=(3, 4, 5)),
        ValueError,
        r"\bsrc\b",
    ),
    (
        "reshape_gather_dst_negative",
        lambda: mpslayout.reshape_gather((3, 4, 5), (-3, -4, 5)),
        ValueError,
        r"\bdst\b",
    ),
    (
        "image_from_slices_channels_neg",
        lambda: mpslayout.image_from_slices(SLICES, channels=-1),
        ValueError,
        r"channels",
    ),
    (
        "sizes_negative",
        lambda: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW", sizes={"C": -5}),
        ValueError,
        r"sizes",
    ),
    (
        "expand_depthwise_in_channels_0",
        lambda: mpslayout.expand_depthwise(DW, in_channels=0),
        ValueError,
        r"in_channels",
    ),
    (
        "expand_depthwise_in_channels_not_dividing",
        lambda: mpslayout.expand_depthwise(DW, in_channels=4),
        ValueError,
        r"in_channels",
    ),
    (
        "depthwise_in_channels_0",
        lambda: mpslayout.depthwise_weights(DW, in_channels=0),
        ValueError,
        r"in_channels",
    ),
    # ---------------------------------------------------------------- dtypes, every converter
    (
        "convert_object",
        lambda: mpslayout.convert(np.array([[1, None]], object), "NC", "CN"),
        TypeError,
        MSG_DT,
    ),
    (
        "convert_str",
        lambda: mpslayout.convert(np.array([["ab", "c"]]), "NC", "CN"),
        TypeError,
        MSG_DT,
    ),
    (
        "convert_bytes",
        lambda: mpslayout.convert(np.array([[b"ab", b"c"]]), "NC", "CN"),
        TypeError,
        MSG_DT,
    ),
    (
        "convert_complex128",
        lambda: mpslayout.convert(np.zeros((2, 3), complex), "NC", "CN"),
        TypeError,
        MSG_DT,
    ),
    (
        "convert_structured",
        lambda: mpslayout.convert(np.zeros((2, 3), "i2,i2"), "NC", "CN"),
        TypeError,
        MSG_DT,
    ),
    (
        "convert_longdouble",
        lambda: mpslayout.convert(np.zeros((2, 3), np.longdouble), "NC", "CN"),
        TypeError,
        MSG_DT,
    ),
    (
        "convert_datetime",
        lambda: mpslayout.convert(np.zeros((2, 3), "M8[s]"), "NC", "CN"),
        TypeError,
        MSG_DT,
    ),
    (
        "convert_void4",
        lambda: mpslayout.convert(np.zeros((2, 3), "V4"), "NC", "CN"),
        TypeError,
        MSG_DT,
    ),
    (
        "permute_timedelta",
        lambda: mpslayout.permute(np.zeros((2, 3), "m8[ms]"), (1, 0)),
        TypeError,
        MSG_DT,
    ),
    ("permute_void2", lambda: mpslayout.permute(np.zeros((2, 3), "V2"), (1, 0)), TypeError, MSG_DT),
    (
        "permute_complex256",
        lambda: mpslayout.permute(np.zeros((2, 3), np.clongdouble), (1, 0)),
        TypeError,
        MSG_DT,
    ),
    ("permute_none", lambda: mpslayout.permute(None, ()), TypeError, MSG_DT),
    ("permute_dict", lambda: mpslayout.permute({1: 2}, ()), TypeError, MSG_DT),
    ("conv_weights_object", lambda: mpslayout.conv_weights(W4.astype(object)), TypeError, MSG_W),
    (
        "conv_weights_str",
        lambda: mpslayout.conv_weights(np.zeros((2, 2, 2, 2), "U1")),
        TypeError,
        MSG_W,
    ),
    (
        "conv_weights_structured",
        lambda: mpslayout.conv_weights(np.zeros((2, 2, 2, 2), "f2,f2")),
        TypeError,
        MSG_W,
    ),
    (
        "conv_weights_complex128",
        lambda: mpslayout.conv_weights(W4.astype(complex)),
        TypeError,
        MSG_W,
    ),
    ("conv_weights_bool", lambda: mpslayout.conv_weights(W4 > 0), TypeError, MSG_W),
    ("conv_weights_int8", lambda: mpslayout.conv_weights(W4.astype(np.int8)), TypeError, MSG_W),
    (
        "conv_transpose_object",
        lambda: mpslayout.conv_transpose_weights(W4.astype(object)),
        TypeError,
        MSG_W,
    ),
    (
        "depthwise_complex64",
        lambda: mpslayout.depthwise_weights(DW.astype(np.complex64)),
        TypeError,
        MSG_W,
    ),
    (
        "expand_depthwise_str",
        lambda: mpslayout.expand_depthwise(DW.astype("U3"), in_channels=6),
        TypeError,
        MSG_W,
    ),
    (
        "fc_weights_structured",
        lambda: mpslayout.fc_weights(np.zeros((2, 3), "i4,f4")),
        TypeError,
        MSG_W,
    ),
    (
        "dense_reshape_object",
        lambda: mpslayout.dense_reshape(DENSE.astype(object), shape=(3, 4, 5)),
        TypeError,
        MSG_W,
    ),
    (
        "dense_reshape_bias_complex",
        lambda: mpslayout.dense_reshape(DENSE, np.zeros(60, complex), shape=(3, 4, 5)),
        TypeError,
        r"\bb\b",
    ),
    ("bias_complex64", lambda: mpslayout.bias(np.zeros(3, np.complex64)), TypeError, r"\bb\b"),
    ("bias_str", lambda: mpslayout.bias(np.array(["1", "2"])), TypeError, r"\bb\b"),
    ("bias_object", lambda: mpslayout.bias(np.array([1.0, None])), TypeError, r"\bb\b"),
    ("bias_bool", lambda: mpslayout.bias(np.array([True, False])), TypeError, r"\bb\b"),
    ("image_slices_int32", lambda: mpslayout.image_slices(X4.astype(np.int32)), TypeError, MSG_DT),
    (
        "image_slices_structured",
        lambda: mpslayout.image_slices(np.zeros((1, 2, 2, 2), "u1,u1")),
        TypeError,
        MSG_DT,
    ),
    (
        "image_from_slices_object",
        lambda: mpslayout.image_from_slices(SLICES.astype(object), channels=5),
        TypeError,
        r"dtype|\bt\b",
    ),
    (
        "reshape_slices_complex",
        lambda: mpslayout.reshape_slices(SLICES.astype(np.complex64), src=(3, 4, 5), dst=(4, 3, 5)),
        TypeError,
        r"dtype|\bt\b",
    ),
    # dtype= requests that are not a supported cast
    (
        "dtype_arg_garbage",
        lambda: mpslayout.permute(X3, (0, 1, 2), dtype="foo"),
        TypeError,
        r"dtype",
    ),
    ("dtype_arg_int", lambda: mpslayout.permute(X3, (0, 1, 2), dtype=1), TypeError, r"dtype"),
    ("dtype_arg_object", lambda: mpslayout.permute(X3, (0, 1, 2), dtype=object), TypeError, MSG_DT),
    (
        "dtype_arg_complex",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", dtype=complex),
        TypeError,
        MSG_DT,
    ),
    (
        "dtype_arg_structured",
        lambda: mpslayout.permute(X3, (0, 1, 2), dtype=[("a", "f4")]),
        TypeError,
        MSG_DT,
    ),
    (
        "dtype_arg_float64_up",
        lambda: mpslayout.conv_weights(W4, dtype=np.float64),
        TypeError,
        MSG_W,
    ),
    (
        "dtype_arg_byteswapped_target",
        lambda: mpslayout.permute(X3, (0, 1, 2), dtype=">f2"),
        TypeError,
        MSG_DT,
    ),
    (
        "dtype_arg_byteswapped_same",
        lambda: mpslayout.permute(X3, (0, 1, 2), dtype=">f4"),
        TypeError,
        MSG_DT,
    ),
    ("dtype_arg_int8", lambda: mpslayout.permute(X3, (0, 1, 2), dtype=np.int8), TypeError, MSG_DT),
    # ---------------------------------------------------------------- out= on every converter
    (
        "convert_out_readonly",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", out=ro((2, 3, 4, 5))),
        ValueError,
        MSG_OUT,
    ),
    (
        "convert_out_wrong_shape",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", out=np.zeros((2, 5, 3, 4), F32)),
        ValueError,
        MSG_OUT,
    ),
    (
        "convert_out_wrong_dtype",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", out=np.zeros((2, 3, 4, 5), np.float16)),
        TypeError,
        MSG_OUT,
    ),
    (
        "convert_out_byteswapped",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", out=np.zeros((2, 3, 4, 5), ">f4")),
        TypeError,
        MSG_OUT,
    ),
    (
        "convert_out_fortran",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", out=fortran((2, 3, 4, 5))),
        ValueError,
        MSG_OUT,
    ),
    (
        "convert_out_negative_strides",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", out=np.zeros((2, 3, 4, 5), F32)[::-1]),
        ValueError,
        MSG_OUT,
    ),
    (
        "convert_out_broadcast",
        lambda: mpslayout.convert(
            X4, "NCHW", "NHWC", out=np.broadcast_to(np.zeros(5, F32), (2, 3, 4, 5))
        ),
        ValueError,
        MSG_OUT,
    ),
    (
        "convert_out_list",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", out=[0.0]),
        TypeError,
        MSG_OUT,
    ),
    (
        "convert_out_same_buffer",
        same_buffer(mpslayout.convert, _square((4, 4, 4, 4)), "NCHW", "NHWC"),
        ValueError,
        MSG_OUT,
    ),
    (
        "convert_out_same_buffer_identity",
        same_buffer(mpslayout.convert, _square((4, 4, 4, 4)), "NCHW", "NCHW"),
        ValueError,
        MSG_OUT,
    ),
    (
        "convert_out_overlap_half",
        _overlap_half(
            (2, 4, 2, 2),
            lambda x, **k: mpslayout.convert(x, "NCHW", "NHWC", **k),
            out_shape=(2, 2, 2, 4),
        ),
        ValueError,
        MSG_OUT,
    ),
    (
        "convert_blocked_out_wrong_shape",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW4c", out=np.zeros((2, 1, 3, 4, 4), F32)),
        ValueError,
        MSG_OUT,
    ),
    (
        "permute_out_0d",
        lambda: mpslayout.permute(X3, (0, 2, 1), out=np.zeros((), F32)),
        ValueError,
        MSG_OUT,
    ),
    ("permute_out_bytes_seen_as_other_dtype", _out_view_other_dtype, ValueError, MSG_OUT),
    ("permute_out_is_zero_stride_input", _out_zero_stride_input, ValueError, MSG_OUT),
    ("permute_cast_out_in_input_tail", _out_tail_overlap_cast, ValueError, MSG_OUT),
    ("permute_cast_f64_out_in_input", _f64_out_in_input, ValueError, MSG_OUT),
    (
        "permute_out_interleaved_views",
        lambda: mpslayout.permute(
            np.zeros(64, F32)[::2].reshape(4, 8), (1, 0), out=np.zeros(64, F32)[1::2].reshape(8, 4)
        ),
        ValueError,
        MSG_OUT,
    ),
    (
        "conv_weights_out_readonly",
        lambda: mpslayout.conv_weights(W4, out=ro((8, 3, 3, 4))),
        ValueError,
        MSG_OUT,
    ),
    (
        "conv_weights_out_wrong_dtype",
        lambda: mpslayout.conv_weights(W4, out=np.zeros((8, 3, 3, 4), np.float64)),
        TypeError,
        MSG_OUT,
    ),
    (
        "conv_weights_out_noncontig",
        lambda: mpslayout.conv_weights(W4, out=noncontig((8, 3, 3, 4))),
        ValueError,
        MSG_OUT,
    ),
    (
        "conv_weights_out_same_buffer",
        same_buffer(mpslayout.conv_weights, _square((4, 4, 4, 4))),
        ValueError,
        MSG_OUT,
    ),
    (
        "conv_weights_out_overlap_half",
        _overlap_half((4, 4, 2, 2), mpslayout.conv_weights, out_shape=(4, 2, 2, 4)),
        ValueError,
        MSG_OUT,
    ),
    (
        "conv_transpose_out_same_buffer",
        same_buffer(mpslayout.conv_transpose_weights, _square((4, 4, 4, 4))),
        ValueError,
        MSG_OUT,
    ),
    (
        "conv_transpose_out_wrong_shape",
        lambda: mpslayout.conv_transpose_weights(W4, out=np.zeros((8, 3, 3, 4), F32)),
        ValueError,
        MSG_OUT,
    ),
    (
        "depthwise_out_same_buffer",
        lambda: (lambda d: mpslayout.depthwise_weights(d, out=d.reshape(4, 2, 2)))(
            np.zeros((4, 1, 2, 2), F32)
        ),
        ValueError,
        MSG_OUT,
    ),
    (
        "depthwise_out_fortran",
        lambda: mpslayout.depthwise_weights(DW, out=fortran((6, 3, 3))),
        ValueError,
        MSG_OUT,
    ),
    ("expand_depthwise_out_overlap", _expand_depthwise_overlap, ValueError, MSG_OUT),
    (
        "expand_depthwise_out_readonly",
        lambda: mpslayout.expand_depthwise(DW, in_channels=6, out=ro((6, 3, 3, 6))),
        ValueError,
        MSG_OUT,
    ),
    (
        "expand_depthwise_out_wrong_dtype",
        lambda: mpslayout.expand_depthwise(
            DW, in_channels=6, out=np.zeros((6, 3, 3, 6), np.float16)
        ),
        TypeError,
        MSG_OUT,
    ),
    (
        "fc_out_same_buffer",
        lambda: (lambda s: mpslayout.fc_weights(s.reshape(4, 64), out=s.reshape(4, 1, 1, 64)))(
            np.zeros((4, 4, 4, 4), F32)
        ),
        ValueError,
        MSG_OUT,
    ),
    (
        "fc_out_wrong_shape",
        lambda: mpslayout.fc_weights(L, out=np.zeros((4, 60), F32)),
        ValueError,
        MSG_OUT,
    ),
    ("dense_reshape_out_same_buffer", _dense_same, ValueError, MSG_OUT),
    (
        "dense_reshape_out_wrong_dtype",
        lambda: mpslayout.dense_reshape(DENSE, shape=(3, 4, 5), out=np.zeros((60, 6), np.float16)),
        TypeError,
        MSG_OUT,
    ),
    (
        "dense_reshape_out_readonly",
        lambda: mpslayout.dense_reshape(DENSE, shape=(3, 4, 5), out=ro((60, 6))),
        ValueError,
        MSG_OUT,
    ),
    ("bias_out_same_buffer", same_buffer(mpslayout.bias, np.zeros(16, F32)), ValueError, MSG_OUT),
    ("bias_out_overlap", _bias_overlap, ValueError, MSG_OUT),
    ("bias_out_readonly", lambda: mpslayout.bias(np.zeros(3), out=ro((3,))), ValueError, MSG_OUT),
    (
        "bias_out_wrong_dtype",
        lambda: mpslayout.bias(np.zeros(3), out=np.zeros(3)),
        TypeError,
        MSG_OUT,
    ),
    (
        "bias_out_noncontig",
        lambda: mpslayout.bias(np.zeros(3), out=noncontig((3,))),
        ValueError,
        MSG_OUT,
    ),
    (
        "image_slices_out_same_buffer",
        same_buffer(mpslayout.image_slices, _square((4, 4, 4, 4))),
        ValueError,
        MSG_OUT,
    ),
    (
        "image_slices_out_readonly",
        lambda: mpslayout.image_slices(X4, out=ro((4, 3, 4, 4))),
        ValueError,
        MSG_OUT,
    ),
    (
        "image_slices_out_wrong_shape",
        lambda: mpslayout.image_slices(X4, out=np.zeros((2, 3, 4, 5), F32)),
        ValueError,
        MSG_OUT,
    ),
    (
        "image_from_slices_out_same_buffer",
        same_buffer(mpslayout.image_from_slices, _square((4, 4, 4, 4)), channels=4),
        ValueError,
        MSG_OUT,
    ),
    (
        "image_from_slices_out_wrong_shape",
        lambda: mpslayout.image_from_slices(SLICES, channels=5, out=np.zeros((2, 8, 3, 4), F32)),
        ValueError,
        MSG_OUT,
    ),
    (
        "image_from_slices_out_noncontig",
        lambda: mpslayout.image_from_slices(SLICES, channels=5, out=noncontig((2, 5, 3, 4))),
        ValueError,
        MSG_OUT,
    ),
    (
        "reshape_slices_out_readonly",
        lambda: mpslayout.reshape_slices(
            SLICES, src=(3, 4, 5), dst=(4, 3, 5), out=ro((4, 4, 3, 4))
        ),
        ValueError,
        MSG_OUT,
    ),
    (
        "reshape_slices_out_wrong_dtype",
        lambda: mpslayout.reshape_slices(
            SLICES, src=(3, 4, 5), dst=(4, 3, 5), out=np.zeros((4, 4, 3, 4), np.float16)
        ),
        TypeError,
        MSG_OUT,
    ),
    # ---------------------------------------------------------------- layout strings
    (
        "layout_lowercase_both",
        lambda: mpslayout.convert(X4, "nchw", "nchw"),
        ValueError,
        r"\bsrc\b",
    ),
    ("layout_mixed_case", lambda: mpslayout.convert(X4, "NcHW", "NHWC"), ValueError, r"\bsrc\b"),
    (
        "layout_repeated_all",
        lambda: mpslayout.convert(X4, "NNNN", "NNNN"),
        ValueError,
        r"\bsrc\b.*repeat",
    ),
    (
        "layout_repeated_dst_only",
        lambda: mpslayout.convert(X4, "NCHW", "NCCW"),
        ValueError,
        r"\bdst\b.*repeat",
    ),
    (
        "layout_missing_letter_dst",
        lambda: mpslayout.convert(X4, "NCHW", "NCH"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "layout_extra_letter_dst",
        lambda: mpslayout.convert(X4, "NCHW", "NCHWD"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "layout_missing_letter_src",
        lambda: mpslayout.convert(X4, "NCH", "NCHW"),
        ValueError,
        r"\bsrc\b",
    ),
    ("layout_empty_src", lambda: mpslayout.convert(X4, "", "NCHW"), ValueError, r"\bsrc\b"),
    ("layout_empty_dst", lambda: mpslayout.convert(X4, "NCHW", ""), ValueError, r"\bdst\b"),
    ("layout_space", lambda: mpslayout.convert(X4, "NCHW", "NC HW"), ValueError, r"\bdst\b"),
    (
        "layout_trailing_newline",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC\n"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "layout_fullwidth_letter",
        lambda: mpslayout.convert(X4, "NCHW", "\uff2eCHW"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "layout_digit_not_block",
        lambda: mpslayout.convert(X4, "NCHW", "NC4HW"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "layout_block_uppercase",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW4C"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "layout_block_without_size",
        lambda: mpslayout.convert(X4, "NCHW", "NCHWc"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "layout_block_negative",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW-4c"),
        ValueError,
        r"\bdst\b",
    ),
    (
        "layout_block_twice",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW4c4c"),
        ValueError,
        r"\bdst\b.*twice",
    ),
    (
        "layout_block_0_src",
        lambda: mpslayout.convert(BLOCKED, "NCHW0c", "NCHW", channels=5),
        ValueError,
        r"\bsrc\b.*block size 0",
    ),
    (
        "layout_block_00",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW00c"),
        ValueError,
        r"\bdst\b.*block size 0",
    ),
    (
        "layout_block_0_second",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW4c0h"),
        ValueError,
        r"\bdst\b.*block size 0",
    ),
    ("layout_none", lambda: mpslayout.convert(X4, "NCHW", None), TypeError, r"\bdst\b"),
    ("layout_bytes", lambda: mpslayout.convert(X4, b"NCHW", "NHWC"), TypeError, r"\bsrc\b"),
    (
        "layout_list",
        lambda: mpslayout.convert(X4, list("NCHW"), "NHWC"),
        TypeError,
        r"\bsrc\b",
    ),
    (
        "layout_26_letters",
        lambda: mpslayout.convert(
            np.zeros((1,) * 26), "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "ZYXWVUTSRQPONMLKJIHGFEDCBA"
        ),
        ValueError,
        r"\bx\b",
    ),
    (
        "sizes_lowercase_key",
        lambda: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW", sizes={"c": 5}),
        ValueError,
        r"sizes",
    ),
    (
        "sizes_not_a_mapping",
        lambda: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW", sizes=[5]),
        TypeError,
        r"sizes",
    ),
    (
        "channels_float",
        lambda: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW", channels=5.0),
        TypeError,
        r"channels",
    ),
    (
        "channels_bool",
        lambda: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW", channels=True),
        TypeError,
        r"channels",
    ),
    (
        "image_layout_lowercase",
        lambda: mpslayout.image_slices(X4, layout="nchw"),
        ValueError,
        r"layout",
    ),
    (
        "conv_weights_layout_lowercase",
        lambda: mpslayout.conv_weights(W4, layout="oihw"),
        ValueError,
        r"layout",
    ),
    ("fc_layout_repeated", lambda: mpslayout.fc_weights(L, layout="OO"), ValueError, r"layout"),
    # ---------------------------------------------------------------- threads and axes
    (
        "threads_2_31",
        lambda: mpslayout.permute(X3, (1, 0, 2), threads=2**31),
        ValueError,
        r"threads",
    ),
    (
        "set_threads_2_40",
        lambda: _set_threads_then_call(2**40),
        ValueError,
        r"threads|\bn\b",
    ),
    (
        "threads_float",
        lambda: mpslayout.convert(X4, "NCHW", "NHWC", threads=2.0),
        TypeError,
        r"threads",
    ),
    (
        "threads_np_negative",
        lambda: mpslayout.conv_weights(W4, threads=np.int8(-1)),
        ValueError,
        r"threads",
    ),
    ("threads_bool", lambda: mpslayout.image_slices(X4, threads=True), TypeError, r"threads"),
    ("set_threads_str", lambda: mpslayout.set_threads("4"), TypeError, r"\bn\b|threads"),
    ("axes_none", lambda: mpslayout.permute(X3, None), TypeError, r"axes"),
    ("axes_str", lambda: mpslayout.permute(X3, "012"), TypeError, r"axes"),
    (
        "axes_float",
        lambda: mpslayout.permute(X3, (0.0, 1, 2)),
        TypeError,
        r"axes",
    ),
    ("axes_np_float", lambda: mpslayout.permute(X3, np.array([0.0, 1.0, 2.0])), TypeError, r"axes"),
    ("axes_bool", lambda: mpslayout.permute(X2, (True, False)), TypeError, r"axes"),
    ("axes_nested", lambda: mpslayout.permute(X2, ((0,), (1,))), TypeError, r"axes"),
]


def _set_threads_then_call(n: int) -> Any:
    try:
        mpslayout.set_threads(n)
        return mpslayout.permute(X3, (1, 0, 2))
    finally:
        mpslayout.set_threads(None)


def _params() -> list[Any]:
    params = []
    for row in CASES:
        case_id, call, exc, match = row[:4]
        marks = []
        if len(row) > 4:
            assert row[4] == BUG
            marks.append(pytest.mark.xfail(strict=True, reason=row[5]))
        params.append(pytest.param(call, exc, match, id=case_id, marks=marks))
    return params


N_CASES = len(CASES)
assert len({c[0] for c in CASES}) == N_CASES, "duplicate case ids"


@pytest.mark.parametrize(("call", "exc", "match"), _params())
def test_hostile_input(call: Callable[[], Any], exc: Any, match: str) -> None:
    with pytest.raises(exc, match=match) as info:
        call()
    # never some unrelated subclass (IndexError from the engine's last-line bounds check is a
    # bug, not a refusal)
    assert not isinstance(info.value, (IndexError, KeyError))


def test_case_count() -> None:
    """The closing note of issue 6 reports this number; keep it honest."""
    assert N_CASES >= 150


def test_huge_failure_leaves_out_untouched() -> None:
    out = np.full((4, 4), 7, np.uint8)
    x = huge((2**20, 2**20, 2**20))
    with pytest.raises(ValueError, match=MSG_OUT):
        mpslayout.permute(x, (2, 1, 0), out=out)
    assert (out == 7).all()


def test_reshape_slices_out_same_buffer_is_refused_or_right() -> None:
    """reshape_slices goes through an intermediate: out=t may be allowed, but then exact."""
    t = _square((4, 4, 4, 4))
    want = mpslayout.reshape_slices(t.copy(), src=(4, 4, 4), dst=(4, 4, 4))
    try:
        got = mpslayout.reshape_slices(t, src=(4, 4, 4), dst=(4, 4, 4), out=t)
    except ValueError as e:
        refusal = str(e)
    else:
        assert got is t
        np.testing.assert_array_equal(got, want)
        return
    assert "out" in refusal


# ---------------------------------------------------------------- byte-swapped inputs

SWAPPED = [">f4", ">f2", ">f8", ">i2", ">u4", ">i8", ">c8"]
MPS_SWAPPED = [">f4", ">f2", ">f8"]


def _forms(a: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in several memory layouts (native byte order kept by the caller)."""
    padded = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
    padded[..., ::2] = a
    flipped = np.ascontiguousarray(a[::-1])[::-1]
    return {
        "contiguous": a.copy(),
        "fortran": np.asfortranarray(a),
        "strided": padded[..., ::2],
        "negative": flipped,
    }


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    """Same shape, values bit for bit (byte order aside), dtype equal up to byte order."""
    if got.shape != want.shape or got.dtype.newbyteorder("=") != want.dtype.newbyteorder("="):
        return False
    g = got.astype(got.dtype.newbyteorder("="))
    w = want.astype(want.dtype.newbyteorder("="))
    return g.tobytes() == w.tobytes()


@pytest.mark.parametrize("dt", SWAPPED)
@pytest.mark.parametrize("form", ["contiguous", "fortran", "strided", "negative"])
def test_byteswapped_permute_and_convert(dt: str, form: str) -> None:
    native = rng.standard_normal((2, 5, 3, 4)).astype(np.dtype(dt).newbyteorder("="))
    x = _forms(native.astype(dt))[form]
    got = mpslayout.permute(x, (0, 2, 3, 1))
    # numpy keeps the byte order through transpose; so does permute (bytes move unchanged)
    assert got.dtype == np.dtype(dt)
    assert _same(got, np.ascontiguousarray(native.transpose(0, 2, 3, 1)))
    got = mpslayout.convert(x, "NCHW", "NCHW4c")
    assert _same(got, slow.convert(native, "NCHW", "NCHW4c"))
    back = mpslayout.convert(got, "NCHW4c", "NCHW", channels=5)
    assert _same(back, native)


@pytest.mark.parametrize("dt", [">f4", ">f2", ">f8"])
@pytest.mark.parametrize("form", ["contiguous", "strided", "negative"])
def test_byteswapped_casts(dt: str, form: str) -> None:
    native = rng.standard_normal((3, 9, 17)).astype(np.dtype(dt).newbyteorder("="))
    x = _forms(native.astype(dt))[form]
    targets = {">f4": [np.float16, *([BF16] if BF16 else [])], ">f2": [F32], ">f8": [F32]}[dt]
    for target in targets:
        got = mpslayout.permute(x, (2, 0, 1), dtype=target)
        want = np.ascontiguousarray(native.transpose(2, 0, 1)).astype(target)
        assert got.dtype == np.dtype(target)
        assert got.tobytes() == want.tobytes()


def _mps_calls() -> list[tuple[str, Callable[..., Any], tuple[int, ...]]]:
    """(name, f(x) using the fast or slow module, input shape)."""
    return [
        ("conv_weights", lambda m, x: m.conv_weights(x), (4, 6, 3, 5)),
        ("conv_weights_hwio", lambda m, x: m.conv_weights(x, layout="HWIO"), (3, 5, 6, 4)),
        ("conv_transpose", lambda m, x: m.conv_transpose_weights(x), (4, 6, 3, 5)),
        ("conv_transpose_g2", lambda m, x: m.conv_transpose_weights(x, groups=2), (8, 4, 3, 5)),
        ("depthwise", lambda m, x: m.depthwise_weights(x), (6, 1, 3, 5)),
        ("depthwise_hwcm", lambda m, x: m.depthwise_weights(x, layout="HWCM"), (3, 5, 6, 1)),
        ("expand_depthwise", lambda m, x: m.expand_depthwise(x, in_channels=3), (6, 1, 3, 5)),
        ("expand_depthwise_hwcm", lambda m, x: m.expand_depthwise(x, layout="HWCM"), (3, 5, 3, 2)),
        ("fc", lambda m, x: m.fc_weights(x, input_shape=(2, 3, 4)), (5, 24)),
        ("fc_io", lambda m, x: m.fc_weights(x, layout="IO"), (24, 5)),
        ("dense_rows", lambda m, x: m.dense_reshape(x, shape=(2, 3, 4))[0], (24, 5)),
        (
            "dense_ct",
            lambda m, x: m.dense_reshape(x, shape=(2, 3, 4), target="conv_transpose")[0],
            (24, 5),
        ),
        ("image_slices", lambda m, x: m.image_slices(x), (2, 5, 3, 4)),
        ("image_from_slices", lambda m, x: m.image_from_slices(x, channels=5), (4, 3, 4, 4)),
        (
            "reshape_slices",
            lambda m, x: m.reshape_slices(x, src=(3, 4, 5), dst=(4, 3, 5)),
            (4, 3, 4, 4),
        ),
    ]


# The MPS weight converters take their strides from the byte-swapped array and then run the
# engine on the native copy that resolve_dtype made (mps._move): any input whose copy has
# other strides is refused with the engine's internal IndexError, or converted WRONGLY.
def _mps_swapped_params() -> list[Any]:
    params = []
    for name, call, shape in _mps_calls():
        for form in ["contiguous", "fortran", "strided", "negative"]:
            params.append(pytest.param(call, shape, form, id=f"{name}-{form}"))
    return params


@pytest.mark.parametrize("dt", MPS_SWAPPED)
@pytest.mark.parametrize(("call", "shape", "form"), _mps_swapped_params())
def test_byteswapped_mps_converters(
    call: Callable[..., Any], shape: tuple[int, ...], form: str, dt: str
) -> None:
    native = rng.standard_normal(shape).astype(np.dtype(dt).newbyteorder("="))
    x = _forms(native.astype(dt))[form]
    want = call(slow, native)
    try:
        got = call(mpslayout, x)
    except (TypeError, ValueError) as e:  # a clear refusal is allowed
        refusal = str(e)
    else:
        assert got.dtype.isnative
        assert _same(got, want)
        return
    assert "byte" in refusal or "order" in refusal, refusal


def test_byteswapped_overlapping_window_is_not_silently_wrong() -> None:
    """Minimal reproducer: fc_weights of a byte-swapped sliding window returns wrong rows."""
    v = np.arange(10, dtype=">f4")
    w = sliding_window_view(v, 4)  # (7, 4), strides (4, 4): rows overlap
    try:
        got = mpslayout.fc_weights(w)
    except (TypeError, ValueError):
        return
    np.testing.assert_array_equal(got.reshape(7, 4), w.astype(F32))


@pytest.mark.parametrize("dt", [">i8", ">f4", ">f2"])
def test_byteswapped_identity_dtype(dt: str) -> None:
    x = np.arange(6).astype(dt).reshape(2, 3)
    got = mpslayout.permute(x, (1, 0), dtype=x.dtype)  # numpy: x.T.astype(x.dtype) is fine
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, x.T)


def test_byteswapped_output_dtype_is_refused_clearly() -> None:
    x = np.arange(6, dtype=F32).reshape(2, 3)
    with pytest.raises(TypeError, match=r"native byte order.*byteswap"):
        mpslayout.permute(x, (1, 0), dtype=">f2")


def test_native_overlapping_window_is_right() -> None:
    v = np.arange(10, dtype=F32)
    w = sliding_window_view(v, 4)
    np.testing.assert_array_equal(mpslayout.fc_weights(w).reshape(7, 4), w)
    np.testing.assert_array_equal(mpslayout.permute(w, (1, 0)), w.T)
    np.testing.assert_array_equal(mpslayout.permute(w.astype(">f4"), (1, 0)), w.T)


# ---------------------------------------------------------------- NaN / Inf through casts

_CASTS = [(F32, np.float16), (np.float16, F32), (np.float64, F32)]
if BF16 is not None:
    _CASTS += [(F32, BF16), (BF16, F32)]

_SPECIAL = {
    2: [0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7FFF, 0xFFFF, 0x7D00],
    4: [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF,
        0xFFFFFFFF, 0x7FA00000, 0x7F802000],
    8: [0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0xFFF8000000000000,
        0x7FF0000000000001, 0xFFF0000000000001, 0x7FFFFFFFFFFFFFFF, 0x7FF0000020000000],
}  # fmt: skip
_BF16_SPECIAL = [0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF]
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _specials_array(dt: Any, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Ordinary values with NaNs (quiet, signalling, with payloads, both signs) and
    infinities at random places, at about one element in three."""
    dt = np.dtype(dt)
    r = np.random.default_rng(seed)
    u = _UINT[dt.itemsize]
    with np.errstate(all="ignore"):
        base = r.standard_normal(shape).astype(dt)
    bits = base.view(u).copy()
    pool = np.array(_BF16_SPECIAL if dt == BF16 else _SPECIAL[dt.itemsize], dtype=u)
    pick = r.random(shape) < 0.35
    bits[pick] = pool[r.integers(0, len(pool), int(pick.sum()))]
    return bits.view(dt)


def _kind(a: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, 2 +inf, 3 -inf."""
    with np.errstate(all="ignore"):
        f = a.astype(np.float64) if a.dtype == BF16 else a
        return np.select([np.isnan(f), f == np.inf, f == -np.inf], [1, 2, 3], 0)


@pytest.mark.parametrize(("src", "dst"), _CASTS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((5, 3), (1, 0)),  # scalar edge paths
        ((64, 48), (1, 0)),  # 8x8 SIMD blocks, NaN lanes fall back to scalar
        ((3, 40, 24), (0, 2, 1)),
        ((1000,), (0,)),  # contiguous rows (vector row kernels)
        ((37, 3), (1, 0)),  # narrow destination (interleave kernels)
        ((4, 61), (1, 0)),
    ],
    ids=str,
)
def test_nan_inf_keep_their_kind_through_casts(src: Any, dst: Any, shape: Any, axes: Any) -> None:
    for seed in range(3):
        x = _specials_array(src, shape, seed)
        got = mpslayout.permute(x, axes, dtype=dst)
        t = np.ascontiguousarray(x.transpose(axes))
        with np.errstate(all="ignore"):
            want = t.astype(dst)
        k_in, k_out = _kind(t), _kind(got)
        special = k_in != 0
        np.testing.assert_array_equal(k_out[special], k_in[special])
        # the sign of a NaN survives too (numpy and ml_dtypes keep it)
        nan = k_in == 1
        u_in, u_out = _UINT[t.dtype.itemsize], _UINT[got.dtype.itemsize]
        sign_in = t.view(u_in) >> (8 * t.dtype.itemsize - 1)
        sign_out = got.view(u_out) >> (8 * got.dtype.itemsize - 1)
        np.testing.assert_array_equal(sign_out[nan], sign_in[nan])
        # and every element is numpy's bits
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize(("src", "dst"), _CASTS, ids=lambda d: np.dtype(d).name)
def test_nan_inf_through_mps_converters(src: Any, dst: Any) -> None:
    w = _specials_array(src, (16, 8, 3, 3), 11)
    got = mpslayout.conv_weights(w, dtype=dst)
    t = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    with np.errstate(all="ignore"):
        want = t.astype(dst)
    np.testing.assert_array_equal(_kind(got), _kind(want))
    assert got.tobytes() == want.tobytes()
    x = _specials_array(src, (2, 10, 9, 9), 12)
    got = mpslayout.image_slices(x, dtype=dst)
    want = slow.image_slices(x, dtype=dst)
    np.testing.assert_array_equal(_kind(got), _kind(want))
    assert got.tobytes() == want.tobytes()
