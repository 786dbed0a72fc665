"""Fused casts round exactly like numpy / ml_dtypes ``astype``, bit for bit.

Every cast is checked through three shapes so that both the long-row (vector) kernels
and the transposing tile kernels run: a contiguous 1-D row (also started one element
off alignment), a 2-D array transposed with axes (1, 0), and a stack of (37, 61) tiles
transposed with axes (0, 2, 1).  Values are compared as unsigned bit patterns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mpslayout

UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(UINT_OF_SIZE[a.dtype.itemsize])


def oracle(a, dtype):
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(a).astype(dtype)


def assert_same_bits(got, want, values):
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    gb, wb = bits(got).ravel(), bits(want).ravel()
    bad = np.flatnonzero(gb != wb)
    if bad.size:
        vb = bits(values).ravel()
        examples = [
            f"in=0x{int(vb[i]):x} want=0x{int(wb[i]):x} got=0x{int(gb[i]):x}" for i in bad[:8]
        ]
        raise AssertionError(f"{bad.size} mismatching elements, e.g. " + "; ".join(examples))


def check_cast(values, dst, *, threads=None):
    """``values`` is 1-D; check the cast through contiguous and transposing paths."""
    values = np.ascontiguousarray(values)
    n = values.size
    # 1. One long contiguous row, and the same row starting one element later.
    got = mpslayout.permute(values, (0,), dtype=dst, threads=threads)
    assert_same_bits(got, oracle(values, dst), values)
    if n > 1:
        tail = values[1:]
        got = mpslayout.permute(tail, (0,), dtype=dst, threads=threads)
        assert_same_bits(got, oracle(tail, dst), tail)
    # 2. 2-D, transposed.
    for width in (61, 8):
        rows = -(-n // width)
        x2 = np.resize(values, rows * width).reshape(rows, width)
        got = mpslayout.permute(x2, (1, 0), dtype=dst, threads=threads)
        assert_same_bits(got, oracle(x2.T, dst), x2.T)
    # 3. Stack of (37, 61) tiles, inner two axes swapped.
    tiles = -(-n // (37 * 61))
    x3 = np.resize(values, tiles * 37 * 61).reshape(tiles, 37, 61)
    got = mpslayout.permute(x3, (0, 2, 1), dtype=dst, threads=threads)
    assert_same_bits(got, oracle(x3.transpose(0, 2, 1), dst), x3.transpose(0, 2, 1))


def from_bits(pattern_list, dtype):
    udt = UINT_OF_SIZE[np.dtype(dtype).itemsize]
    return np.asarray(pattern_list, dtype=udt).view(dtype)


def with_neighbours(x):
    """x together with the next representable value on each side (same dtype), both signs."""
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        up = np.nextafter(x, np.asarray(np.inf, dtype=x.dtype))
        down = np.nextafter(x, np.asarray(-np.inf, dtype=x.dtype))
    allv = np.concatenate([x, up, down])
    return np.concatenate([allv, -allv])


# ------------------------------------------------------------- float16 -> float32

ALL_F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)


def test_f16_to_f32_all_patterns():
    check_cast(ALL_F16, np.float32)


def test_f16_to_f32_all_patterns_2d_square_transpose():
    x = ALL_F16.reshape(256, 256)
    want = oracle(x.T, np.float32)
    for threads in (1, 2):
        got = mpslayout.permute(x, (1, 0), dtype=np.float32, threads=threads)
        assert_same_bits(got, want, x.T)


# ------------------------------------------------------------- float32 -> float16

F32_NANS = [
    0x7FC00000, 0x7FC00001, 0x7FFFFFFF, 0x7FE00000, 0x7FC02000, 0x7FD55555,
    0x7F800001, 0x7F802000, 0x7FA00000, 0x7FBFFFFF, 0x7F801FFF, 0x7F80E000,
]  # fmt: skip


def f32_nans():
    pats = np.asarray(F32_NANS, dtype=np.uint32)
    return np.concatenate([pats, pats | np.uint32(0x80000000)]).view(np.float32)


def f16_halfway_values():
    """Every midpoint between consecutive finite float16 values (exact in float32), with
    its float32 neighbours, both signs."""
    lo = np.arange(0, 0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float64)
    hi = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    assert np.array_equal(mid.astype(np.float64), (lo + hi) / 2)  # exact
    return with_neighbours(mid)


def f32_to_f16_specials():
    f32 = np.float32
    vals = [
        0.0, 1.0, 65504.0, 65519.0, 65520.0, 65536.0, 70000.0, 1e10,
        2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-26, 2.0**-14, 2.0**-15, 2.0**-14 - 2.0**-25,
        2.0**-14 + 2.0**-25, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 2048.0 + 1.0, 2048.0 + 3.0,
        float(np.finfo(f32).max), float(np.finfo(f32).tiny),
        float(np.finfo(f32).smallest_subnormal),
        np.inf,
    ]  # fmt: skip
    base = with_neighbours(np.asarray(vals, dtype=f32))
    return np.concatenate([base, f32_nans()])


def test_f32_to_f16_specials():
    vals = f32_to_f16_specials()
    check_cast(vals, np.float16)
    # Sanity of the oracle itself (documents the expected rounding).
    with np.errstate(all="ignore"):
        assert np.float32(65520.0).astype(np.float16) == np.inf
        assert np.nextafter(np.float32(65520.0), np.float32(0)).astype(np.float16) == 65504
        assert np.float32(2.0**-25).astype(np.float16) == 0
        assert np.nextafter(np.float32(2.0**-25), np.float32(1)).astype(np.float16) == 2.0**-24
        assert np.float32(3 * 2.0**-25).astype(np.float16) == 2.0**-23


def test_f32_to_f16_halfway_cases():
    check_cast(f16_halfway_values(), np.float16)


def test_f32_to_f16_all_f16_values_round_trip():
    exact = ALL_F16.astype(np.float32)
    check_cast(exact, np.float16)


def test_f32_to_f16_random_bits():
    rng = np.random.default_rng(1234)
    vals = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    check_cast(vals.view(np.float32), np.float16)


def test_f32_to_f16_random_in_range_threads():
    rng = np.random.default_rng(99)
    # Exponents concentrated around the float16 range (subnormals to overflow).
    vals = (rng.standard_normal(600_000) * np.exp2(rng.uniform(-27, 17, 600_000))).astype(
        np.float32
    )
    for threads in (1, 2):
        check_cast(vals, np.float16, threads=threads)


# ------------------------------------------------------------- float64 -> float32

F64_NANS = [
    0x7FF8000000000000, 0x7FF8000000000001, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000001,
    0x7FF4000000000000, 0x7FF0000020000000, 0x7FF00000FFFFFFFF, 0x7FFC000000000000,
]  # fmt: skip


def f64_specials():
    f64 = np.float64
    fmax = float(np.finfo(np.float32).max)
    vals = [
        0.0, 1.0, fmax, fmax + 2.0**103, 2.0**128, 1e300, np.inf,
        2.0**-149, 2.0**-150, 3 * 2.0**-150, 2.0**-151, 2.0**-126, 2.0**-126 - 2.0**-150,
        1e-300, 5e-324, 1 + 2.0**-24, 1 + 3 * 2.0**-24, 0.1, 1 / 3,
    ]  # fmt: skip
    base = with_neighbours(np.asarray(vals, dtype=f64))
    pats = np.asarray(F64_NANS, dtype=np.uint64)
    nans = np.concatenate([pats, pats | np.uint64(1 << 63)]).view(f64)
    return np.concatenate([base, nans])


def f32_halfway_sample(rng, count):
    """Midpoints between random consecutive finite float32 values (exact in float64)."""
    lo_bits = rng.integers(0, 0x7F7FFFFF, size=count, dtype=np.uint32)
    lo_bits[:200] = np.arange(200, dtype=np.uint32)  # subnormal midpoints
    lo = lo_bits.view(np.float32).astype(np.float64)
    hi = (lo_bits + np.uint32(1)).view(np.float32).astype(np.float64)
    mid = (lo + hi) / 2
    return with_neighbours(mid)


def test_f64_to_f32_specials():
    check_cast(f64_specials(), np.float32)


def test_f64_to_f32_halfway_cases():
    check_cast(f32_halfway_sample(np.random.default_rng(5), 100_000), np.float32)


def test_f64_to_f32_random_bits():
    rng = np.random.default_rng(77)
    raw = rng.integers(0, 2**63, size=500_000, dtype=np.uint64)
    raw[::2] |= np.uint64(1 << 63)
    check_cast(raw.view(np.float64), np.float32)
    # Random values in float32 range with random low bits (exercise rounding).
    f = rng.integers(0, 2**32, size=500_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    with np.errstate(all="ignore"):
        b = f.astype(np.float64).view(np.uint64)
    b = b | rng.integers(0, 2**29, size=b.size, dtype=np.uint64)
    check_cast(b.view(np.float64), np.float32)


# ------------------------------------------------------------- bfloat16


def test_bf16_to_f32_all_patterns():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16)
    check_cast(x, np.float32)
    sq = x.reshape(256, 256)
    got = mpslayout.permute(sq, (1, 0), dtype=np.float32)
    assert_same_bits(got, oracle(sq.T, np.float32), sq.T)


def bf16_halfway_values(ml_dtypes):
    lo = np.arange(0, 0x7F7F, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    hi = np.arange(1, 0x7F80, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    assert np.array_equal(mid.astype(np.float64), (lo + hi) / 2)
    return with_neighbours(mid)


def test_f32_to_bf16_halfway_and_specials():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    check_cast(bf16_halfway_values(ml_dtypes), bf16)
    fmax = np.finfo(np.float32).max
    specials = with_neighbours(
        np.asarray(
            [0.0, 1.0, fmax, 3.3895314e38, 3.3961775e38, 2.0**-126, 2.0**-133, 2.0**-134,
             2.0**-149, np.inf, 1 + 2.0**-8, 1 + 3 * 2.0**-8],
            dtype=np.float32,
        )
    )  # fmt: skip
    check_cast(np.concatenate([specials, f32_nans()]), bf16)


def test_f32_to_bf16_all_bf16_values_and_random_bits():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    exact = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(bf16).astype(np.float32)
    check_cast(exact, bf16)
    rng = np.random.default_rng(4321)
    vals = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    check_cast(vals.view(np.float32), bf16)


# ------------------------------------------------------------- forced ISA dispatch

ISA_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import mpslayout

    U = {2: np.uint16, 4: np.uint32, 8: np.uint64, 1: np.uint8}

    def bits(a):
        a = np.ascontiguousarray(a)
        return a.view(U[a.dtype.itemsize])

    def check(got, want, what):
        assert got.dtype == want.dtype and got.shape == want.shape, what
        assert np.array_equal(bits(got), bits(want)), what

    def oracle(a, dt):
        with np.errstate(all="ignore"):
            return np.ascontiguousarray(a).astype(dt)

    rng = np.random.default_rng(0)
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    f = f.view(np.float32)
    d = rng.standard_normal(100_000) * 1e3
    for threads in (1, 2):
        check(mpslayout.permute(h, (0,), dtype=np.float32, threads=threads),
              oracle(h, np.float32), "f16->f32 row")
        h2 = h.reshape(256, 256)
        check(mpslayout.permute(h2, (1, 0), dtype=np.float32, threads=threads),
              oracle(h2.T, np.float32), "f16->f32 tile")
        check(mpslayout.permute(f, (0,), dtype=np.float16, threads=threads),
              oracle(f, np.float16), "f32->f16 row")
        f2 = f[: 37 * 61 * 40].reshape(40, 37, 61)
        check(mpslayout.permute(f2, (0, 2, 1), dtype=np.float16, threads=threads),
              oracle(f2.transpose(0, 2, 1), np.float16), "f32->f16 tile")
        check(mpslayout.permute(d, (0,), dtype=np.float32, threads=threads),
              oracle(d, np.float32), "f64->f32 row")
        for dt in (np.int8, np.int16, np.float32, np.float64):
            x = rng.integers(0, 100, size=(13, 37, 61, 3)).astype(dt)
            for axes in ((0, 2, 1, 3), (3, 0, 1, 2), (0, 2, 3, 1), (3, 2, 1, 0)):
                check(mpslayout.permute(x, axes, threads=threads),
                      np.ascontiguousarray(np.transpose(x, axes)), f"permute {dt} {axes}")
    try:
        import ml_dtypes
    except ImportError:
        ml_dtypes = None
    if ml_dtypes is not None:
        bf = ml_dtypes.bfloat16
        check(mpslayout.permute(f, (0,), dtype=bf), oracle(f, bf), "f32->bf16")
        b = h.view(bf)
        check(mpslayout.permute(b, (0,), dtype=np.float32), oracle(b, np.float32), "bf16->f32")
    """
)


