"""verify on weights requantized to 8 bits (``export --dtype uint8``, linear ranges and
lookup table), and ONNX Runtime's dynamic quantization with biases.

- correct exports of the whole corpus (tests/corpus.py) and of two complete convnets
  (tests/realworld.py: a ResNet18-style classifier, MobileNetV3 + DB head) verify with the
  default tolerances, each requantized layer saying how much of its tolerance the
  quantization bound takes;
- planted bugs in the uint8 files fail and name the layer: OIHW bytes where MPS reads
  OHWI, a kernel turned by 180 degrees, a channel's min and max swapped, the ranges of two
  channels of different spans swapped, one channel's range one step too high on a layer
  whose inputs are all >= 0 (after a ReLU: with inputs of both signs a one-step shift of a
  whole channel can hide inside the honest bound, see docs/verify.md), two lookup-table
  entries swapped. Each bug is made on the export's own files with numpy (SHA-256 kept
  consistent), not with mpslayout's converters;
- the per-entry lookup-table bound equals a plain loop over the weights.

ONNX Runtime's dynamic quantization with biases: tests/test_export_quant.py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import corpus  # noqa: E402
import realworld  # noqa: E402
from test_export_quant import rewrite  # noqa: E402
from test_verify_corpus import assert_names_only  # noqa: E402

from mpslayout import cli  # noqa: E402
from mpslayout.export import export  # noqa: E402
from mpslayout.verify import verify  # noqa: E402

MODES = ("linear", "lut")


def _export(cm: Any, folder: Path, mode: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cm.name}.onnx"
    onnx.save(cm.model, str(path))
    out = folder / f"out_{mode}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MPS's multiple-of-4 channel advice
        export(str(path), str(out), dtype="uint8", quantize=mode, input_dims=cm.input_dims,
               progress=False)
    return path, out


def _given(cm: Any) -> dict[str, np.ndarray] | None:
    return corpus.feeds(cm) if cm.name == "norms" else None


def _requantized(out: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads((out / "manifest.json").read_text())
    return {e["name"]: e for e in doc["layers"]
            if e.get("quantization", {}).get("exact") is False}


def _assert_passes_with_shares(report: Any, out: Path) -> float:
    """The report passes; every requantized layer's row reports its quantization share
    (in (0, 1]) and says so in a note. Returns the worst ratio of the layer rows."""
    assert report.ok, report.table()
    lossy = _requantized(out)
    assert lossy
    rows = [r for r in report.rows if r.layer and r.name in lossy]
    assert {r.name for r in rows} == set(lossy)
    for r in rows:
        share = r.isolated.quant_share
        assert share is not None, r
        assert 0 <= share <= 1, r
        assert "quantization_share" in r.as_dict()["isolated"]
        assert any("of the tolerance" in n for n in r.notes), r.notes
    others = [r for r in report.rows if r.layer and r.name not in lossy]
    assert all(r.isolated is None or r.isolated.quant_share is None for r in others)
    return max(c.worst for r in report.rows if r.layer for c in (r.isolated, r.chained) if c)


@pytest.mark.parametrize("mode", MODES)
def test_requantized_corpus_verifies_with_default_tolerances(tmp_path: Path, mode: str) -> None:
    for name in corpus.NAMES:
        cm = corpus.build(name)
        path, out = _export(cm, tmp_path / name, mode)
        report = verify(out, path, input=_given(cm))
        assert _assert_passes_with_shares(report, out) <= 1


@pytest.mark.parametrize("name", ["resnet_cls", "dbnet"])
def test_requantized_convnets_verify(tmp_path: Path, name: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cm = realworld.build(name)
    for mode in MODES:
        path, out = _export(cm, tmp_path, mode)
        _assert_passes_with_shares(verify(out, path), out)
    assert cli.main(["verify", str(out), "--model", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    shares = [r["isolated"]["quantization_share"] for r in doc["rows"]
              if r["isolated"] and "quantization_share" in r["isolated"]]
    assert len(shares) == len(_requantized(out))


# ----------------------------------------------------------------------- planted bugs


def _rotate(q: np.ndarray) -> np.ndarray:
    return q[:, ::-1, ::-1, :]


def _oihw_bytes(q: np.ndarray) -> np.ndarray:
    return q.transpose(0, 3, 1, 2).reshape(q.shape)


def _minmax_swapped(r: np.ndarray) -> np.ndarray:
    r[0] = r[0, ::-1]
    return r


def _spans_swapped(r: np.ndarray) -> np.ndarray:
    """The ranges of the narrowest and the widest channel exchanged."""
    span = r[:, 1] - r[:, 0]
    a, b = int(np.argmin(span)), int(np.argmax(span))
    r[[a, b]] = r[[b, a]]
    return r


def _one_step_high(r: np.ndarray) -> np.ndarray:
    r[0] += (r[0, 1] - r[0, 0]) / 255
    return r


def _lut_swapped(t: np.ndarray) -> np.ndarray:
    t[[64, 192]] = t[[192, 64]]
    return t


# (corpus model, layer, mode, file, bug); the 2nd conv of resnet_block reads a ReLU's output
RESNET2, AFFINE1 = "/conv2/Conv", "conv1"
BUGS = [
    ("resnet_block", RESNET2, "linear", "weights", _oihw_bytes),
    ("resnet_block", RESNET2, "linear", "weights", _rotate),
    ("resnet_block", RESNET2, "linear", "ranges", _minmax_swapped),
    ("resnet_block", RESNET2, "linear", "ranges", _spans_swapped),
    ("resnet_block", RESNET2, "linear", "ranges", _one_step_high),
    ("convtranspose_bias_add", "up", "linear", "weights", _rotate),  # the missing flip
    ("resnet_block", RESNET2, "lut", "weights", _oihw_bytes),
    ("resnet_block", RESNET2, "lut", "weights", _rotate),
    ("resnet_block", RESNET2, "lut", "lut", _lut_swapped),
    ("conv_affine", AFFINE1, "lut", "weights", _rotate),  # Mul folded: scaled source set
    ("conv_affine", AFFINE1, "lut", "lut", _lut_swapped),
]
_EXPORTS: dict[tuple[str, str], tuple[Path, Path]] = {}


@pytest.mark.parametrize(("name", "layer", "mode", "role", "fix"), BUGS,
                         ids=[f"{n}-{m}-{f.__name__[1:]}" for n, _, m, _, f in BUGS])
def test_planted_bug_in_uint8_files_fails(tmp_path_factory: pytest.TempPathFactory, name: str,
                                          layer: str, mode: str, role: str,
                                          fix: Callable[[np.ndarray], np.ndarray]) -> None:
    import shutil

    if (name, mode) not in _EXPORTS:  # one export per model and mode
        _EXPORTS[name, mode] = _export(corpus.build(name), tmp_path_factory.mktemp(name), mode)
    path, clean = _EXPORTS[name, mode]
    out = tmp_path_factory.mktemp("bug") / "out"
    shutil.copytree(clean, out)
    assert layer in _requantized(out)
    rewrite(out, layer, role, fix)
    assert_names_only(verify(out, path), layer)


# ----------------------------------------------------------------------- the LUT bound


def test_lut_entry_bounds_equal_a_plain_loop() -> None:
    from mpslayout.verify.quant_bounds import _lut_deltas
    from mpslayout.verify.tolerance import U32

    rng = np.random.default_rng(5)
    src = rng.standard_normal(3000) * 0.1
    lut = np.sort(rng.choice(src, 200, replace=False))
    lut = np.concatenate([lut, np.full(56, lut[-1])])  # padded with its last value
    got = _lut_deltas(lut, src)
    want = np.zeros(256)
    for v in src:
        d = [abs(v - t) for t in lut]
        near = min(d)
        for k in range(256):
            if d[k] == near:
                want[k] = max(want[k], near)
    slack = 4 * U32 * max(np.abs(src).max(), np.abs(lut).max())
    assert np.all(got >= want)
    assert np.all(got <= want + 2 * slack + 1e-9 * (want == 0))
    assert got.max() > 0.005  # the tails beyond the table's ends
