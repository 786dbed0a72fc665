"""Many Python threads converting at once, set_threads changing under them, and Ctrl-C.

Each scenario runs in a child process with a hard timeout, so that a deadlock or a crash
fails one test (with the child's stack dump) instead of hanging or killing the session.
The children inherit the environment, so under ``.ci/sanitize`` they run with AddressSanitizer
and UndefinedBehaviorSanitizer too. ``MPSLAYOUT_STRESS_SECONDS`` sets how long the
hammering lasts (default 4 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import mpslayout

STRESS_SECONDS = float(os.environ.get("MPSLAYOUT_STRESS_SECONDS", "4"))
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")
TIMEOUT = 120 + 6 * STRESS_SECONDS * (4 if SANITIZED else 1)

HAMMER = r"""
import faulthandler, os, random, sys, threading, time
import numpy as np
import mpslayout

faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)  # a hang prints every stack
seconds = float(sys.argv[1])
rng = np.random.default_rng(0)

def bits(shape, dt):
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dt).itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)

try:
    import ml_dtypes
    BF16 = ml_dtypes.bfloat16
except ImportError:
    BF16 = None

# (name, call(threads) -> array, expected bytes). Sizes straddle the engine's 1 MiB
# threshold for using the pool, so some calls share it and some run on the caller alone.
big = bits((512, 768), np.float32)            # 1.5 MiB: the pool
huge = bits((6, 300, 301), np.uint8)          # odd sizes, tile edges
w = bits((64, 48, 3, 3), np.float32)
img = bits((2, 13, 40, 33), np.float16)
dw = bits((24, 1, 5, 5), np.float32)
small = bits((3, 5, 7), np.int16)
f64 = bits((300, 700), np.float64)
with np.errstate(all="ignore"):
    jobs = [
        ("permute_big", lambda t: mpslayout.permute(big, (1, 0), threads=t),
         np.ascontiguousarray(big.T)),
        ("permute_u8", lambda t: mpslayout.permute(huge, (2, 0, 1), threads=t),
         np.ascontiguousarray(huge.transpose(2, 0, 1))),
        ("permute_f16", lambda t: mpslayout.permute(big, (1, 0), dtype=np.float16, threads=t),
         np.ascontiguousarray(big.T).astype(np.float16)),
        ("permute_f64", lambda t: mpslayout.permute(f64, (1, 0), dtype=np.float32, threads=t),
         np.ascontiguousarray(f64.T).astype(np.float32)),
        ("convert_blocked", lambda t: mpslayout.convert(img, "NCHW", "NCHW8c", threads=t),
         np.pad(img, ((0, 0), (0, 3), (0, 0), (0, 0))).reshape(2, 2, 8, 40, 33)
         .transpose(0, 1, 3, 4, 2).copy()),
        ("conv_weights", lambda t: mpslayout.conv_weights(w, threads=t),
         np.ascontiguousarray(w.transpose(0, 2, 3, 1))),
        ("image_slices", lambda t: mpslayout.image_slices(img, threads=t),
         np.pad(img, ((0, 0), (0, 3), (0, 0), (0, 0))).reshape(2, 4, 4, 40, 33)
         .transpose(0, 1, 3, 4, 2).reshape(8, 40, 33, 4)),
        ("expand_depthwise", lambda t: mpslayout.expand_depthwise(dw, in_channels=12, threads=t),
         mpslayout.slow.expand_depthwise(dw, in_channels=12) if hasattr(mpslayout, "slow")
         else __import__("mpslayout.slow").slow.expand_depthwise(dw, in_channels=12)),
        ("small", lambda t: mpslayout.permute(small, (2, 1, 0), threads=t),
         np.ascontiguousarray(small.transpose(2, 1, 0))),
    ]
    if BF16 is not None:
        jobs.append(("bf16", lambda t: mpslayout.permute(big, (1, 0), dtype=BF16, threads=t),
                     np.ascontiguousarray(big.T).astype(BF16)))
    expected = {name: (want.dtype, want.shape, want.tobytes()) for name, _, want in jobs}

THREADS = [None, None, 1, 2, 3, 4, 8, 64]
stop = time.monotonic() + seconds
errors, counts = [], [0] * 8

def worker(k):
    r = random.Random(k)
    try:
        while time.monotonic() < stop:
            name, call, _ = jobs[r.randrange(len(jobs))]
            t = THREADS[(k + counts[k]) % len(THREADS)]
            got = call(t)
            dt, shape, data = expected[name]
            if got.dtype != dt or got.shape != shape or got.tobytes() != data:
                errors.append(f"{name} threads={t}: wrong result")
                return
            counts[k] += 1
    except BaseException as e:
        errors.append(f"worker {k}: {type(e).__name__}: {e}")

def churn():
    r = random.Random(99)
    n = 0
    while time.monotonic() < stop:
        mpslayout.set_threads(r.choice([None, 1, 2, 3, 5, 16]))
        n += 1
        time.sleep(0.0005)
    mpslayout.set_threads(None)
    print("set_threads calls", n)

threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
threads.append(threading.Thread(target=churn))
for t in threads:
    t.start()
for t in threads:
    t.join()