@pytest.mark.parametrize("isa", ["scalar", "sse2", "avx2"])
def test_forced_isa_dispatch(isa, tmp_path):
    env = dict(os.environ)
    env["MPSLAYOUT_ISA"] = isa
    proc = subprocess.run(
        [sys.executable, "-c", ISA_SCRIPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0 and "unsupported" in proc.stderr.lower():
        pytest.skip(f"MPSLAYOUT_ISA={isa} unsupported on this CPU")
    assert proc.returncode == 0, proc.stderr[-3000:]


# ------------------------------------------------------------- default dtype rules


def test_bf16_identity_permute_and_converters_keep_bf16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    rng = np.random.default_rng(11)
    raw = rng.integers(0, 2**16, size=(6, 4, 3, 5), dtype=np.uint32).astype(np.uint16)
    w = raw.view(bf16)
    got = mpslayout.permute(w, (0, 2, 3, 1))
    assert_same_bits(got, np.ascontiguousarray(w.transpose(0, 2, 3, 1)), w)
    got = mpslayout.conv_weights(w)
    assert_same_bits(got, np.ascontiguousarray(w.transpose(0, 2, 3, 1)), w)


@pytest.mark.parametrize(
    ("src", "want"),
    [(np.float64, np.float32), (np.float32, np.float32), (np.float16, np.float16),
     (np.uint8, np.uint8)],
)  # fmt: skip
def test_converter_default_dtype(src, want):
    rng = np.random.default_rng(12)
    w = (rng.standard_normal((8, 4, 3, 2)) * 50).astype(src)
    got = mpslayout.conv_weights(w)
    assert got.dtype == want
    assert_same_bits(got, oracle(w.transpose(0, 2, 3, 1), want), w)
    fc = mpslayout.fc_weights(w.reshape(8, 24), input_shape=(4, 3, 2))
    assert fc.dtype == want
    assert_same_bits(fc, oracle(w.transpose(0, 2, 3, 1), want), w)


@pytest.mark.parametrize(("src", "dst"), [(np.float32, np.float16), (np.float64, np.float32)])
def test_converter_explicit_cast(src, dst):
    rng = np.random.default_rng(13)
    w = (rng.standard_normal((8, 4, 3, 2)) * 3e4).astype(src)
    got = mpslayout.conv_weights(w, dtype=dst)
    assert_same_bits(got, oracle(w.transpose(0, 2, 3, 1), dst), w)


def test_permute_keeps_float64():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7
    got = mpslayout.permute(x, (2, 1, 0))
    assert got.dtype == np.float64
    assert_same_bits(got, np.ascontiguousarray(x.transpose(2, 1, 0)), x)
