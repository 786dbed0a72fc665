"""Every dispatch path (scalar, SSE2, AVX2, NEON; regular and streaming stores) bit-equal to numpy.

Each instruction set is forced in a subprocess with MPSLAYOUT_ISA, since the engine picks its
kernels once per process; MPSLAYOUT_STREAM_BYTES=0 sends even small arrays through the
non-temporal store path. The sweep covers block edges on both axes (sizes around 4, 8, 16,
32 and 64), narrow destinations (1-4 columns, packed and not), every element size and cast,
and rows of every length with a fused cast (partial vector groups at their ends).
"""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import mpslayout
from mpslayout import _core

SWEEP = r"""
import itertools, sys
import numpy as np
import mpslayout

rng = np.random.default_rng(7)
sizes = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 40, 64, 67]
dtypes = [np.uint8, np.uint16, np.uint32, np.uint64]
casts = [(np.float32, np.float16), (np.float16, np.float32), (np.float64, np.float32)]
try:
    import ml_dtypes
    casts += [(np.float32, ml_dtypes.bfloat16), (ml_dtypes.bfloat16, np.float32)]
except ImportError:
    pass

def bits(shape, dt):
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dt).itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)

def empty_at(shape, dt, offset):
    # a C-contiguous array whose data starts `offset` bytes past a 64-byte boundary
    n = int(np.prod(shape)) * np.dtype(dt).itemsize
    raw = np.empty(n + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    return raw[start:start + n].view(dt).reshape(shape)

def same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()

fails = []
with np.errstate(all="ignore"):
    for na, nd in itertools.product(sizes, sizes):
        for dt in dtypes:
            x = bits((nd, na), dt)
            for offset in (0, 1):  # 64-byte aligned and unaligned destinations
                out = empty_at((na, nd), dt, offset)
                if not same(mpslayout.permute(x, (1, 0), out=out), np.ascontiguousarray(x.T)):
                    fails.append(("permute", na, nd, np.dtype(dt).name, offset))
        for s, d in casts:
            x = bits((nd, na), s)
            ref = np.ascontiguousarray(x.T).astype(d)
            for offset in (0, 2):
                out = empty_at((na, nd), d, offset)
                if not same(mpslayout.permute(x, (1, 0), dtype=d, out=out), ref):
                    fails.append(("cast", na, nd, np.dtype(s).name, np.dtype(d).name, offset))
    # rows of every length with a fused cast (a gap after each row keeps them apart)
    for n in sizes + [100, 101]:
        for s, d in casts:
            x = bits((3, n + 3), s)[:, :n]
            if not same(mpslayout.permute(x, (0, 1), dtype=d), x.astype(d)):
                fails.append(("rows", n, np.dtype(s).name, np.dtype(d).name))
    # outer axes, strided and flipped sources, narrow packed destinations (RGB, slices)
    for shape in [(3, 5, 9, 9), (2, 4, 37, 3), (5, 3, 7, 7), (2, 8, 16, 16), (3, 12, 5, 11)]:
        for dt in (np.float32, np.float16, np.float64):
            x = bits(shape, dt)[:, :, ::-1]
            for axes in [(0, 2, 3, 1), (2, 3, 1, 0), (1, 0, 3, 2), (3, 2, 1, 0)]:
                ref = np.ascontiguousarray(x.transpose(axes))
                if not same(mpslayout.permute(x, axes), ref):
                    fails.append(("nd", shape, axes, np.dtype(dt).name))
                if dt == np.float32:
                    f16 = mpslayout.permute(x, axes, dtype=np.float16)
                    if not same(f16, ref.astype(np.float16)):
                        fails.append(("nd-f16", shape, axes))
print(mpslayout._core.isa())
if fails:
    print(fails[:20])
    sys.exit(1)
"""


