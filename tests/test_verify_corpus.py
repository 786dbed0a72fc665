"""verify on the shared corpus (tests/corpus.py: real architectures in other exporters'
shapes), judged by ONNX Runtime.

- every corpus model exported with its dims verifies, float32 and float16, and every
  graph operator is accounted for: verified, shape-only, or not verified with a reason;
- planted exporter bugs fail and name the layer, also when verify runs without --input
  (the dims the export recorded): a kernel rotated by 180 degrees, OIHW bytes written as
  if OHWI, a Linear's rows in C, H, W order instead of H, W, C, a transposed convolution
  without its flip. Each bug is made on the export's own .bin (with its SHA-256 updated so
  that only the numbers differ) from the formula of the bug, not with mpslayout's
  converters.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import corpus

from mpslayout import cli
from mpslayout.export import export
from mpslayout.verify import verify

# what the walk cannot verify in each model, and why (every other operator is verified)
NOT_VERIFIED = {
    "unet_small": {"Concat": "multiple of 4"},
    "yolo_head": {"Reshape": "no MPSCNN kernel", "Concat": "not along channels"},
    "attention": {"MatMul": "not in the export", "Transpose": "no MPSCNN kernel"},
    "norms": {"Reshape": "no MPSCNN kernel", "Transpose": "no MPSCNN kernel",
              "LayerNormalization": "raw tensor", "Gather": "raw tensor"},
    "lstm": {"LSTM": "MPSRNNImageInferenceLayer", "Transpose": "no MPSCNN kernel",
             "Reshape": "no MPSCNN kernel"},
}


def _export(name: str, tmp: Path, dtype: str = "float32") -> tuple[Any, Path, Path]:
    cm = corpus.build(name)
    path = corpus.save(cm, tmp)
    out = tmp / f"out_{dtype}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MPS's multiple-of-4 channel advice
        export(str(path), str(out), dtype=dtype, input_dims=cm.input_dims)
    return cm, path, out


def _given(cm: Any) -> dict[str, np.ndarray] | None:
    """Integer inputs (positions) cannot be drawn at random: the corpus gives them."""
    return corpus.feeds(cm) if cm.name == "norms" else None


@pytest.mark.parametrize("name", corpus.NAMES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_corpus_verifies(tmp_path: Path, name: str, dtype: str) -> None:
    cm, path, out = _export(name, tmp_path, dtype)
    report = verify(out, path, input=_given(cm))
    assert report.ok, report.table()
    nodes = len(cm.model.graph.node)
    assert report.operators_verified + len(report.not_verified) + report.shape_operators \
        == nodes
    want = NOT_VERIFIED.get(name, {})
    for x in report.not_verified:
        assert x["op"] in want, (x, report.table())
        assert want[x["op"]] in x["reason"]
    if not _given(cm):  # the dims come from the manifest
        assert "recorded" in report.input or "the model" in report.input


# ----------------------------------------------------------------------- planted bugs


def _rotate(w: np.ndarray) -> np.ndarray:
    """OHWI (or [C][kH][kW]) turned by 180 degrees: the missing flip of a transposed
    convolution, or a flip where none belongs."""
    return w[:, ::-1, ::-1] if w.ndim == 3 else w[:, ::-1, ::-1, :]


def _oihw_bytes(w: np.ndarray) -> np.ndarray:
    """The framework's OIHW order written where MPS reads OHWI (the missing permute); for
    a fully connected [O][H][W][C], the C, H, W order of PyTorch's flatten."""
    return np.ascontiguousarray(w.transpose(0, 3, 1, 2)).reshape(w.shape)


def _rewrite(out: Path, layer: str, fix: Callable[[np.ndarray], np.ndarray]) -> None:
    doc = json.loads((out / "manifest.json").read_text())
    entry = next(x for x in doc["layers"] if x["name"] == layer)
    info = entry["files"]["weights"]
    dt = np.dtype("<f4" if info["dtype"] == "float32" else "<f2")
    w = np.fromfile(out / info["file"], dtype=dt).reshape(info["shape"])
    data = np.ascontiguousarray(fix(w), dtype=dt)
    assert data.shape == w.shape
    assert not np.array_equal(data, w)
    (out / info["file"]).write_bytes(data.tobytes())
    info["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))


def _layer(out: Path, kind: str, k: int = 0, square: bool = False) -> str:
    """The k-th exported layer of ``kind`` (with a kernel bigger than 1x1 if ``square``)."""
    doc = json.loads((out / "manifest.json").read_text())
    names = [x["name"] for x in doc["layers"] if x["kind"] == kind and (
        not square or x["files"]["weights"]["shape"][1] > 1)]
    return names[k]


BUGS = [
    ("mobilenetv3_db", "convolution", 1, _rotate),
    ("mobilenetv3_db", "depthwise", 0, _rotate),
    ("mobilenetv3_db", "convolution", 0, _oihw_bytes),
    ("mobilenetv3_db", "transposed", 0, _rotate),  # the DB head's upsampler
    ("resnet_block", "convolution", 0, _rotate),
    ("unet_small", "convolution", 2, _rotate),  # the decoder, after upsample and concat
    ("conv_affine", "convolution", 0, _rotate),  # Mul/Add folded into it
    ("convtranspose_bias_add", "transposed", 0, _rotate),
    ("linear_after_flatten", "fully_connected", 0, _oihw_bytes),
    ("flatten_matmul_symbolic", "fully_connected", 0, _oihw_bytes),
    ("dynamic_dims", "convolution", 0, _rotate),
    ("yolo_head", "convolution", 1, _oihw_bytes),
]


@pytest.mark.parametrize(("name", "kind", "k", "fix"), BUGS,
                         ids=[f"{n}-{kd}{k}-{f.__name__[1:]}" for n, kd, k, f in BUGS])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_planted_bug_fails_and_names_the_layer(tmp_path: Path, name: str, kind: str, k: int,
                                               fix: Callable[[np.ndarray], np.ndarray],
                                               dtype: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _, path, out = _export(name, tmp_path, dtype)
    layer = _layer(out, kind, k, square=True)
    _rewrite(out, layer, fix)
    report = verify(out, path)  # no --input: the dims recorded at export
    assert "recorded" in report.input
    assert_names_only(report, layer)
    assert cli.main(["verify", str(out), "--model", str(path)]) == 1
    assert f"first divergence at layer {layer!r}" in capsys.readouterr().out


def assert_names_only(report: Any, layer: str) -> None:
    """The report fails, its first divergence is ``layer`` (isolated too), and no other
    layer fails in isolation."""
    assert not report.ok
    first = report.first_divergence
    assert first is not None
    assert first.name == layer, report.table()
    assert first.isolated is not None
    assert not first.isolated.ok
    assert [r.name for r in report.rows if r.isolated and not r.isolated.ok] == [layer]
