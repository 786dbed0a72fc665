"""Thread settings and the worker pool: defaults, validation, fork safety, identical results."""

import os
import subprocess
import sys

import numpy as np
import pytest

import mpslayout


def test_set_threads_round_trip() -> None:
    try:
        mpslayout.set_threads(3)
        assert mpslayout.get_threads() == 3
    finally:
        mpslayout.set_threads(None)
    assert mpslayout.get_threads() >= 1


def test_env_default_is_read() -> None:
    code = "import mpslayout; print(mpslayout.get_threads())"
    env = dict(os.environ, MPSLAYOUT_NUM_THREADS="5")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "5"


def test_bad_env_default_is_a_clear_error() -> None:
    code = "import mpslayout, numpy as np; mpslayout.permute(np.ones(3), (0,))"
    env = dict(os.environ, MPSLAYOUT_NUM_THREADS="many")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "MPSLAYOUT_NUM_THREADS" in out.stderr


@pytest.mark.parametrize("threads", [1, 2, 3, 7, 300])
def test_any_thread_count_gives_the_same_bytes(threads: int) -> None:
    rng = np.random.default_rng(threads)
    x = rng.standard_normal((96, 80, 3, 3)).astype(np.float32)  # 2.6 MB: large enough to split
    ref = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    assert np.array_equal(mpslayout.conv_weights(x, threads=threads), ref)
    f16 = mpslayout.conv_weights(x, threads=threads, dtype=np.float16)
    assert np.array_equal(f16.view(np.uint16), ref.astype(np.float16).view(np.uint16))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_can_use_threads() -> None:
    # The parent's workers do not exist in a child; the pool must start afresh, not hang.
    code = """
import os, sys, numpy as np, mpslayout
x = np.arange(2048 * 1024, dtype=np.float32).reshape(2048, 1024)
mpslayout.permute(x, (1, 0), threads=2)
pid = os.fork()
if pid == 0:
    ok = np.array_equal(mpslayout.permute(x, (1, 0), threads=2), x.T)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
