"""Recurrent weights must be exercised: with one timestep and a zero initial state the
recurrent matrices multiply zeros (and an LSTM's forget gate scales a zero cell), so a
layer with its forget and output recurrent matrices swapped agreed with the model. verify
then also runs the files from a seeded random state over several steps against ONNX
Runtime running the node alone."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mpslayout import cli  # noqa: E402
from mpslayout.verify import verify  # noqa: E402


class _Vad(torch.nn.Module):
    """A voice-activity-style head: an LSTM over frames, one frame per call."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def _export(tmp_path: Path, cell: str, steps: int, dtype: str = "float32") -> tuple[Path, Path]:
    torch.manual_seed(0)
    path = tmp_path / f"{cell}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_Vad(cell).eval(), (torch.randn(steps, 1, 8),), str(path),
                          dynamo=False, input_names=["x"], output_names=["y"])
    out = tmp_path / f"{cell}-{dtype}"
    assert cli.main(["export", str(path), "-o", str(out), "-q", "--dtype", dtype]) == 0
    return path, out


def _swap(out: Path, a: str, b: str) -> str:
    """Swap two gate files of the recurrent layer (bytes and SHA-256 both)."""
    doc = json.loads((out / "manifest.json").read_text())
    entry = next(e for e in doc["layers"] if e["kind"] in ("lstm", "gru"))
    fa, fb = entry["files"][a], entry["files"][b]
    da, db = (out / fa["file"]).read_bytes(), (out / fb["file"]).read_bytes()
    assert da != db
    (out / fa["file"]).write_bytes(db)
    (out / fb["file"]).write_bytes(da)
    fa["sha256"], fb["sha256"] = hashlib.sha256(db).hexdigest(), hashlib.sha256(da).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    return str(entry["name"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_one_step_from_zero_state_still_tests_the_recurrent_matrices(tmp_path: Path,
                                                                     dtype: str) -> None:
    path, out = _export(tmp_path, "lstm", 1, dtype)
    report = verify(out, path)
    assert report.ok, report.table()
    [row] = [r for r in report.rows if r.kind == "lstm"]
    assert row.state is not None, report.table()
    assert row.state.ok
    assert "random initial state" in " ".join(row.notes)
    name = _swap(out, "forgetGateRecurrentWeights", "outputGateRecurrentWeights")
    bad = verify(out, path)
    assert not bad.ok, bad.table()
    first = bad.first_divergence
    assert first is not None
    assert first.name == name
    assert first.isolated is not None
    assert first.isolated.ok  # the given input alone cannot see it
    assert first.state is not None
    assert not first.state.ok


def test_forget_gate_input_weights_meet_a_zero_cell(tmp_path: Path) -> None:
    """One step from c0 = 0: the forget gate scales a zero cell, so its input weights
    doubled agree with the model on the given input; the random state sees them."""
    path, out = _export(tmp_path, "lstm", 1)
    doc = json.loads((out / "manifest.json").read_text())
    entry = next(e for e in doc["layers"] if e["kind"] == "lstm")
    info = entry["files"]["forgetGateInputWeights"]
    w = np.fromfile(out / info["file"], "<f4")
    data = (2.0 * w).astype("<f4").tobytes()
    (out / info["file"]).write_bytes(data)
    info["sha256"] = hashlib.sha256(data).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    bad = verify(out, path)
    first = bad.first_divergence
    assert first is not None, bad.table()
    assert first.isolated is not None
    assert first.isolated.ok  # f * c0 = f * 0 whatever f is
    assert first.state is not None
    assert not first.state.ok


def test_gru_one_step(tmp_path: Path) -> None:
    path, out = _export(tmp_path, "gru", 1)
    report = verify(out, path, allow_inexact=True)
    assert report.ok, report.table()
    [row] = [r for r in report.rows if r.kind == "gru"]
    assert row.state is not None
    assert row.state.ok, report.table()
    _swap(out, "inputGateRecurrentWeights", "recurrentGateRecurrentWeights")  # z and r
    bad = verify(out, path, allow_inexact=True)
    assert not bad.ok, bad.table()


def test_several_steps_need_no_probe(tmp_path: Path) -> None:
    path, out = _export(tmp_path, "lstm", 4)
    report = verify(out, path)
    assert report.ok, report.table()
    assert all(r.state is None for r in report.rows)
    _swap(out, "forgetGateRecurrentWeights", "outputGateRecurrentWeights")
    assert not verify(out, path).ok
