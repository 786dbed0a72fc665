"""mpslayout.permute / convert are bit-equal to the equivalent numpy transposes.

The oracle is always numpy: ``np.ascontiguousarray(np.transpose(x, axes))`` (plus
``np.pad``/``reshape`` for blocked layouts and ``astype`` for fused casts).  Results are
compared as raw bit patterns so NaN payloads and signed zeros count.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpslayout

# On a failure, hypothesis' pytest plugin imports its patch writer (libcst -> mypy_extensions),
# which emits a DeprecationWarning; with filterwarnings=error that turns the failure report
# into an INTERNALERROR that hides the real assertion.  Import it once, quietly, up front.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

DTYPES = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.float16,
    np.int32,
    np.float32,
    np.int64,
    np.float64,
    np.complex64,
]
UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
MAX_ELEMS = 3000

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def bits(a):
    """The raw bit pattern of ``a`` as an unsigned integer array of the same shape."""
    a = np.ascontiguousarray(a)
    return a.view(UINT_OF_SIZE[a.dtype.itemsize])


def assert_bit_equal(got, want):
    assert isinstance(got, np.ndarray)
    assert got.flags.c_contiguous
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(bits(got), bits(want))


def oracle_cast(a, dtype):
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(a).astype(dtype)


def random_array(rng, shape, dtype):
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=n).astype(np.bool_).reshape(shape)
    raw = rng.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


@st.composite
def shapes(draw, min_ndim=1, max_ndim=8, max_elems=MAX_ELEMS):
    ndim = draw(st.integers(min_ndim, max_ndim))
    budget = max_elems
    dims = []
    for _ in range(ndim):
        hi = max(1, min(7, budget))
        d = draw(st.integers(0, hi))
        dims.append(d)
        budget = max(1, budget // max(d, 1))
    return tuple(dims)


@st.composite
def axes_for(draw, ndim):
    perm = draw(st.permutations(list(range(ndim))))
    neg = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
    return tuple(a - ndim if flip else a for a, flip in zip(perm, neg))


def make_view(rng, shape, dtype, kind, draw_bits):
    """An array of ``shape`` whose memory layout is of the given ``kind``."""
    ndim = len(shape)
    if kind == "contiguous":
        return random_array(rng, shape, dtype)
    if kind == "fortran":
        return np.asfortranarray(random_array(rng, shape, dtype))
    if kind == "step":
        steps = [1 + (b % 3) for b in draw_bits[:ndim]]
        big = random_array(rng, tuple(d * s for d, s in zip(shape, steps)), dtype)
        v = big[tuple(slice(None, None, s) for s in steps)]
        assert v.shape == shape
        return v
    if kind == "negative":
        big = random_array(rng, shape, dtype)
        sl = tuple(slice(None, None, -1) if b % 2 else slice(None) for b in draw_bits[:ndim])
        v = big[sl]
        if ndim and all(s == slice(None) for s in sl):
            v = big[::-1]
        return v
    if kind == "broadcast":
        base_shape = tuple(1 if b % 2 else d for d, b in zip(shape, draw_bits[:ndim]))
        base = random_array(rng, base_shape, dtype)
        return np.broadcast_to(base, shape)
    raise AssertionError(kind)


VIEW_KINDS = ["contiguous", "fortran", "step", "negative", "broadcast"]


@SETTINGS
@given(
    shape_axes=shapes().flatmap(lambda s: st.tuples(st.just(s), axes_for(len(s)))),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(VIEW_KINDS),
    view_bits=st.lists(st.integers(0, 5), min_size=8, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_permute_matches_numpy(shape_axes, dtype, kind, view_bits, seed):
    shape, axes = shape_axes
    rng = np.random.default_rng(seed)
    x = make_view(rng, shape, dtype, kind, view_bits)
    want = np.ascontiguousarray(np.transpose(x, axes))
    got = mpslayout.permute(x, axes)
    assert_bit_equal(got, want)
    # The input is never modified.
    assert got is not x


@SETTINGS
@given(
    shape_axes=shapes(max_elems=600).flatmap(lambda s: st.tuples(st.just(s), axes_for(len(s)))),
    dtype=st.sampled_from(DTYPES),
    threads=st.sampled_from([None, 1, 2, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_permute_out_and_threads(shape_axes, dtype, threads, seed):
    shape, axes = shape_axes
    rng = np.random.default_rng(seed)
    x = random_array(rng, shape, dtype)
    want = np.ascontiguousarray(np.transpose(x, axes))
    out = np.empty(want.shape, dtype=want.dtype)
    out.view(np.uint8).fill(0x5A)
    got = mpslayout.permute(x, axes, out=out, threads=threads)
    assert_bit_equal(out, want)
    assert_bit_equal(np.asarray(got), want)


def test_permute_accepts_array_likes():
    x = [[1.5, 2.5, 3.5], [4.5, 5.5, 6.5]]
    want = np.ascontiguousarray(np.transpose(np.asarray(x), (1, 0)))
    assert_bit_equal(mpslayout.permute(x, (1, 0)), want)
    assert_bit_equal(mpslayout.permute(np.asarray(x), [1, 0]), want)


def test_permute_ndim8_all_axes_reversed():
    rng = np.random.default_rng(8)
    x = random_array(rng, (2, 3, 1, 2, 3, 2, 1, 3), np.float32)
    axes = tuple(range(7, -1, -1))
    assert_bit_equal(mpslayout.permute(x, axes), np.ascontiguousarray(np.transpose(x, axes)))


def test_permute_zero_dim_and_scalar_like():
    x = np.zeros((3, 0, 4), dtype=np.float32)
    got = mpslayout.permute(x, (2, 0, 1))
    assert got.shape == (4, 3, 0)
    assert got.dtype == np.float32


LARGE_CASES = [
    ((16, 32, 40, 48), np.float32, (0, 2, 3, 1)),
    ((16, 32, 40, 48), np.float32, (3, 0, 1, 2)),
    ((512, 1000), np.float32, (1, 0)),
    ((8, 64, 64, 64), np.int8, (0, 2, 3, 1)),
    ((1023, 1025), np.uint8, (1, 0)),
    ((64, 96, 130), np.float16, (2, 0, 1)),
    ((31, 33, 37, 11), np.float16, (1, 3, 0, 2)),
    ((200, 300), np.float64, (1, 0)),
    ((12, 40, 50, 10), np.int64, (3, 1, 2, 0)),
    ((100, 50, 60), np.complex64, (2, 1, 0)),
    ((4, 8, 16, 16, 24), np.int32, (4, 0, 3, 1, 2)),
]


@pytest.mark.parametrize(("shape", "dtype", "axes"), LARGE_CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_permute_large(shape, dtype, axes, threads):
    rng = np.random.default_rng(hash((shape, axes)) % 2**32)
    x = random_array(rng, shape, dtype)
    want = np.ascontiguousarray(np.transpose(x, axes))
    got = mpslayout.permute(x, axes, threads=threads)
    assert_bit_equal(got, want)


def test_permute_large_noncontiguous_threads():
    rng = np.random.default_rng(1)
    base = random_array(rng, (20, 70, 90, 8), np.float32)
    x = base[::-1, 3:67:2, ::3, 1:7]
    want = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
    for threads in (1, 2):
        assert_bit_equal(mpslayout.permute(x, (0, 3, 1, 2), threads=threads), want)


def test_threads_setting_does_not_change_results():
    rng = np.random.default_rng(2)
    x = random_array(rng, (33, 257, 129), np.float32)
    want = np.ascontiguousarray(np.transpose(x, (2, 0, 1)))
    old = mpslayout.get_threads()
    try:
        for n in (1, 2):
            mpslayout.set_threads(n)
            assert mpslayout.get_threads() == n
            assert_bit_equal(mpslayout.permute(x, (2, 0, 1)), want)
    finally:
        mpslayout.set_threads(old)
    assert mpslayout.get_threads() == old


# ---------------------------------------------------------------- fused casts

CAST_PAIRS = [
    (np.float32, np.float16),
    (np.float16, np.float32),
    (np.float64, np.float32),
]


def _cast_pairs_with_bf16():
    pairs = list(CAST_PAIRS)
    try:
        import ml_dtypes
    except ImportError:
        return pairs
    return [*pairs, (np.float32, ml_dtypes.bfloat16), (ml_dtypes.bfloat16, np.float32)]


ALL_CAST_PAIRS = _cast_pairs_with_bf16()


@SETTINGS
@given(
    shape_axes=shapes(max_ndim=6, max_elems=2000).flatmap(
        lambda s: st.tuples(st.just(s), axes_for(len(s)))
    ),
    pair=st.sampled_from(ALL_CAST_PAIRS),
    kind=st.sampled_from(VIEW_KINDS),
    view_bits=st.lists(st.integers(0, 5), min_size=8, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_permute_fused_cast(shape_axes, pair, kind, view_bits, seed):
    shape, axes = shape_axes
    src, dst = pair
    rng = np.random.default_rng(seed)
    x = make_view(rng, shape, src, kind, view_bits)
    want = oracle_cast(np.transpose(x, axes), dst)
    got = mpslayout.permute(x, axes, dtype=dst)
    assert_bit_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_dtype_is_always_allowed(dtype):
    rng = np.random.default_rng(3)
    x = random_array(rng, (3, 5, 7), dtype)
    want = np.ascontiguousarray(np.transpose(x, (2, 0, 1)))
    assert_bit_equal(mpslayout.permute(x, (2, 0, 1), dtype=dtype), want)
    assert_bit_equal(mpslayout.permute(x, (2, 0, 1), dtype=np.dtype(dtype)), want)


@pytest.mark.parametrize(("src", "dst"), CAST_PAIRS)
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_cast_large(src, dst, threads):
    rng = np.random.default_rng(4)
    x = random_array(rng, (24, 48, 40, 36), src)
    want = oracle_cast(np.transpose(x, (0, 2, 3, 1)), dst)
    got = mpslayout.permute(x, (0, 2, 3, 1), dtype=dst, threads=threads)
    assert_bit_equal(got, want)


# ---------------------------------------------------------------- convert

UNBLOCKED_PAIRS = [
    ("NCHW", "NHWC", (0, 2, 3, 1)),
    ("NHWC", "NCHW", (0, 3, 1, 2)),
    ("OIHW", "OHWI", (0, 2, 3, 1)),
    ("OIHW", "HWIO", (2, 3, 1, 0)),
    ("HWIO", "OHWI", (3, 0, 1, 2)),
    ("HWOI", "OHWI", (2, 0, 1, 3)),
    ("CHW", "HWC", (1, 2, 0)),
    ("HWC", "CHW", (2, 0, 1)),
    ("NCDHW", "NDHWC", (0, 2, 3, 4, 1)),
    ("OI", "IO", (1, 0)),
    ("NCHW", "NCHW", (0, 1, 2, 3)),
]


@pytest.mark.parametrize(("src", "dst", "axes"), UNBLOCKED_PAIRS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8, np.int64])
def test_convert_unblocked(src, dst, axes, dtype):
    rng = np.random.default_rng(5)
    shape = (2, 3, 5, 7, 4)[: len(src)]
    x = random_array(rng, shape, dtype)
    want = np.ascontiguousarray(np.transpose(x, axes))
    assert_bit_equal(mpslayout.convert(x, src, dst), want)


LETTERS = "NCDHWOIM"


@SETTINGS
@given(
    shape=shapes(max_elems=1500),
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_convert_random_letters(shape, data, dtype, seed):
    ndim = len(shape)
    src = "".join(data.draw(st.permutations(list(LETTERS)))[:ndim])
    dst = "".join(data.draw(st.permutations(list(src))))
    axes = tuple(src.index(c) for c in dst)
    x = random_array(np.random.default_rng(seed), shape, dtype)
    want = np.ascontiguousarray(np.transpose(x, axes))
    assert_bit_equal(mpslayout.convert(x, src, dst), want)


def _pad_axis(x, axis, block):
    size = x.shape[axis]
    padded = -(-size // block) * block
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, padded - size)
    return np.pad(x, widths)


def nchw_to_nchw4c(x, block=4):
    n, c, h, w = x.shape
    s = -(-c // block)
    p = _pad_axis(x, 1, block).reshape(n, s, block, h, w)
    return np.ascontiguousarray(p.transpose(0, 1, 3, 4, 2))


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5, 7, 8, 9, 13])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8, np.float64])
def test_convert_nchw_to_nchw4c(channels, dtype):
    rng = np.random.default_rng(channels)
    x = random_array(rng, (2, channels, 5, 3), dtype)
    want = nchw_to_nchw4c(x)
    got = mpslayout.convert(x, "NCHW", "NCHW4c")
    assert got.shape == (2, -(-channels // 4), 5, 3, 4)
    assert_bit_equal(got, want)
    # Padding channels are exactly zero bits (never NaN / garbage).
    pad = got[:, -1, :, :, channels % 4 :] if channels % 4 else got[:, :0]
    assert not bits(pad).any()


@pytest.mark.parametrize("channels", [1, 3, 4, 6, 11])
def test_convert_nhwc_to_nchw4c(channels):
    rng = np.random.default_rng(10 + channels)
    x_nchw = random_array(rng, (3, channels, 4, 6), np.float32)
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    want = nchw_to_nchw4c(x_nchw)
    assert_bit_equal(mpslayout.convert(x_nhwc, "NHWC", "NCHW4c"), want)


@pytest.mark.parametrize("channels", [1, 2, 5, 8, 10])
def test_convert_block_sizes(channels):
    rng = np.random.default_rng(20 + channels)
    x = random_array(rng, (2, channels, 3, 4), np.float32)
    for block in (1, 2, 3, 8):
        want = nchw_to_nchw4c(x, block)
        assert_bit_equal(mpslayout.convert(x, "NCHW", f"NCHW{block}c"), want)


@pytest.mark.parametrize("channels", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8])
def test_convert_nchw4c_round_trip(channels, dtype):
    rng = np.random.default_rng(30 + channels)
    x = random_array(rng, (2, channels, 3, 5), dtype)
    blocked = mpslayout.convert(x, "NCHW", "NCHW4c")
    back = mpslayout.convert(blocked, "NCHW4c", "NCHW", channels=channels)
    assert_bit_equal(back, np.ascontiguousarray(x))
    back2 = mpslayout.convert(blocked, "NCHW4c", "NCHW", sizes={"C": channels})
    assert_bit_equal(back2, np.ascontiguousarray(x))
    nhwc = mpslayout.convert(blocked, "NCHW4c", "NHWC", channels=channels)
    assert_bit_equal(nhwc, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


def oihw_to_ohwi4o4i(w):
    o, i, kh, kw = w.shape
    so, si = -(-o // 4), -(-i // 4)
    p = _pad_axis(_pad_axis(w, 0, 4), 1, 4).reshape(so, 4, si, 4, kh, kw)
    return np.ascontiguousarray(p.transpose(0, 4, 5, 2, 1, 3))


@pytest.mark.parametrize(("o", "i"), [(4, 4), (1, 1), (5, 3), (8, 12), (6, 9), (3, 16)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_convert_oihw_to_ohwi4o4i(o, i, dtype):
    rng = np.random.default_rng(o * 100 + i)
    w = random_array(rng, (o, i, 3, 2), dtype)
    want = oihw_to_ohwi4o4i(w)
    got = mpslayout.convert(w, "OIHW", "OHWI4o4i")
    assert got.shape == (-(-o // 4), 3, 2, -(-i // 4), 4, 4)
    assert_bit_equal(got, want)
    back = mpslayout.convert(got, "OHWI4o4i", "OIHW", sizes={"O": o, "I": i})
    assert_bit_equal(back, np.ascontiguousarray(w))


@pytest.mark.parametrize(("src", "dst", "axes"), UNBLOCKED_PAIRS[:6])
@pytest.mark.parametrize("pair", ALL_CAST_PAIRS)
def test_convert_fused_cast(src, dst, axes, pair):
    from_dtype, to_dtype = pair
    rng = np.random.default_rng(6)
    x = random_array(rng, (3, 6, 5, 7), from_dtype)
    want = oracle_cast(np.transpose(x, axes), to_dtype)
    assert_bit_equal(mpslayout.convert(x, src, dst, dtype=to_dtype), want)


@pytest.mark.parametrize("pair", CAST_PAIRS)
def test_convert_blocked_fused_cast(pair):
    from_dtype, to_dtype = pair
    rng = np.random.default_rng(7)
    x = random_array(rng, (2, 7, 5, 3), from_dtype)
    want = oracle_cast(nchw_to_nchw4c(x), to_dtype)
    assert_bit_equal(mpslayout.convert(x, "NCHW", "NCHW4c", dtype=to_dtype), want)


def test_convert_out_and_threads():
    rng = np.random.default_rng(9)
    x = random_array(rng, (4, 10, 33, 17), np.float32)
    want = nchw_to_nchw4c(x)
    for threads in (1, 2):
        out = np.full(want.shape, np.nan, dtype=np.float32)
        mpslayout.convert(x, "NCHW", "NCHW4c", out=out, threads=threads)
        assert_bit_equal(out, want)
