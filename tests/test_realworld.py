"""The networks people ship (tests/realworld.py), exported the ways people export them, then
``mpslayout export`` and ``mpslayout verify`` run as a user would, judged by ONNX Runtime:

- every learned tensor (corpus.learned_tensors, written from the ONNX operator
  definitions) is carried by a layer, with the input dims and without them (then a tensor
  may only be listed, with the flag that would carry it);
- verify passes the correct export, float32 and float16, and leaves no operator with an
  MPS kernel unverified for want of one: what it does not verify is on a per-model list of
  (operator, reason) written here;
- planted exporter bugs (a 3x3 kernel turned 180 degrees, OIHW bytes, a Linear's rows in
  C, H, W order instead of H, W, C, a transposed convolution without its flip) fail and name
  the layer, with --input and without it (the dims the export recorded).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import corpus
import realworld
from test_verify_corpus import _layer, _oihw_bytes, _rewrite, _rotate, assert_names_only

from mpslayout import cli
from mpslayout.export import export
from mpslayout.verify import verify

ARCHS = tuple(realworld.ARCHS)
DYN = {"svtr": "op14_bhw"}  # MultiheadAttention exports from opset 14 with dynamic dims
CASES = [(a, "op17") for a in ARCHS] + [(a, DYN.get(a, "op11_bhw")) for a in ARCHS] + [
    ("dbnet", "op13_nofold"), ("yolov5", "op17_b_nofold"),
    *[(a, "dynamo") for a in ARCHS], ("tf2onnx_mimic", ""), ("paddle2onnx_mimic", "")]
IDS = [f"{a}-{v}" if v else a for a, v in CASES]

# what verify does not verify, per architecture, and the reason (a substring): no MPSCNN
# kernel computes these (shape moves between tensors that are not images, attention's
# activation x activation products, softmax along a non-channel axis, LayerNorm exported
# as raw tensors for a custom kernel)
MOVES = "moves data across the image's axes"
NOT_VERIFIED: dict[str, dict[str, tuple[str, ...]]] = {
    "crnn": {"Squeeze": (MOVES,), "Transpose": (MOVES,), "Reshape": (MOVES,),
             "Expand": ("raw tensor",), "If": ("no MPSCNN kernel",)},
    "svtr": {"Reshape": (MOVES, "MPSNNReshape reads HWC"), "Transpose": (MOVES,),
             "Squeeze": (MOVES,), "Unsqueeze": (MOVES,), "Gather": ("no MPSCNN kernel",),
             "MatMul": ("product of two activa",), "Softmax": ("along axis 3",),
             "LayerNormalization": ("raw tensor",), "Div": ("raw tensor",)},
    "yolov5": {"Reshape": (MOVES,), "Transpose": (MOVES,), "Concat": ("not along channels",)},
}
# operators that have an MPS kernel: "not verified" for one of them is a verifier gap
HAS_KERNEL = {"Conv", "ConvTranspose", "Gemm", "Relu", "Clip", "Sigmoid", "HardSigmoid",
              "HardSwish", "Mul", "Add", "Sub", "Div", "Resize", "Upsample", "Concat",
              "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Softmax",
              "BatchNormalization", "Tanh", "LeakyRelu", "Sqrt", "Erf", "Pow"}
# reasons that are the verifier's, not MPS's (a kernel exists but was not run)
VERIFIER_GAP = ("no MPSCNN kernel for", "not an image the reference executor holds")
# gaps found by this suite and still open (described in the helper's report); closed:
# svtr's erf GELU (one MPSCNNNeuronGeLU), its shape-derived attention scale Mul and Sqrt
KERNEL_GAPS: set[tuple[str, str]] = set()


def _build(arch: str, variant: str) -> Any:
    if variant == "dynamo" and not realworld.has_onnxscript():
        pytest.skip("the dynamo exporter needs onnxscript")
    return realworld.build(arch, variant) if variant else realworld.build(arch)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(arch, variant, dtype, with_dims) -> (model, path, outdir, manifest), made once."""
    made: dict[tuple[str, str, str, bool], Any] = {}

    def get(arch: str, variant: str, dtype: str = "float32", dims: bool = True) -> Any:
        key = (arch, variant, dtype, dims)
        if key not in made:
            cm = _build(arch, variant)
            tmp = tmp_path_factory.mktemp(f"{arch}_{variant}")
            path = corpus.save(cm, tmp)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MPS's multiple-of-4 channel advice
                m = export(str(path), str(tmp / "out"), dtype=dtype, progress=False,
                           input_dims=cm.input_dims if dims else None)
            made[key] = (cm, path, tmp / "out", m)
        return made[key]

    return get