print("calls", sum(counts), counts)
if errors:
    print("\n".join(errors[:20]))
    sys.exit(1)
if min(counts) == 0:
    print("a worker never finished a call")
    sys.exit(1)
"""


def _run_child(code: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:  # pragma: no cover - only on a hang
        out = e.stdout or ""
        err = e.stderr or ""
        pytest.fail(f"child hung (deadlock?) after {timeout} s\n{out}\n{err}")


def test_eight_threads_and_set_threads_churn_are_bit_exact() -> None:
    seconds = STRESS_SECONDS
    proc = _run_child(HAMMER, str(seconds), str(TIMEOUT - 10), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "calls" in proc.stdout


SAME_OUT = r"""
import faulthandler, sys, threading
import numpy as np
import mpslayout
faulthandler.dump_traceback_later(float(sys.argv[1]), exit=True)
x = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)
outs = [np.empty((1024, 1024), np.float32) for _ in range(8)]
want = np.ascontiguousarray(x.T)
barrier = threading.Barrier(8)
bad = []
def go(k):
    barrier.wait()
    for i in range(40):
        mpslayout.permute(x, (1, 0), out=outs[k], threads=1 + (i + k) % 4)
        if not np.array_equal(outs[k], want):
            bad.append(k)
            return
ts = [threading.Thread(target=go, args=(k,)) for k in range(8)]
for t in ts: t.start()
for t in ts: t.join()
sys.exit(1 if bad else 0)
"""


def test_one_shared_input_eight_outputs() -> None:
    """All threads read the same array and write their own out= at the same moment."""
    proc = _run_child(SAME_OUT, str(TIMEOUT - 10), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_calls_from_threads_in_process() -> None:
    """A short in-process version (no subprocess), so the sanitizer sees it in the main run."""
    import threading

    import numpy as np

    x = np.arange(600 * 700, dtype=np.float32).reshape(600, 700)
    want = np.ascontiguousarray(x.T)
    errors: list[str] = []

    def go(k: int) -> None:
        for i in range(20):
            got = mpslayout.permute(x, (1, 0), threads=1 + (i * k) % 5)
            if not np.array_equal(got, want):
                errors.append(f"thread {k} call {i}")
                return

    ts = [threading.Thread(target=go, args=(k,), daemon=True) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
        assert not t.is_alive(), "a converting thread hung"
    assert not errors


# ------------------------------------------------------------------------------ Ctrl-C

# A deliberately slow conversion: a gather with large, unrelated strides on both source
# axes (every element a cache miss) into a 1.5 GiB destination; one call takes 9-16 s on
# this kind of machine (2 cores), far longer than the latency allowed after Ctrl-C.
INTERRUPTED = r"""
import faulthandler, os, sys, threading, time
import numpy as np
from numpy.lib.stride_tricks import as_strided
import mpslayout

threads = int(sys.argv[1]); cast = sys.argv[2] == "cast"
faulthandler.dump_traceback_later(60, exit=True)

def tasks():
    return len(os.listdir("/proc/self/task"))

# n x n elements gathered with strides of thousands of elements on both axes
n, s1, s2 = (30000, 1031, 3097) if cast else (40000, 4099, 12291)
dt = np.float32 if cast else np.uint8
buf = np.ones((n - 1) * (s1 + s2) + 1, dt)  # exactly what the view reaches (< 650 MB)
e = buf.itemsize
v = as_strided(buf, shape=(n, n), strides=(s1 * e, s2 * e), writeable=False)
kw = {"dtype": np.float16} if cast else {}
small = np.ascontiguousarray(v[:2048, :2048])  # big enough to start the pool
mpslayout.permute(small, (1, 0), threads=threads, **kw)  # warm the pool up
before = tasks()
print("ready", before, flush=True)
t0 = time.monotonic()
done = 0
try:
    while True:
        mpslayout.permute(v, (1, 0), threads=threads, **kw)
        done += 1
except KeyboardInterrupt:
    caught = time.monotonic()
    print(f"interrupted {caught:.6f} after {done} complete calls", flush=True)
# no worker may still be running or stuck, and the pool must still work
time.sleep(0.2)
after = tasks()
ok = np.array_equal(mpslayout.permute(small, (1, 0), threads=threads, **kw),
                    np.ascontiguousarray(small.T).astype(kw.get("dtype", dt)))
print(f"threads before {before} after {after} python {threading.active_count()} ok {ok}",
      flush=True)
sys.exit(0 if ok and after <= before and threading.active_count() == 1 else 3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
@pytest.mark.parametrize(("threads", "mode"), [(2, "copy"), (1, "cast")])
def test_ctrl_c_stops_a_long_conversion(threads: int, mode: str) -> None:
    latency_allowed = 2.0 * (4 if SANITIZED else 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(threads), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), line + proc.communicate(timeout=30)[1]
        time.sleep(1.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=latency_allowed + 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no exit 20 s after Ctrl-C\n{out}\n{err}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    caught = float(out.split("interrupted ")[1].split()[0])
    latency = caught - sent
    assert "after 0 complete calls" in out, "the conversion is too fast to test Ctrl-C: " + out
    assert latency < latency_allowed, f"KeyboardInterrupt {latency:.2f} s after Ctrl-C\n{out}"
