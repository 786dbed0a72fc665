"""The ``mpslayout`` command line, run as ``python -m mpslayout`` in a subprocess."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import mpslayout


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "mpslayout", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def expected_version():
    v = getattr(mpslayout, "__version__", None)
    if v is None:
        from importlib.metadata import version

        v = version("mpslayout")
    return v


@pytest.fixture
def weights(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5, 3, 2)).astype(np.float32)
    x[0, 0, 0, 0] = 1e5  # overflows float16
    x[0, 1, 0, 0] = 2.0**-25  # rounds to zero in float16
    path = tmp_path / "w.npy"
    np.save(path, x)
    return x, path


def error_lines(stderr):
    """Lines of an error report, ignoring an argparse-style usage block."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]


@pytest.mark.parametrize("dtype", [None, "float16", "float32"])
def test_convert_raw_bin(weights, tmp_path, dtype):
    x, path = weights
    out = tmp_path / "out.bin"
    extra = [] if dtype is None else ["--dtype", dtype]
    proc = run_cli("convert", path, "--from", "OIHW", "--to", "OHWI", *extra, "-o", out,
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with np.errstate(all="ignore"):
        want = np.transpose(x, (0, 2, 3, 1)).astype(dtype or x.dtype)
    want = want.astype(want.dtype.newbyteorder("<")).tobytes()
    assert out.read_bytes() == want


def test_convert_npy_output(weights, tmp_path):
    x, path = weights
    out = tmp_path / "out.npy"
    proc = run_cli("convert", path, "--from", "OIHW", "--to", "OHWI", "--dtype", "float16",
                   "-o", out, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    with np.errstate(all="ignore"):
        want = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))).astype(np.float16)
    assert got.dtype == np.float16
    assert got.shape == (6, 3, 2, 5)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_convert_blocked_layout(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 4, 3)).astype(np.float32)
    src = tmp_path / "x.npy"
    np.save(src, x)
    out = tmp_path / "y.npy"
    proc = run_cli("convert", src, "--from", "NCHW", "--to", "NCHW4c", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    p = np.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0))).reshape(2, 2, 4, 4, 3)
    np.testing.assert_array_equal(np.load(out), p.transpose(0, 1, 3, 4, 2))


def test_version(tmp_path):
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert expected_version() in proc.stdout + proc.stderr


def test_help(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "convert" in proc.stdout


@pytest.mark.parametrize(
    "layouts",
    [("OIHW", "OHWX"), ("OIHW", "OHW"), ("OIHH", "OHWI"), ("oihw", "ohwi"), ("OIHW", "OHWI0o")],
)
def test_bad_layout_is_one_line_error(weights, tmp_path, layouts):
    _, path = weights
    out = tmp_path / "bad.bin"
    proc = run_cli("convert", path, "--from", layouts[0], "--to", layouts[1], "-o", out,
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr


def test_missing_input_is_clean_error(tmp_path):
    proc = run_cli("convert", tmp_path / "nope.npy", "--from", "OIHW", "--to", "OHWI", "-o",
                   tmp_path / "o.bin", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1, proc.stderr


def test_verify_refuses_one_input_given_two_dims(tmp_path: pathlib.Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--input-dims naming one input twice with different dims is an error, not a silent
    pick of the last one (as export does)."""
    from mpslayout.cli import main

    code = main(["verify", str(tmp_path), "--model", str(tmp_path / "m.onnx"),
                 "--input-dims", "x=1,3,8,8", "--input-dims", "x=1,3,16,16"])
    assert code == 1
    assert "--input-dims gives 'x' twice" in capsys.readouterr().err