@pytest.mark.parametrize("dims", [True, False], ids=["input-dims", "no-dims"])
@pytest.mark.parametrize(("arch", "variant"), CASES, ids=IDS)
def test_every_learned_tensor_is_in_the_manifest(exported: Any, arch: str, variant: str,
                                                 dims: bool) -> None:
    cm, _, _, m = exported(arch, variant, dims=dims)
    learned = corpus.learned_tensors(cm.model)
    carried = {t for e in m["layers"] for t in e["source"]["tensors"]}
    listed = {t: e["reason"] for e in m["skipped"] + m["unsupported"]
              for t in e.get("tensors", [])}
    assert not set(learned) - carried - set(listed), "left behind silently"
    assert carried <= set(learned)
    if dims or not cm.symbolic:
        assert set(listed) - carried == set(), listed
    else:  # without dims: only a flatten whose size follows from the input may wait
        for t in set(listed) - carried:
            assert "--input-shape" in listed[t] or "--input-dims" in listed[t], listed[t]


# float32 on every export; float16 on the default export of each model
VERIFY_CASES = [(a, v, "float32") for a, v in CASES] + [
    (a, v, "float16") for a, v in CASES if v in ("op17", "")] + [
    ("crnn", "op11_bhw", "float16")]  # the LSTM judge re-run in float16


@pytest.mark.parametrize(("arch", "variant", "dtype"), VERIFY_CASES,
                         ids=[f"{i}-{d}" for i, (_, _, d) in zip(
                             IDS + [x for x, (_, v) in zip(IDS, CASES) if v in ("op17", "")]
                             + ["crnn-op11_bhw"],
                             VERIFY_CASES)])
def test_correct_export_verifies(exported: Any, arch: str, variant: str,
                                 dtype: str) -> None:
    cm, path, out, _ = exported(arch, variant, dtype)
    report = verify(out, path)  # no --input: the dims recorded at export
    assert "recorded" in report.input or "the model" in report.input
    assert report.ok, report.table()
    nodes = len(cm.model.graph.node)
    assert report.operators_verified + len(report.not_verified) + report.shape_operators \
        == nodes
    allowed = NOT_VERIFIED.get(arch, {})
    if arch == "yolov5":  # the detect head's Sigmoid on 5-D tensors, run as a neuron
        assert [r.op for r in report.rows if r.notes and "row of pixels" in r.notes[0]] \
            == ["Sigmoid"] * 3
    if arch == "svtr":  # torch's erf decomposition of GELU, run as MPSCNNNeuronGeLU
        assert any(r.op == "Gelu" and r.kind == "MPSCNNNeuronGeLU" and r.ok
                   for r in report.rows), report.table()
    for x in report.not_verified:
        assert x["op"] in allowed, (x, report.table())
        assert any(r in x["reason"] for r in allowed[x["op"]]), x
        if x["op"] in HAS_KERNEL and any(r in x["reason"] for r in VERIFIER_GAP):
            assert (arch, x["op"]) in KERNEL_GAPS, x


def test_svtr_float16_decomposed_layernorm_verifies(exported: Any) -> None:
    """opset < 17 spells LayerNorm ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add; the Mul by its
    scale reads the export's float16 raw tensor, whose rounding the bound must include
    (it was flagged at 1.1-1.3x its bound before)."""
    _, path, out, _ = exported("svtr", "op14_bhw", "float16")
    report = verify(out, path)
    assert report.ok, report.table()


# ----------------------------------------------------------------------- planted bugs

