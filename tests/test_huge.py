"""Tensors past 4 GiB and 2**31 elements: no 32-bit index or size anywhere.

One uint8 array of (65539, 65541) elements (4.0004 GiB, 4,295,491,599 elements) is permuted
and converted (NCHW -> NHWC); the checks read elements whose flat index, in the source or
in the result, sits on either side of 2**31 and 2**32 (where a 32-bit signed or unsigned
index would wrap), whole rows that cross those points, and random elements, each against
the index formula.
Needs about 8.1 GiB; skipped when /proc/meminfo says less than 16 GB is available.
"""

from __future__ import annotations

import numpy as np
import pytest

import mpslayout

R, C = 2**16 + 3, 2**16 + 5  # source (R, C); flat index i * C + j
N = R * C
P = 251  # value of flat index k is k % P (prime, so no pattern aliases with the shape)
BOUNDARIES = [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 1, N - 1]


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        _mem_available() < 16 * 10**9, reason="needs 16 GB of available memory (MemAvailable)"
    ),
]


@pytest.fixture(scope="module")
def src() -> np.ndarray:
    assert N > 2**32
    flat = np.resize(np.arange(P, dtype=np.uint8), N)  # repeats the pattern: flat[k] = k % P
    return flat.reshape(R, C)


def _near(n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of every flat index in BOUNDARIES for a (n_rows, n_cols) array."""
    ks = np.array(BOUNDARIES, dtype=np.int64)
    return ks // n_cols, ks % n_cols


def _random(n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, n_rows, 4000), rng.integers(0, n_cols, 4000)


def test_transpose_past_4_gib(src: np.ndarray) -> None:
    out = mpslayout.permute(src, (1, 0), threads=2)
    assert out.shape == (C, R)
    assert out.flags.c_contiguous
    # out[j, i] = src[i, j] = (i * C + j) % P, checked where either flat index is on a boundary
    for rows, cols in (_near(C, R), _random(C, R)):
        j, i = rows, cols
        np.testing.assert_array_equal(out[j, i], (i * C + j) % P)
    i, j = _near(R, C)  # the source's boundary elements, found in the result
    np.testing.assert_array_equal(out[j, i], (i * C + j) % P)
    # whole rows of the result around the boundaries (a wrapped index corrupts runs)
    for k in BOUNDARIES:
        j = k // R
        np.testing.assert_array_equal(out[j], (np.arange(R, dtype=np.int64) * C + j) % P)
    del out


def test_convert_past_4_gib(src: np.ndarray) -> None:
    # the same bytes as NCHW (65539, 3, 7, 3121) -> NHWC: three-channel interleave kernels
    assert C == 3 * 7 * 3121
    x = src.reshape(R, 3, 7, 3121)
    n, c, h, w = x.shape
    out = mpslayout.convert(x, "NCHW", "NHWC", threads=1)
    assert out.shape == (n, h, w, c)

    def value(nn, cc, hh, ww):  # x[nn, cc, hh, ww] = its flat index % P
        return (((nn * c + cc) * h + hh) * w + ww) % P

    rng = np.random.default_rng(1)
    idx = [rng.integers(0, m, 4000) for m in (n, c, h, w)]
    np.testing.assert_array_equal(out[idx[0], idx[2], idx[3], idx[1]], value(*idx))
    flat = out.reshape(-1)
    for k in BOUNDARIES:  # the result's flat index k = ((nn * h + hh) * w + ww) * c + cc
        cc, rest = k % c, k // c
        ww, rest = rest % w, rest // w
        hh, nn = rest % h, rest // h
        assert flat[k] == value(nn, cc, hh, ww), k
        lo = k - k % (w * c)  # the whole (w, c) row around k
        row = flat[lo : lo + w * c].reshape(w, c)
        www, ccc = np.meshgrid(np.arange(w), np.arange(c), indexing="ij")
        np.testing.assert_array_equal(row, value(nn, ccc, hh, www))
    del out