@pytest.mark.parametrize("stream", ["default", "stream"])
@pytest.mark.parametrize("isa", mpslayout._core.available_isas())
def test_every_dispatch_path_matches_numpy(isa: str, stream: str) -> None:
    env = dict(os.environ, MPSLAYOUT_ISA=isa)
    if stream == "stream":
        env["MPSLAYOUT_STREAM_BYTES"] = "0"
    proc = subprocess.run(
        [sys.executable, "-c", SWEEP], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == isa


# What each architecture's build must offer: x86-64 always has SSE2 (AVX2 where the CPU has
# it), AArch64 always NEON. A wheel built without its SIMD file (a CMake architecture slip,
# say a macOS arm64 wheel with only the portable kernels) fails here.
EXPECTED_ISAS = {
    "x86_64": (["scalar", "sse2"], ["scalar", "sse2", "avx2"]),
    "amd64": (["scalar", "sse2"], ["scalar", "sse2", "avx2"]),
    "aarch64": (["scalar", "neon"],),
    "arm64": (["scalar", "neon"],),
}


def test_this_architecture_has_its_simd_kernels_and_picks_the_best() -> None:
    isas = _core.available_isas()
    machine = platform.machine().lower()
    if machine not in EXPECTED_ISAS:
        pytest.skip(f"no SIMD kernels for {machine}")
    assert isas in EXPECTED_ISAS[machine]
    env = {k: v for k, v in os.environ.items() if k != "MPSLAYOUT_ISA"}
    proc = subprocess.run(
        [sys.executable, "-c", "import mpslayout; print(mpslayout._core.isa())"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert proc.stdout.strip() == isas[-1]


def test_unsupported_isa_is_refused() -> None:
    env = dict(os.environ, MPSLAYOUT_ISA="no-such-isa")
    proc = subprocess.run(
        [sys.executable, "-c", "import mpslayout"], env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "MPSLAYOUT_ISA" in proc.stderr
    assert "unsupported" in proc.stderr


# The kernels per shape (engine.hpp, TileKernel): "direct" 8x8 tiles into the destination;
# "staged": each panel (a conv output channel's (kH*kW, I) block) built in a buffer and
# copied out; "stream": the same leaving with non-temporal stores; "panel": a whole panel
# per work item, streamed; for row plans "scatter" (rows walked in source order) and "copy" (the
# ISA's copy loop). The planner picks by shape and size; MPSLAYOUT_TILE forces one for the
# whole sweep above (a kernel forced on the other kind of plan runs that plan's plain one).
KERNELS = ["direct", "staged", "stream", "panel", "scatter", "copy"]


@pytest.mark.parametrize("tile", KERNELS)
def test_every_tile_kernel_matches_numpy(tile: str) -> None:
    env = dict(os.environ, MPSLAYOUT_TILE=tile)
    proc = subprocess.run(
        [sys.executable, "-c", SWEEP], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


CONV_SHAPES = [(64, 3, 7, 7), (64, 64, 3, 3), (24, 40, 5, 5), (17, 33, 3, 3), (8, 1024, 3, 3),
               (12, 9, 1, 7), (256, 128, 3, 3)]


@pytest.mark.parametrize("tile", ["direct", "staged", "stream", "panel", "auto"])
def test_conv_weights_on_every_tile_kernel(tile: str) -> None:
    """Forced through the private hook, in this process: conv weights (3x3, 5x5, 7x7 and
    odd channel counts, float32 and the fused float16 cast, aligned and unaligned outputs)
    equal numpy's transpose bit for bit, NaNs and infinities included."""
    rng = np.random.default_rng(11)
    _core.set_tile_kernel(tile)
    try:
        assert _core.tile_kernel() == tile
        for shape in CONV_SHAPES:
            w = rng.standard_normal(shape).astype(np.float32)
            specials = np.array([np.nan, np.inf, -np.inf, 7e4, -0.0, 1e-8, 65520.0], np.float32)
            w.flat[rng.choice(w.size, size=len(specials), replace=False)] = specials
            want = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
            with np.errstate(over="ignore"):
                want16 = want.astype(np.float16)
            for offset in (0, 4, 16):
                raw = np.empty(w.nbytes + 64, np.uint8)
                start = (-raw.ctypes.data) % 64 + offset
                out = raw[start : start + w.nbytes].view(np.float32).reshape(want.shape)
                got = mpslayout.conv_weights(w, out=out, threads=1)
                assert got.tobytes() == want.tobytes(), (tile, shape, offset)
            got16 = mpslayout.conv_weights(w, dtype=np.float16, threads=2)
            assert got16.tobytes() == want16.tobytes(), (tile, shape)
    finally:
        _core.set_tile_kernel("auto")


# The shape families of issue 19 against their slow twins (mpslayout.slow), for every
# forced kernel on every instruction set: the Linear after flatten (per output row a
# (C, H*W) -> (H*W, C) panel, "panel"), a Dense before a Reshape (rows of I from C*H*W apart,
# "scatter"), and in-order copies (1x1 and depthwise weights, "copy"). Shapes
# are small enough for the twins' Python loops, with odd extents (block edges on both
# axes), NaN payloads, infinities and float16 overflow, and unaligned outputs.
FAMILIES = r"""
import numpy as np
import mpslayout
from mpslayout import slow

rng = np.random.default_rng(19)
def weights(shape):
    w = rng.standard_normal(shape).astype(np.float32)
    specials = np.array([np.nan, np.inf, -np.inf, 7e4, -0.0, 1e-8, 65520.0], np.float32)
    k = min(len(specials), w.size - 1)
    w.flat[rng.choice(w.size, size=k, replace=False)] = specials[:k]
    w.view(np.uint32).flat[-1] = 0x7FA00001  # a signalling NaN with a payload
    return w

def out_at(shape, dt, offset):
    n = int(np.prod(shape)) * np.dtype(dt).itemsize
    raw = np.empty(n + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    return raw[start:start + n].view(dt).reshape(shape)

def check(name, got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, name
    assert got.tobytes() == want.tobytes(), name

with np.errstate(all="ignore"):
    for o, c, h, w in [(3, 40, 7, 7), (2, 33, 5, 5), (2, 17, 3, 3), (1, 64, 1, 7)]:
        x = weights((o, c * h * w))
        for dt in (None, np.float16):
            want = slow.fc_weights(x, input_shape=(c, h, w), dtype=dt)
            for offset in (0, 16):
                out = out_at(want.shape, want.dtype, offset)
                got = mpslayout.fc_weights(x, input_shape=(c, h, w), dtype=dt, out=out, threads=1)
                check(("flatten", o, c, h, w, dt, offset), got, want)
    for hh, ww, cc, i in [(4, 4, 40, 100), (2, 3, 20, 37), (1, 2, 9, 8), (3, 3, 17, 1)]:
        x = weights((hh * ww * cc, i))
        for dt in (None, np.float16):
            want = slow.dense_reshape(x, shape=(hh, ww, cc), order="CHW", dtype=dt)[0]
            for offset in (0, 16):
                out = out_at(want.shape, want.dtype, offset)
                got = mpslayout.dense_reshape(x, shape=(hh, ww, cc), order="CHW", dtype=dt,
                                              out=out, threads=1)[0]
                check(("rows", hh, ww, cc, i, dt, offset), got, want)
    # rows swapped the other way, long rows, rows of 256 bytes and under (streamed scatter
    # from 256 bytes on AVX2, plain stores below), past the planner's 64 KiB
    for shape, perms in [((3, 80, 70), [(1, 0, 2)]), ((2, 9, 1100), [(1, 0, 2)]),
                         ((5, 60, 64), [(1, 0, 2)]), ((40, 7, 63), [(1, 0, 2)]),
                         ((7, 40, 17), [(1, 0, 2)]),
                         ((3, 4, 20, 70), [(2, 0, 1, 3), (1, 2, 0, 3)])]:
        x = weights(shape)
        for axes in perms:
            want = slow.permute(x, axes)
            for offset in (0, 4, 16):
                got = mpslayout.permute(x, axes, out=out_at(want.shape, want.dtype, offset))
                check(("swap", shape, axes, offset), got, want)
    for shape in [(256, 64, 1, 1), (17, 3, 1, 1), (5, 1, 1, 1), (512, 1, 3, 3), (33, 1, 5, 5)]:
        x = weights(shape)
        for dt in (None, np.float16):
            if shape[1] == 1 and shape[2] > 1:
                want = slow.depthwise_weights(x, dtype=dt)
                fast = lambda out: mpslayout.depthwise_weights(x, dtype=dt, out=out, threads=1)
            else:
                want = slow.conv_weights(x, dtype=dt)
                fast = lambda out: mpslayout.conv_weights(x, dtype=dt, out=out, threads=1)
            for offset in (0, 4, 16, 36):
                got = fast(out_at(want.shape, want.dtype, offset))
                check(("copy", shape, dt, offset), got, want)
    # in-order copies of 0-69 elements and around the loop's 32- and 128-byte steps
    steps = [k * 32 + e for k in range(1, 9) for e in (-1, 0, 1)]
    for n in sorted(set(range(0, 70)) | set(steps) | {1000, 4099, 16384}):
        for dt in (np.uint8, np.float32, np.float64):
            x = rng.integers(0, 255, size=n * np.dtype(dt).itemsize, dtype=np.uint8).view(dt)
            for offset in (0, 8, 24):
                out = out_at((n,), dt, offset)
                got = mpslayout.permute(x, (0,), out=out)
                check(("bytes", n, offset), got, slow.permute(x, (0,)))
print(mpslayout._core.isa(), mpslayout._core.tile_kernel())
"""


@pytest.mark.parametrize("tile", [*KERNELS, "auto"])
@pytest.mark.parametrize("isa", mpslayout._core.available_isas())
def test_shape_families_on_every_kernel_match_slow_twins(isa: str, tile: str) -> None:
    env = dict(os.environ, MPSLAYOUT_ISA=isa, MPSLAYOUT_TILE=tile)
    proc = subprocess.run(
        [sys.executable, "-c", FAMILIES], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [isa, tile]


def test_planner_picks_a_kernel_by_size() -> None:
    """The names _core.plan reports for conv weights: direct tiles for small ones, staged
    and streamed panels from 64 KiB of output, and each forced kernel when forced."""
    def plan(shape: tuple[int, ...]) -> str:
        w = np.zeros(shape, np.float32)
        o = np.empty((shape[0], shape[2], shape[3], shape[1]), np.float32)
        st = w.strides
        return _core.plan(w, o, [shape[0], shape[2], shape[3], shape[1]],
                          [st[0], st[2], st[3], st[1]], [])

    assert plan((16, 16, 3, 3)) == "tile"  # 9 KiB
    assert plan((256, 256, 3, 3)) == "stream"
    assert plan((512, 512, 3, 3)) == "stream"  # 9.4 MB: streamed too since issue 19
    assert plan((256, 64, 1, 1)) == "copy"  # in order: the copy loop
    for tile, name in [("direct", "tile"), ("staged", "staged"), ("stream", "stream"),
                       ("panel", "panel"), ("scatter", "tile"), ("copy", "tile")]:
        _core.set_tile_kernel(tile)
        try:
            assert plan((16, 16, 3, 3)) == name
        finally:
            _core.set_tile_kernel("auto")
    with pytest.raises(ValueError, match="tile kernel"):
        _core.set_tile_kernel("fastest")


def test_planner_picks_row_kernels_and_whole_panels() -> None:
    """Rows of a Dense before a Reshape are walked in source order ("scatter"); a Linear after
    flatten whose output is past the last-level cache runs whole panels ("panel": here
    forced down to small sizes with MPSLAYOUT_STREAM_BYTES=0, in a fresh process)."""
    x = np.zeros((512 * 16, 100), np.float32)
    o = np.empty_like(x)
    st = x.strides
    # (C, HW, I) -> (HW, C, I): the dcgan.dense_reshape case
    assert _core.plan(x, o, [16, 512, 100], [st[0], 16 * st[0], st[1]],
                      [512 * 100 * 4, 100 * 4, 4]) == "scatter"
    # the other way round, (HW, C, I) -> (C, HW, I): walked in the source's order as well when
    # the rows leave with non-temporal stores (AVX2's copies of rows of 256 bytes or more),
    # else in the destination's, whose order has fewer streams
    other = "scatter" if _core.isa() == "avx2" else "row"
    assert _core.plan(x, o, [512, 16, 100], [st[0], 512 * st[0], st[1]],
                      [16 * 100 * 4, 100 * 4, 4]) == other
    h = x.astype(np.float16)
    assert _core.plan(h, h.copy(), [512, 16, 100], [h.strides[0], 512 * h.strides[0], 2],
                      [16 * 100 * 2, 100 * 2, 2]) == "row"  # 200-byte rows: plain stores
    # a cast's rows keep plain stores at any length: the other way round stays "row"
    c = np.zeros((512 * 16, 400), np.float32)
    c16 = np.empty(c.shape, np.float16)
    assert _core.plan(c, c16, [512, 16, 400], [c.strides[0], 512 * c.strides[0], 4],
                      [16 * 400 * 2, 400 * 2, 2], cast=_core.CAST_F32_F16) == "row"
    x2 = np.zeros((64 * 16, 2048), np.float32)  # rows of 8 kB: scatter only when streamed
    assert _core.plan(x2, x2.copy(), [16, 64, 2048], [x2.strides[0], 16 * x2.strides[0], 4],
                      [64 * 8192, 8192, 4]) == other
    code = (
        "import numpy as np; from mpslayout import _core\n"
        "x = np.zeros((8, 512 * 49), np.float32); o = np.empty_like(x)\n"
        "print(_core.plan(x, o, [8, 49, 512], [x.strides[0], 4, 196], [x.strides[0], 2048, 4]))"
    )
    env = dict(os.environ, MPSLAYOUT_STREAM_BYTES="0")
    env.pop("MPSLAYOUT_TILE", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.stdout.strip() == "panel", proc.stdout + proc.stderr


@pytest.mark.parametrize("threads", [2, 3])
def test_streamed_scatter_rows_split_between_threads(threads: int) -> None:
    """Rows walked in source order and streamed, shared out to the pool (6.5 MB moved, past
    the 4 MiB hand-off), with a destination 16 bytes past a line: every row's partial lines
    are written by exactly one thread and equal numpy's, both directions of the swap."""
    rng = np.random.default_rng(23)
    x = rng.standard_normal((1024 * 16, 100), dtype=np.float32)
    raw = np.empty(x.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + 16
    out = raw[start:start + x.nbytes].view(np.float32).reshape(x.shape)
    got = mpslayout.dense_reshape(x, shape=(4, 4, 1024), order="CHW", out=out, threads=threads)[0]
    want = x.reshape(1024, 16, 100).transpose(1, 0, 2).reshape(x.shape)
    assert got.tobytes() == want.tobytes()
    y = x.reshape(16, 1024, 100)
    got2 = mpslayout.permute(y, (1, 0, 2), threads=threads)
    assert got2.tobytes() == np.ascontiguousarray(y.transpose(1, 0, 2)).tobytes()


@pytest.mark.parametrize("seed", [0, 1])
def test_random_row_permutations_match_numpy(seed: int) -> None:
    """Random permutations of the outer axes that keep the last one (row plans: scatter,
    streamed or not, and the plain row walk), 1-4 kB rows of every element size, outputs
    up to 2 MB at offsets 0-48 bytes past a line, 1-3 threads: numpy's bits."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < 40:
        nd = int(rng.integers(3, 6))
        dt = np.dtype(rng.choice([np.uint8, np.float16, np.float32, np.float64, np.int64]))
        shape = [int(rng.integers(1, 30)) for _ in range(nd - 1)]
        shape.append(int(rng.integers(1, 4096 // dt.itemsize + 2)))
        size = int(np.prod(shape)) * dt.itemsize
        if size > 2 << 20:
            continue
        perm = (*(int(a) for a in rng.permutation(nd - 1)), nd - 1)
        # random bits (NaN payloads included): no cast, which warns on some numpy versions
        x = rng.integers(0, 256, size, dtype=np.uint8).view(dt).reshape(shape)
        want = np.ascontiguousarray(x.transpose(perm))
        raw = np.empty(size + 128, np.uint8)
        start = (-raw.ctypes.data) % 64 + int(rng.choice([0, 16, 48]))
        start -= start % dt.itemsize
        out = raw[start:start + size].view(dt).reshape(want.shape)
        threads = int(rng.integers(1, 4))
        got = mpslayout.permute(x, perm, out=out, threads=threads)
        assert got.tobytes() == want.tobytes(), (shape, perm, dt, threads)
        done += 1