BUGS = [
    # (arch, variant, layer kind, k-th such layer with a >1x1 kernel, bug)
    ("dbnet", "op11_bhw", "convolution", 0, _rotate),  # the stem, symbolic dims
    ("dbnet", "op11_bhw", "depthwise", 2, _rotate),    # a 5x5 depthwise
    ("dbnet", "op17", "transposed", 0, _rotate),       # DB head, the missing flip
    ("dbnet", "op17", "convolution", 3, _oihw_bytes),
    ("resnet_cls", "op11_bhw", "fully_connected", 0, _oihw_bytes),  # CHW rows
    ("resnet_cls", "op17", "convolution", 5, _rotate),
    ("crnn", "op17", "convolution", 2, _rotate),
    ("svtr", "op17", "convolution", 1, _rotate),
    ("yolov5", "op11_bhw", "convolution", 4, _rotate),
    ("yolov5", "dynamo", "convolution", 0, _oihw_bytes),  # the 6x6 stem
    ("tf2onnx_mimic", "", "convolution", 0, _rotate),
    ("tf2onnx_mimic", "", "depthwise", 0, _rotate),
    ("tf2onnx_mimic", "", "fully_connected", 0, _oihw_bytes),  # HWC rows as CHW
    ("paddle2onnx_mimic", "", "convolution", 3, _rotate),
    ("paddle2onnx_mimic", "", "transposed", 0, _rotate),
]


@pytest.mark.parametrize("given", [False, True], ids=["recorded-dims", "with-input"])
@pytest.mark.parametrize(("arch", "variant", "kind", "k", "bug"), BUGS,
                         ids=[f"{a}-{v}-{kd}{k}-{b.__name__[1:]}" if v else
                              f"{a}-{kd}{k}-{b.__name__[1:]}" for a, v, kd, k, b in BUGS])
def test_planted_bug_fails_and_names_the_layer(tmp_path: Path, arch: str, variant: str,
                                               kind: str, k: int, bug: Any, given: bool,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cm = _build(arch, variant)
    path = corpus.save(cm, tmp_path)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(str(path), str(out), input_dims=cm.input_dims, progress=False)
    layer = _layer(out, kind, k, square=kind != "fully_connected")
    _rewrite(out, layer, bug)
    args = ["verify", str(out), "--model", str(path)]
    x = None
    if given:
        (_, dims), = cm.input_dims.items()
        x = np.random.default_rng(5).standard_normal(dims).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        args += ["--input", str(tmp_path / "x.npy")]
    report = verify(out, path, input=None if x is None else {next(iter(cm.input_dims)): x})
    assert_names_only(report, layer)
    assert cli.main(args) == 1
    assert f"first divergence at layer {layer!r}" in capsys.readouterr().out


def _swap_files(out: Path, layer: str, a: str, b: str) -> None:
    """Swap two of a layer's files (their bytes and SHA-256 entries): a gate written where
    another belongs."""
    import json

    doc = json.loads((out / "manifest.json").read_text())
    entry = next(x for x in doc["layers"] if x["name"] == layer)
    fa, fb = entry["files"][a], entry["files"][b]
    da, db = (out / fa["file"]).read_bytes(), (out / fb["file"]).read_bytes()
    assert da != db
    (out / fa["file"]).write_bytes(db)
    (out / fb["file"]).write_bytes(da)
    fa["sha256"], fb["sha256"] = fb["sha256"], fa["sha256"]
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))


@pytest.mark.parametrize("given", [False, True], ids=["recorded-dims", "with-input"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_crnn_swapped_lstm_gates_fail_and_name_the_direction(
        tmp_path: Path, direction: str, given: bool) -> None:
    """PyTorch's gate order (i, f, g, o) read as ONNX's (i, o, f, c): the forget and output
    gates of one direction of the bidirectional LSTM trade places."""
    cm = _build("crnn", "op17")
    path = corpus.save(cm, tmp_path)
    out = tmp_path / "out"
    export(str(path), str(out), input_dims=cm.input_dims, progress=False)
    layer = f"/rnn/LSTM.{direction}"
    for suffix in ("InputWeights", "InputWeights.bias", "RecurrentWeights"):
        _swap_files(out, layer, f"forgetGate{suffix}", f"outputGate{suffix}")
    x = np.random.default_rng(6).standard_normal(cm.input_dims["x"]).astype(np.float32)
    report = verify(out, path, input={"x": x} if given else None)
    assert not report.ok
    failed = [r.name for r in report.rows if not r.ok]
    assert failed, report.table()
    assert failed[0] == layer, report.table()
