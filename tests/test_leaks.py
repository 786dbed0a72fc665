"""A million small calls keep resident memory flat.

The calls cycle through the cheap public paths: permute with and without ``out=``, a fused
cast, convert to a blocked layout, an MPS weight rule, image slices, and refusals (the C++
and Python error paths). A leak of even one small object per call would add tens of MB over
a million calls; the bound allows 24 MiB of growth after a warm-up, for allocator noise.
Python objects are counted too (``gc.get_objects``), which catches a leaked reference
exactly. ``MPSLAYOUT_LEAK_CALLS`` changes the number of calls (default 1,000,000, about 10 s
here).

Not run under the sanitizer build: AddressSanitizer's quarantine holds freed memory back
on purpose, so RSS says nothing there (and leak detection is off for Python anyway).
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import mpslayout

CALLS = int(os.environ.get("MPSLAYOUT_LEAK_CALLS", "1000000"))
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")
MiB = 1 << 20

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/self/status"),
    pytest.mark.skipif(SANITIZED, reason="ASan's quarantine makes RSS meaningless"),
]


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def _calls() -> list:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = np.empty((4, 2, 3), np.float32)
    w = np.ones((4, 2, 3, 3), np.float32)
    x4 = x[None]
    readonly = np.empty((4, 2, 3), np.float32)
    readonly.setflags(write=False)

    def permute():
        return mpslayout.permute(x, (2, 0, 1))

    def permute_out():
        return mpslayout.permute(x, (2, 0, 1), out=out)

    def cast():
        return mpslayout.permute(x, (2, 0, 1), dtype=np.float16)

    def blocked():
        return mpslayout.convert(x4, "NCHW", "NCHW4c")

    def conv():
        return mpslayout.conv_weights(w, threads=2)

    def slices():
        return mpslayout.image_slices(x4)

    def bad_axes():
        try:
            mpslayout.permute(x, (0, 0, 1))
        except ValueError:
            return None
        raise AssertionError("not refused")  # pragma: no cover

    def overlap():  # refused by the C++ engine (a C++ exception turned into ValueError)
        try:
            mpslayout.permute(x, (0, 1, 2), out=x)
        except ValueError:
            return None
        raise AssertionError("not refused")  # pragma: no cover

    def readonly_out():
        try:
            mpslayout.permute(x, (2, 0, 1), out=readonly)
        except ValueError:
            return None
        raise AssertionError("not refused")  # pragma: no cover

    # the cheap calls more often, so that a million take about ten seconds
    cheap = [permute, permute_out, permute, conv, permute, cast, permute, bad_axes]
    return [*cheap, permute, permute_out, overlap, permute, blocked, permute, readonly_out, slices]


def test_a_million_small_calls_keep_memory_flat() -> None:
    calls = _calls()
    k = len(calls)
    for i in range(20000):  # warm-up: caches, the pool, numpy's small-array cache
        calls[i % k]()
    gc.collect()
    objects_before = len(gc.get_objects())
    rss_before = rss()
    t0 = time.perf_counter()
    for i in range(CALLS):
        calls[i % k]()
    elapsed = time.perf_counter() - t0
    gc.collect()
    grown = rss() - rss_before
    objects_grown = len(gc.get_objects()) - objects_before
    msg = f"{CALLS} calls in {elapsed:.1f} s: RSS +{grown / MiB:.1f} MiB, objects +{objects_grown}"
    print(msg)
    assert grown < 24 * MiB, msg
    assert objects_grown < 1000, msg


def test_large_calls_release_their_results() -> None:
    """Results of big conversions (pool, streaming stores) are freed when dropped."""
    x = np.ones((2048, 2048), np.float32)  # 16 MiB
    for _ in range(5):
        mpslayout.permute(x, (1, 0), threads=2)
    gc.collect()
    before = rss()
    for i in range(200):
        mpslayout.permute(x, (1, 0), threads=1 + i % 3)
        mpslayout.permute(x, (1, 0), dtype=np.float16, threads=2)
    gc.collect()
    grown = rss() - before
    assert grown < 64 * MiB, f"RSS +{grown / MiB:.1f} MiB after 400 calls of 16 MiB"
