"""The bad-input matrix: every rejected input raises the documented exception type with a
message that names the offending argument, and a failed call leaves ``out`` untouched.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mpslayout

rng = np.random.default_rng(0)
X3 = rng.standard_normal((2, 3, 4)).astype(np.float32)
X4 = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)  # NCHW
BLOCKED = np.zeros((2, 2, 3, 4, 4), dtype=np.float32)  # NCHW4c of C=5..8
W4 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)  # OIHW
W6 = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
WT = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)  # IOHW, I=6
DW = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
DW_HWCM2 = rng.standard_normal((3, 3, 6, 2)).astype(np.float32)
L = rng.standard_normal((4, 60)).astype(np.float32)  # (O, N)
DENSE = rng.standard_normal((3 * 4 * 5, 6)).astype(np.float32)  # (H*W*C, I) for shape (3,4,5)
DENSE_SQ = rng.standard_normal((3 * 3 * 2, 6)).astype(np.float32)  # for shape (3,3,2)
BIAS_NONCONST = np.arange(3 * 3 * 2, dtype=np.float32)
BIAS_60 = np.zeros(60, dtype=np.float32)


def _out(shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


def _readonly_out():
    o = np.zeros((2, 4, 3), dtype=np.float32)
    o.setflags(write=False)
    return o


def _noncontig_out():
    return np.zeros((2, 4, 6), dtype=np.float32)[:, :, ::2]


def _same_buffer():
    x = np.zeros((4, 4), dtype=np.float32)
    return mpslayout.permute(x, (1, 0), out=x)


def _same_buffer_identity():
    x = np.zeros((4, 4), dtype=np.float32)
    return mpslayout.permute(x, (0, 1), out=x)


def _overlapping_view():
    base = np.zeros(32, dtype=np.float32)
    x = base[:16].reshape(4, 4)
    out = base[8:24].reshape(4, 4)
    return mpslayout.permute(x, (1, 0), out=out)


def _overlapping_strided_view():
    base = np.zeros((4, 8), dtype=np.float32)
    x = base[:, ::2]  # non-contiguous input view of base
    out = base.reshape(-1)[:16].reshape(4, 4)
    return mpslayout.permute(x, (1, 0), out=out)


def _structured():
    return np.zeros(4, dtype=[("a", np.int32), ("b", np.float32)])


# (id, call, exception type, regex the message must match)
CASES = [
    # --- ndim of weights
    ("conv_weights_3d", lambda: mpslayout.conv_weights(X3), ValueError, r"\bw\b"),
    ("conv_weights_5d", lambda: mpslayout.conv_weights(X4[..., None]), ValueError, r"\bw\b"),
    (
        "conv_weights_2d_hwio",
        lambda: mpslayout.conv_weights(L, layout="HWIO"),
        ValueError,
        r"\bw\b",
    ),
    ("depthwise_3d", lambda: mpslayout.depthwise_weights(X3), ValueError, r"\bw\b"),
    ("depthwise_shape1_not_1", lambda: mpslayout.depthwise_weights(W4), ValueError, r"\bw\b"),
    (
        "expand_depthwise_3d",
        lambda: mpslayout.expand_depthwise(X3, in_channels=2),
        ValueError,
        r"\bw\b",
    ),
    ("conv_transpose_2d", lambda: mpslayout.conv_transpose_weights(L), ValueError, r"\bw\b"),
    ("fc_weights_3d", lambda: mpslayout.fc_weights(X3), ValueError, r"\bw\b"),
    (
        "dense_reshape_1d",
        lambda: mpslayout.dense_reshape(BIAS_60, shape=(3, 4, 5)),
        ValueError,
        r"\bw\b",
    ),
    ("bias_2d", lambda: mpslayout.bias(L), ValueError, r"\bb\b"),
    # --- axes
    ("axes_repeat", lambda: mpslayout.permute(X3, (0, 0, 1)), ValueError, r"axes"),
    ("axes_out_of_range", lambda: mpslayout.permute(X3, (0, 1, 3)), ValueError, r"axes"),
    ("axes_neg_out_of_range", lambda: mpslayout.permute(X3, (-4, 0, 1)), ValueError, r"axes"),
    ("axes_too_short", lambda: mpslayout.permute(X3, (0, 1)), ValueError, r"axes"),
    ("axes_too_long", lambda: mpslayout.permute(X3, (0, 1, 2, 3)), ValueError, r"axes"),
    (
        "ndim_9",
        lambda: mpslayout.permute(np.zeros((1,) * 9), tuple(range(9))),
        ValueError,
        r"\bx\b|ndim|dim",
    ),
    # --- layouts
    ("layout_unknown_char", lambda: mpslayout.convert(X4, "NC#W", "NCW#"), ValueError, r"src|#"),
    ("layout_lowercase", lambda: mpslayout.convert(X4, "nchw", "nhwc"), ValueError, r"src|nchw"),
    (
        "layout_lowercase_dst",
        lambda: mpslayout.convert(X4, "NCHW", "NHWc"),
        ValueError,
        r"dst|NHWc",
    ),
    (
        "layout_repeated_src",
        lambda: mpslayout.convert(X4, "NCHH", "NHCH"),
        ValueError,
        r"src|repeat|NCHH",
    ),
    (
        "layout_repeated_dst",
        lambda: mpslayout.convert(X4, "NCHW", "NHWW"),
        ValueError,
        r"dst|repeat|NHWW",
    ),
    ("layout_mismatched_letters", lambda: mpslayout.convert(X4, "NCHW", "NCHX"), ValueError, r"X"),
    (
        "layout_wrong_length",
        lambda: mpslayout.convert(X4, "NCH", "HCN"),
        ValueError,
        r"src|ndim|dim|NCH",
    ),
    (
        "block_size_0",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW0c"),
        ValueError,
        r"dst|block|NCHW0c",
    ),
    (
        "block_letter_not_in_layout",
        lambda: mpslayout.convert(X4, "NCHW", "NCHW4d"),
        ValueError,
        r"dst|NCHW4d",
    ),
    (
        "from_blocked_without_channels",
        lambda: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW"),
        ValueError,
        r"channels|sizes",
    ),
    (
        "conv_weights_bad_layout",
        lambda: mpslayout.conv_weights(W4, layout="XYZW"),
        ValueError,
        r"layout",
    ),
    (
        "image_slices_bad_layout",
        lambda: mpslayout.image_slices(X4, layout="NWHC"),
        ValueError,
        r"layout",
    ),
    # --- groups
    ("groups_not_dividing", lambda: mpslayout.conv_weights(W6, groups=4), ValueError, r"groups"),
    ("groups_zero", lambda: mpslayout.conv_weights(W4, groups=0), ValueError, r"groups"),
    (
        "ct_groups_not_dividing",
        lambda: mpslayout.conv_transpose_weights(WT, groups=4),
        ValueError,
        r"groups",
    ),
    (
        "ct_hwoi_groups",
        lambda: mpslayout.conv_transpose_weights(W4, layout="HWOI", groups=2),
        ValueError,
        r"groups",
    ),
    # --- out
    (
        "out_wrong_shape",
        lambda: mpslayout.permute(X3, (0, 2, 1), out=_out((2, 3, 4))),
        ValueError,
        r"\bout\b",
    ),
    (
        "out_wrong_dtype",
        lambda: mpslayout.permute(X3, (0, 2, 1), out=_out((2, 4, 3), np.float64)),
        TypeError,
        r"\bout\b",
    ),
    (
        "out_noncontiguous",
        lambda: mpslayout.permute(X3, (0, 2, 1), out=_noncontig_out()),
        ValueError,
        r"\bout\b",
    ),
    (
        "out_readonly",
        lambda: mpslayout.permute(X3, (0, 2, 1), out=_readonly_out()),
        ValueError,
        r"\bout\b",
    ),
    ("out_same_buffer", _same_buffer, ValueError, r"\bout\b"),
    ("out_same_buffer_identity", _same_buffer_identity, ValueError, r"\bout\b"),
    ("out_overlapping_view", _overlapping_view, ValueError, r"\bout\b"),
    ("out_overlapping_strided_view", _overlapping_strided_view, ValueError, r"\bout\b"),
    (
        "out_not_ndarray",
        lambda: mpslayout.permute(X3, (0, 2, 1), out=[0.0] * 24),
        TypeError,
        r"\bout\b",
    ),
    (
        "out_wrong_dtype_cast",
        lambda: mpslayout.permute(X3, (0, 2, 1), dtype=np.float16, out=_out((2, 4, 3))),
        TypeError,
        r"\bout\b",
    ),
    (
        "conv_out_wrong_shape",
        lambda: mpslayout.conv_weights(W4, out=_out((8, 4, 3, 3))),
        ValueError,
        r"\bout\b",
    ),
    (
        "bias_out_wrong_shape",
        lambda: mpslayout.bias(BIAS_60, out=_out((59,))),
        ValueError,
        r"\bout\b",
    ),
    # --- dtypes
    (
        "dtype_object",
        lambda: mpslayout.permute(np.array([1, "a", None], dtype=object), (0,)),
        TypeError,
        r"dtype|\bx\b",
    ),
    (
        "dtype_str",
        lambda: mpslayout.permute(np.array(["ab", "cd"]), (0,)),
        TypeError,
        r"dtype|\bx\b",
    ),
    (
        "dtype_complex128",
        lambda: mpslayout.permute(np.zeros((2, 2), np.complex128), (1, 0)),
        TypeError,
        r"dtype|\bx\b",
    ),
    ("dtype_structured", lambda: mpslayout.permute(_structured(), (0,)), TypeError, r"dtype|\bx\b"),
    (
        "cast_int32_to_float16",
        lambda: mpslayout.permute(np.zeros((2, 3), np.int32), (1, 0), dtype=np.float16),
        TypeError,
        r"dtype|\bx\b",
    ),
    (
        "cast_float16_to_float64",
        lambda: mpslayout.permute(np.zeros((2, 3), np.float16), (1, 0), dtype=np.float64),
        TypeError,
        r"dtype|\bx\b",
    ),
    (
        "convert_cast_int8_to_float32",
        lambda: mpslayout.convert(X4.astype(np.int8), "NCHW", "NHWC", dtype=np.float32),
        TypeError,
        r"dtype|\bx\b",
    ),
    (
        "conv_weights_int32",
        lambda: mpslayout.conv_weights(W4.astype(np.int32)),
        TypeError,
        r"dtype|\bw\b",
    ),
    (
        "conv_weights_complex64",
        lambda: mpslayout.conv_weights(W4.astype(np.complex64)),
        TypeError,
        r"dtype|\bw\b",
    ),
    # --- threads
    ("threads_0", lambda: mpslayout.permute(X3, (1, 0, 2), threads=0), ValueError, r"threads"),
    ("threads_neg", lambda: mpslayout.permute(X3, (1, 0, 2), threads=-1), ValueError, r"threads"),
    ("threads_str", lambda: mpslayout.permute(X3, (1, 0, 2), threads="2"), TypeError, r"threads"),
    ("conv_threads_0", lambda: mpslayout.conv_weights(W4, threads=0), ValueError, r"threads"),
    ("set_threads_0", lambda: mpslayout.set_threads(0), ValueError, r"threads|\bn\b"),
    # --- depthwise
    (
        "depthwise_multiplier_oihw",
        lambda: mpslayout.depthwise_weights(DW, in_channels=3),
        ValueError,
        r"expand_depthwise",
    ),
    (
        "depthwise_multiplier_hwcm",
        lambda: mpslayout.depthwise_weights(DW_HWCM2, layout="HWCM"),
        ValueError,
        r"expand_depthwise",
    ),
    (
        "expand_depthwise_no_in_channels",
        lambda: mpslayout.expand_depthwise(DW),
        ValueError,
        r"in_channels",
    ),
    # --- dense / fc
    (
        "dense_reshape_ct_nonconst_bias",
        lambda: mpslayout.dense_reshape(
            DENSE_SQ, BIAS_NONCONST, shape=(3, 3, 2), target="conv_transpose"
        ),
        ValueError,
        r"\bb\b|bias",
    ),
    (
        "dense_reshape_subpixel_h_ne_w",
        lambda: mpslayout.dense_reshape(DENSE, None, shape=(3, 4, 5), target="subpixel"),
        ValueError,
        r"shape|\bH\b|\bW\b",
    ),
    (
        "dense_reshape_bias_length",
        lambda: mpslayout.dense_reshape(DENSE, BIAS_60[:59], shape=(3, 4, 5)),
        ValueError,
        r"\bb\b|bias",
    ),
    (
        "dense_reshape_rows_mismatch",
        lambda: mpslayout.dense_reshape(DENSE, None, shape=(3, 4, 4)),
        ValueError,
        r"\bw\b|shape",
    ),
    (
        "dense_reshape_bad_target",
        lambda: mpslayout.dense_reshape(DENSE, None, shape=(3, 4, 5), target="cols"),
        ValueError,
        r"target",
    ),
    (
        "dense_reshape_bad_order",
        lambda: mpslayout.dense_reshape(DENSE, None, shape=(3, 4, 5), order="WHC"),
        ValueError,
        r"order",
    ),
    (
        "fc_input_shape_volume",
        lambda: mpslayout.fc_weights(L, input_shape=(5, 3, 3)),
        ValueError,
        r"input_shape",
    ),
    (
        "fc_bad_flatten",
        lambda: mpslayout.fc_weights(L, input_shape=(5, 3, 4), flatten="WHC"),
        ValueError,
        r"flatten",
    ),
]


@pytest.mark.parametrize(("call", "exc", "match"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_exception_types_are_exactly_documented():
    """ValueError / TypeError, not some unrelated subclass (e.g. IndexError is not OK)."""
    with pytest.raises(ValueError, match="axes") as info:
        mpslayout.permute(X3, (0, 1, 5))
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, (IndexError, KeyError))


# ---------------------------------------------------------------- out unchanged on failure

SENTINEL = 0x7E


def _sentinel(shape, dtype=np.float32):
    o = np.empty(shape, dtype=dtype)
    o.view(np.uint8).fill(SENTINEL)
    return o


FAILING_WITH_OUT = [
    (
        "bad_axes",
        lambda out: mpslayout.permute(X3, (0, 0, 1), out=out),
        (2, 4, 3),
        np.float32,
        ValueError,
    ),
    (
        "threads_0",
        lambda out: mpslayout.permute(X3, (0, 2, 1), out=out, threads=0),
        (2, 4, 3),
        np.float32,
        ValueError,
    ),
    (
        "bad_cast",
        lambda out: mpslayout.permute(X3.astype(np.int32), (0, 2, 1), dtype=np.float16, out=out),
        (2, 4, 3),
        np.float16,
        TypeError,
    ),
    (
        "wrong_out_dtype",
        lambda out: mpslayout.permute(X3, (0, 2, 1), out=out),
        (2, 4, 3),
        np.float64,
        TypeError,
    ),
    (
        "wrong_out_shape",
        lambda out: mpslayout.permute(X3, (0, 2, 1), out=out),
        (2, 3, 4),
        np.float32,
        ValueError,
    ),
    (
        "convert_bad_dst",
        lambda out: mpslayout.convert(X4, "NCHW", "NHWX", out=out),
        (2, 3, 4, 5),
        np.float32,
        ValueError,
    ),
    (
        "convert_blocked_no_channels",
        lambda out: mpslayout.convert(BLOCKED, "NCHW4c", "NCHW", out=out),
        (2, 5, 3, 4),
        np.float32,
        ValueError,
    ),
    (
        "conv_groups",
        lambda out: mpslayout.conv_weights(W6, groups=4, out=out),
        (6, 3, 3, 1),
        np.float32,
        ValueError,
    ),
    (
        "depthwise_multiplier",
        lambda out: mpslayout.depthwise_weights(DW_HWCM2, layout="HWCM", out=out),
        (6, 3, 3),
        np.float32,
        ValueError,
    ),
    (
        "fc_volume",
        lambda out: mpslayout.fc_weights(L, input_shape=(5, 3, 3), out=out),
        (4, 3, 3, 5),
        np.float32,
        ValueError,
    ),
]


@pytest.mark.parametrize(
    ("call", "shape", "dtype", "exc"), [pytest.param(*c[1:], id=c[0]) for c in FAILING_WITH_OUT]
)
def test_out_unchanged_after_failure(call, shape, dtype, exc):
    out = _sentinel(shape, dtype)
    with pytest.raises(exc):
        call(out)
    assert (out.view(np.uint8) == SENTINEL).all()


def test_overlap_failure_leaves_buffer_unchanged():
    base = np.arange(32, dtype=np.float32)
    before = base.copy()
    x = base[:16].reshape(4, 4)
    out = base[8:24].reshape(4, 4)
    with pytest.raises(ValueError, match=r"\bout\b"):
        mpslayout.permute(x, (1, 0), out=out)
    np.testing.assert_array_equal(base, before)


# ---------------------------------------------------------------- group warnings


def test_warning_class_is_userwarning():
    assert issubclass(mpslayout.MPSLayoutWarning, UserWarning)


@pytest.mark.parametrize(("o", "i_g"), [(8, 3), (6, 4), (2, 1), (6, 6)])
def test_conv_weights_groups_warns_when_not_multiple_of_4(o, i_g):
    w = rng.standard_normal((o, i_g, 3, 3)).astype(np.float32)
    with pytest.warns(mpslayout.MPSLayoutWarning):
        got = mpslayout.conv_weights(w, groups=2)
    # The conversion is still done (no silent padding).
    np.testing.assert_array_equal(got, w.transpose(0, 2, 3, 1))


@pytest.mark.parametrize(("o", "i_g", "groups"), [(8, 4, 2), (16, 4, 4), (3, 5, 1), (1, 1, 1)])
def test_conv_weights_no_warning_when_fine(o, i_g, groups):
    w = rng.standard_normal((o, i_g, 3, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mpslayout.conv_weights(w, groups=groups)
    np.testing.assert_array_equal(got, w.transpose(0, 2, 3, 1))
