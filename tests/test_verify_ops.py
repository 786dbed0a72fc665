"""verify on graphs built with onnx.helper the way other exporters write them: every
weightless operator goes through the kernel table and is judged against ONNX Runtime on
the whole graph; forms MPS cannot compute are "not verified" with the reason, never a
divergence; symbolic input dims are refused, not guessed.

Each graph is Conv (exported) -> the operator(s) under test -> Conv (exported), so that the
operator sits between two layers whose weights verify checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mpslayout import cli  # noqa: E402
from mpslayout.verify import VerifyError, verify, verify_graph  # noqa: E402
from mpslayout.verify.ort import onnx_runtime_oracle  # noqa: E402

C = 8


def _conv(name: str, x: str, y: str, cin: int, cout: int, rng: np.random.Generator,
          k: int = 3) -> tuple[Any, list[Any]]:
    w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    node = helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name,
                            kernel_shape=[k, k], pads=[k // 2] * 4)
    return node, [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]


def _model(tmp: Path, middle: list[Any], inits: list[Any], *, h: int = 6, w: int = 6,
           mid_out: str = "m", c_out: int = C, opset: int = 17,
           in_dims: list[Any] | None = None, tag: str = "g") -> Path:
    rng = np.random.default_rng(0)
    first, i1 = _conv("first", "x", "a", 3, C, rng)
    last, i2 = _conv("last", mid_out, "y", c_out, 4, rng)
    graph = helper.make_graph(
        [first, *middle, last], tag,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims or [1, 3, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], i1 + i2 + inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp / f"{tag}.onnx"
    onnx.save(model, str(path))
    return path


def _const(name: str, a: np.ndarray) -> Any:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def _export_verify(path: Path, tmp: Path, dtype: str = "float32", **kw: Any) -> Any:
    out = tmp / f"out_{path.stem}_{dtype}"
    assert cli.main(["export", str(path), "-o", str(out), "--dtype", dtype, "-q"]) == 0
    return verify(out, path, **kw)


def _ops(report: Any) -> dict[str, str]:
    """Operator name -> MPS kernel; an exported arithmetic layer is MPSCNNAdd etc."""
    mps = {"Add": "MPSCNNAdd", "Sub": "MPSCNNSubtract", "Mul": "MPSCNNMultiply",
           "Div": "MPSCNNDivide"}
    # a node whose constants are raw tensors of the export: its row is theirs (NODE.ROLE)
    return {(r.name.split(".")[0] if r.layer and r.kind.startswith("MPS") else r.name):
            (mps[r.op] if r.kind == "arithmetic" else r.kind) for r in report.rows
            if not r.layer or r.kind == "arithmetic" or r.kind.startswith("MPS")}


# ----------------------------------------------------------------------- neurons


NEURONS = [
    ("HardSigmoid", {}, "MPSCNNNeuronHardSigmoid"),  # ONNX default alpha 0.2
    ("HardSigmoid", {"alpha": 1 / 6}, "MPSCNNNeuronHardSigmoid"),  # PyTorch's
    ("HardSwish", {}, "MPSCNNNeuronHardSigmoid + MPSCNNMultiply"),
    ("LeakyRelu", {"alpha": 0.1}, "MPSCNNNeuronReLU"),
    ("Elu", {"alpha": 0.5}, "MPSCNNNeuronELU"),
    ("Softplus", {}, "MPSCNNNeuronSoftPlus"),
    ("Softsign", {}, "MPSCNNNeuronSoftSign"),
    ("Abs", {}, "MPSCNNNeuronAbsolute"),
    ("Exp", {}, "MPSCNNNeuronExponential"),
    ("Tanh", {}, "MPSCNNNeuronTanH"),
    ("Sigmoid", {}, "MPSCNNNeuronSigmoid"),
    ("Neg", {}, "MPSCNNNeuronLinear"),
]


@pytest.mark.parametrize(("op", "attrs", "mps"), NEURONS,
                         ids=[f"{o}-{i}" for i, (o, _, _) in enumerate(NEURONS)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_neurons_verify(tmp_path: Path, op: str, attrs: dict, mps: str, dtype: str) -> None:
    path = _model(tmp_path, [helper.make_node(op, ["a"], ["m"], name="act", **attrs)], [])
    report = _export_verify(path, tmp_path, dtype)
    assert report.ok, report.table()
    assert _ops(report) == {"act": mps}
    assert not report.not_verified


def test_log_gelu_clip_prelu_pow(tmp_path: Path) -> None:
    """Log of a positive map, Clip as ReLU6 and as a general clamp, PRelu per channel,
    Pow with a constant exponent, Gelu (opset 20)."""
    nodes = [
        helper.make_node("Abs", ["a"], ["a1"], name="abs"),
        helper.make_node("Add", ["a1", "one"], ["a2"], name="plus1"),
        helper.make_node("Log", ["a2"], ["a3"], name="log"),
        helper.make_node("Clip", ["a3", "zero", "six"], ["a4"], name="relu6"),
        helper.make_node("Clip", ["a4", "lo", "hi"], ["a5"], name="clamp"),
        helper.make_node("PRelu", ["a5", "slope"], ["a6"], name="prelu"),
        helper.make_node("Pow", ["a6", "two"], ["a7"], name="square"),
        helper.make_node("Gelu", ["a7"], ["m"], name="gelu"),
    ]
    inits = [_const("one", [1.0]), _const("zero", 0.0), _const("six", 6.0),
             _const("lo", -0.25), _const("hi", 0.75), _const("two", 2.0),
             _const("slope", np.linspace(-0.5, 0.5, C).reshape(C, 1, 1))]
    path = _model(tmp_path, nodes, inits, opset=20)
    for dtype in ("float32", "float16"):
        report = _export_verify(path, tmp_path, dtype)
        assert report.ok, report.table()
        assert _ops(report) == {
            "abs": "MPSCNNNeuronAbsolute", "plus1": "MPSCNNAdd",
            "log": "MPSCNNNeuronLogarithm", "relu6": "MPSCNNNeuronReLUN",
            "clamp": "MPSCNNAdd (minimumValue/maximumValue clamp)",
            "prelu": "MPSCNNNeuronPReLU", "square": "MPSCNNNeuronPower",
            "gelu": "MPSCNNNeuronGeLU"}, report.table()
        # the slopes are a raw tensor of the export, read from its file: a layer's row
        prelu = [r for r in report.rows if r.name == "prelu.slope"]
        assert [(r.layer, r.kind, r.ok) for r in prelu] == [
            (True, "MPSCNNNeuronPReLU", True)], report.table()


def test_decomposed_hardswish_verifies_op_by_op(tmp_path: Path) -> None:
    """x * Clip(x + 3, 0, 6) / 6, as TorchScript-era exporters wrote HardSwish."""
    nodes = [helper.make_node("Add", ["a", "three"], ["t1"], name="add3"),
             helper.make_node("Clip", ["t1", "zero", "six"], ["t2"], name="clip"),
             helper.make_node("Mul", ["a", "t2"], ["t3"], name="mul"),
             helper.make_node("Div", ["t3", "six"], ["m"], name="div")]
    inits = [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)]
    report = _export_verify(_model(tmp_path, nodes, inits), tmp_path)
    assert report.ok, report.table()
    assert _ops(report) == {"add3": "MPSCNNAdd", "clip": "MPSCNNNeuronReLUN",
                            "mul": "MPSCNNMultiply", "div": "MPSCNNDivide"}


# ----------------------------------------------------------------------- broadcasting


def test_broadcasting_add_of_a_pooled_vector(tmp_path: Path) -> None:
    """The issue's detector: (1, 96, 1, 1) + (1, 96, 2, 2) (NHWC (1,1,1,96) and (1,2,2,96)),
    a squeeze-excite style Mul, and a Sub/Div by per-channel constants."""
    nodes = [helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[3, 3],
                              strides=[3, 3]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Add", ["g", "p"], ["s"], name="bcast_add"),
             helper.make_node("Sigmoid", ["g"], ["gs"], name="gate"),
             helper.make_node("Mul", ["s", "gs"], ["s2"], name="se_mul"),
             helper.make_node("Sub", ["s2", "mean"], ["s3"], name="sub_c"),
             helper.make_node("Div", ["s3", "std"], ["s4"], name="div_c"),
             helper.make_node("Resize", ["s4", "", "scales"], ["m"], name="up",
                              mode="nearest")]
    rng = np.random.default_rng(3)
    inits = [_const("mean", rng.standard_normal((1, C, 1, 1))),
             _const("std", rng.random((C, 1, 1)) + 0.5),
             _const("scales", [1.0, 1.0, 3.0, 3.0])]
    path = _model(tmp_path, nodes, inits)
    for dtype in ("float32", "float16"):
        report = _export_verify(path, tmp_path, dtype)
        assert report.ok, report.table()
        ops = _ops(report)
        assert ops["bcast_add"] == "MPSCNNAdd"
        assert ops["se_mul"] == "MPSCNNMultiply"
        assert ops["up"] == "MPSCNNUpsamplingNearest"
        assert report.operators_verified == 10
        assert not report.not_verified


def test_what_mps_cannot_broadcast_is_not_verified_with_the_reason(tmp_path: Path) -> None:
    # a batch broadcast of a computed operand: MPS reads sources image by image
    nodes = [helper.make_node("ReduceMean", ["a"], ["r"], name="mean", axes=[0],
                              keepdims=1),
             helper.make_node("Add", ["a", "r"], ["m"], name="batch_add")]
    path = _model(tmp_path, nodes, [], in_dims=[2, 3, 6, 6], tag="batch", opset=17)
    report = _export_verify(path, tmp_path)
    assert report.ok, report.table()
    reasons = {x["name"]: x["reason"] for x in report.not_verified}
    assert "batch" in reasons["batch_add"]
    assert "MPSNNReduceFeatureChannels" in reasons["mean"]


# ----------------------------------------------------------------------- resampling etc.


@pytest.mark.parametrize(("mode", "ctm", "mps"), [
    ("nearest", "asymmetric", None),  # o/s rounded to nearest is not floor(o/s)
    ("nearest/floor", "asymmetric", "MPSCNNUpsamplingNearest"),
    ("nearest", "half_pixel", "MPSCNNUpsamplingNearest"),
    ("nearest", "align_corners", None),
    ("linear", "half_pixel", "MPSCNNUpsamplingBilinear (alignCorners NO)"),
    ("linear", "pytorch_half_pixel", "MPSCNNUpsamplingBilinear (alignCorners NO)"),
    ("linear", "align_corners", "MPSCNNUpsamplingBilinear (alignCorners YES)"),
    ("linear", "asymmetric", None),
    ("cubic", "half_pixel", None),
])
def test_resize(tmp_path: Path, mode: str, ctm: str, mps: str | None) -> None:
    extra = {"nearest_mode": "floor"} if mode == "nearest/floor" else {}
    nodes = [helper.make_node("Resize", ["a", "", "scales"], ["m"], name="up",
                              mode=mode.split("/")[0], coordinate_transformation_mode=ctm,
                              **extra)]
    path = _model(tmp_path, nodes, [_const("scales", [1, 1, 2, 3])], h=4, w=5)
    report = _export_verify(path, tmp_path)
    assert report.ok, report.table()
    if mps is None:
        (nv,) = report.not_verified
        assert nv["name"] == "up"
        assert "MPSCNNUpsampling" in nv["reason"]
    else:
        assert _ops(report) == {"up": mps}
        assert not report.not_verified


def test_older_resampling_operators(tmp_path: Path) -> None:
    """Upsample (opset 9) and Resize (opset 10) sample asymmetrically: nearest is
    floor(o/s), MPSCNNUpsamplingNearest; linear is neither MPS alignment. Resize by sizes."""
    up9 = [helper.make_node("Upsample", ["a", "scales"], ["m"], name="up", mode="nearest")]
    r = _export_verify(_model(tmp_path, up9, [_const("scales", [1, 1, 2, 2])], opset=9,
                              tag="up9"), tmp_path)
    assert r.ok, r.table()
    assert _ops(r) == {"up": "MPSCNNUpsamplingNearest"}
    r10 = [helper.make_node("Resize", ["a", "scales"], ["m"], name="up", mode="linear")]
    r = _export_verify(_model(tmp_path, r10, [_const("scales", [1, 1, 2, 2])], opset=10,
                              tag="r10"), tmp_path)
    assert r.ok, r.table()
    (nv,) = r.not_verified
    assert "'asymmetric'" in nv["reason"]
    sizes = numpy_helper.from_array(np.array([1, C, 12, 18], np.int64), "sizes")
    rs = [helper.make_node("Resize", ["a", "", "", "sizes"], ["m"], name="up", mode="linear",
                           coordinate_transformation_mode="align_corners")]
    r = _export_verify(_model(tmp_path, rs, [sizes], tag="rs"), tmp_path)
    assert r.ok, r.table()
    assert _ops(r) == {"up": "MPSCNNUpsamplingBilinear (alignCorners YES)"}


def test_softmax_instance_norm_and_concat(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("InstanceNormalization", ["a", "g", "b"], ["n"], name="inorm",
                              epsilon=1e-5),
             helper.make_node("Softmax", ["n"], ["s"], name="softmax", axis=1),
             helper.make_node("AveragePool", ["s"], ["p"], name="avg", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], count_include_pad=1),
             helper.make_node("Concat", ["p", "n"], ["m"], name="cat", axis=1)]
    inits = [_const("g", rng.random(C) + 0.5), _const("b", rng.standard_normal(C))]
    path = _model(tmp_path, nodes, inits, c_out=2 * C)
    for dtype in ("float32", "float16"):
        report = _export_verify(path, tmp_path, dtype)
        assert report.ok, report.table()
        assert _ops(report) == {
            "inorm": "MPSCNNInstanceNormalization", "softmax": "MPSCNNSoftMax",
            "avg": "MPSCNNPoolingAverage",
            "cat": "MPSCNNConcatenation (destinationFeatureChannelOffset)"}


# ----------------------------------------------------------------------- the input


def _symbolic(tmp: Path) -> Path:
    return _model(tmp, [helper.make_node("Relu", ["a"], ["m"], name="act")], [],
                  in_dims=["N", 3, "H", "W"], tag="sym")


def test_symbolic_dims_are_refused_naming_the_flags(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _symbolic(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["export", str(path), "-o", str(out), "-q"]) == 0
    doc = json.loads((out / "manifest.json").read_text())
    doc.pop("inputs", None)  # an export that recorded no dims
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(VerifyError, match=r"--input x\.npy, or --input-dims x=1,3,H,W"):
        verify(out, path)
    assert cli.main(["verify", str(out), "--model", str(path)]) == 1
    assert "--input-dims" in capsys.readouterr().err
    report = verify(out, path, input_dims={"x": (1, 3, 7, 5)})
    assert report.ok, report.table()
    assert "x [1, 3, 7, 5]" in report.input
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 3, 4, 4), np.float32))
    assert cli.main(["verify", str(out), "--model", str(path), "--input", str(x)]) == 0
    assert cli.main(["verify", str(out), "--model", str(path), "--input-dims",
                     "x=1,3,9,9"]) == 0


def test_recorded_dims_are_used(tmp_path: Path) -> None:
    path = _symbolic(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["export", str(path), "-o", str(out), "-q"]) == 0
    doc = json.loads((out / "manifest.json").read_text())
    doc["inputs"] = {"x": [None, 3, 10, 12]}
    (out / "manifest.json").write_text(json.dumps(doc))
    report = verify(out, path)
    assert report.ok, report.table()
    assert "x [1, 3, 10, 12]" in report.input
    assert "recorded" in report.input
    assert "symbolic batch" in report.input


def test_an_input_too_small_for_a_kernel_is_said(tmp_path: Path) -> None:
    """A 1x1 image meets only the centre tap of a 3x3 kernel (pads 1): the layer is judged
    on that tap and the other eight are listed as untested, with the smallest input that
    reads them. A layer none of whose taps reads inside the image is refused."""
    path = _symbolic(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["export", str(path), "-o", str(out), "-q"]) == 0
    report = verify(out, path, input_dims={"x": (1, 3, 1, 1)})
    assert report.ok, report.table()
    assert report.verdict == "ok", report.table()
    assert report.untested, report.table()
    for u in report.untested:  # every 3x3 layer of the model
        assert u["untested_taps"] == {"rows": [0, 2], "columns": [0, 2]}, u
        assert u["smallest_input"] == "x=1,3,2,2", u
    assert not verify(out, path, input_dims={"x": (1, 3, 2, 2)}).untested
    doc = json.loads((out / "manifest.json").read_text())
    conv = next(x for x in doc["layers"] if x["kind"] == "convolution")
    conv["offset"] = {"x": 9, "y": 9}  # every tap reads far outside a 4x4 image
    assert conv["name"] == report.untested[0]["layer"]
    (out / "manifest.json").write_text(json.dumps(doc))
    report = verify(out, path, input_dims={"x": (1, 3, 4, 4)})
    assert not report.ok
    assert report.first_divergence is not None
    assert "too small" in (report.first_divergence.error or "")


# ----------------------------------------------------------------------- tolerance


def test_large_float32_sums_are_rounding_not_a_divergence(tmp_path: Path) -> None:
    """The issue's false FAILED: a plain 3x3 Conv on a 160x160 input of 32 channels with
    values ~30 leaves ONNX Runtime ~1e-3 from the exact (float64, PyTorch) result at
    elements near 0: more than atol + rtol*|y| (1e-4 each) but 4e-7 of the layer's scale.
    The tolerance follows what each output sums, so that passes; a kernel rotated by 180
    degrees still fails by orders of magnitude."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    c = 32
    w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 160, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path))
    x = (rng.standard_normal((1, c, 160, 160)) * 30).astype(np.float32)
    exact = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                       torch.from_numpy(w.astype(np.float64)),
                                       torch.from_numpy(b.astype(np.float64)),
                                       padding=1).numpy()
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0].astype(np.float64)
    diff = np.abs(y - exact)
    assert np.any(diff > 1e-4 + 1e-4 * np.abs(y))  # what the old absolute rule flagged
    assert diff.max() / np.abs(y).max() < 1e-6
    out = tmp_path / "out"
    assert cli.main(["export", str(path), "-o", str(out), "-q"]) == 0
    report = verify(out, path, input=x)
    assert report.ok, report.table()
    assert report.rows[0].isolated is not None
    assert report.rows[0].isolated.worst < 0.1
    # the same layer, rotated
    doc = json.loads((out / "manifest.json").read_text())
    info = doc["layers"][0]["files"]["weights"]
    wt = np.fromfile(out / info["file"], "<f4").reshape(info["shape"])[:, ::-1, ::-1, :]
    (out / info["file"]).write_bytes(np.ascontiguousarray(wt).tobytes())
    import hashlib

    info["sha256"] = hashlib.sha256((out / info["file"]).read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc))
    bad = verify(out, path, input=x)
    assert not bad.ok
    assert bad.rows[0].isolated is not None
    assert bad.rows[0].isolated.worst > 100


# ----------------------------------------------------------------------- other oracles


def test_an_oracle_that_omits_tensors(tmp_path: Path) -> None:
    """verify_graph with an oracle that cannot give some tensors (as a Keras model cannot
    give every node of its ONNX translation): those are computed and passed on, listed as
    not compared, and what follows is still judged (a planted bug there still fails)."""
    nodes = [helper.make_node("Add", ["a", "three"], ["t1"], name="add3"),
             helper.make_node("Clip", ["t1", "zero", "six"], ["t2"], name="clip"),
             helper.make_node("Mul", ["a", "t2"], ["t3"], name="mul"),
             helper.make_node("Div", ["t3", "six"], ["m"], name="div")]
    inits = [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)]
    path = _model(tmp_path, nodes, inits, tag="omit")
    out = tmp_path / "out"
    assert cli.main(["export", str(path), "-o", str(out), "-q"]) == 0
    model = onnx.load(str(path))
    x = np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype(np.float32)
    full = onnx_runtime_oracle(model)

    def oracle(names: list[str]) -> dict[str, np.ndarray]:
        return {k: v for k, v in full(names, {"x": x}).items() if k not in ("a", "t2")}

    report = verify_graph(out, model, {"x": x}, oracle, model_label="omit.onnx",
                          oracle_label="a partial oracle")
    assert report.ok, report.table()
    reasons = {v["name"]: v["reason"] for v in report.not_verified}
    assert set(reasons) == {"first", "clip"}
    assert all("no value" in r for r in reasons.values())
    assert {r.name for r in report.rows} == {"add3", "mul", "div", "last"}
    last = next(r for r in report.rows if r.name == "last")
    assert last.isolated is not None
    assert last.isolated.ok
    assert report.operators_verified + len(report.not_verified) == len(model.graph.node)
    assert "a partial oracle" in report.table()


# ----------------------------------------------------------------------- fused chains


S2, HALF = "s2", "half"
GELU_CHAINS = {
    # torch.onnx: x * 0.5 * (1 + erf(x / sqrt 2)) as Div, Erf, Add, Mul(x), Mul(0.5)
    "div-mul-x-half": [("Div", ["a", S2], "g1"), ("Erf", ["g1"], "g2"),
                       ("Add", ["g2", "one"], "g3"), ("Mul", ["a", "g3"], "g4"),
                       ("Mul", ["g4", HALF], "m")],
    # x * (1 / sqrt 2), 1 + erf, then * 0.5 before * x
    "mul-rsqrt2-half-x": [("Mul", ["a", "rs2"], "g1"), ("Erf", ["g1"], "g2"),
                          ("Add", ["one", "g2"], "g3"), ("Mul", ["g3", HALF], "g4"),
                          ("Mul", ["g4", "a"], "m")],
    # 0.5 * x first, then times (1 + erf)
    "half-x-first": [("Mul", ["a", HALF], "h"), ("Div", ["a", S2], "g1"),
                     ("Erf", ["g1"], "g2"), ("Add", ["g2", "one"], "g3"),
                     ("Mul", ["h", "g3"], "m")],
}


@pytest.mark.parametrize("chain", list(GELU_CHAINS))
def test_erf_decomposed_gelu_verifies_as_one_gelu_neuron(tmp_path: Path, chain: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """MPS has no Erf neuron: torch's erf decomposition of GELU runs as one
    MPSCNNNeuronGeLU, judged by ONNX Runtime on the chain's output; a GeLU kernel computing
    the tanh approximation instead would fail."""
    nodes = [helper.make_node(op, ins, [out], name=f"n{k}_{op.lower()}")
             for k, (op, ins, out) in enumerate(GELU_CHAINS[chain])]
    inits = [_const(S2, np.sqrt(2.0)), _const("rs2", np.sqrt(0.5)), _const("one", 1.0),
             _const(HALF, 0.5)]
    path = _model(tmp_path, nodes, inits)
    erf = next(n.name for n in nodes if n.op_type == "Erf")
    for dtype in ("float32", "float16"):
        report = _export_verify(path, tmp_path, dtype)
        assert report.ok, report.table()
        assert not report.not_verified, report.not_verified
        assert _ops(report)[erf] == "MPSCNNNeuronGeLU", report.table()
    from mpslayout.reference import neurons
    monkeypatch.setitem(neurons._FORMULAS, "gelu", lambda x, a, b, c: 0.5 * x * (
        1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3))) + 1e-3 * x)
    report = verify(tmp_path / "out_g_float32", path)
    bad = [r for r in report.rows if not r.ok]
    assert [r.name for r in bad] == [erf], report.table()


# ----------------------------------------------------------------------- padding


@pytest.mark.parametrize(("mode", "value", "mps"), [
    ("constant", None, "MPSNNPad (MPSImageEdgeModeZero)"),  # Keras ZeroPadding2D, paddle
    ("constant", 0.5, "MPSNNPad (MPSImageEdgeModeConstant)"),
    ("edge", None, "MPSNNPad (MPSImageEdgeModeClamp)"),
    ("reflect", None, "MPSNNPad (MPSImageEdgeModeMirror)")])
def test_pad_verifies_as_mpsnnpad(tmp_path: Path, mode: str, value: float | None, mps: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An asymmetric Pad of height and width (opset 11+: pads as an input) between two
    convolutions, judged by ONNX Runtime; a pad kernel that mirrored with the edge repeated
    would fail the edge and reflect modes, one filling 0 for a nonzero value the constant."""
    ins = ["a", "pads"] + (["cv"] if value is not None else [])
    nodes = [helper.make_node("Pad", ins, ["m"], name="pad", mode=mode)]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads")]
    if value is not None:
        inits.append(_const("cv", np.float32(value)))
    path = _model(tmp_path, nodes, inits)
    for dtype in ("float32", "float16"):
        report = _export_verify(path, tmp_path, dtype)
        assert report.ok, report.table()
        assert not report.not_verified, report.not_verified
        assert _ops(report)["pad"] == mps, report.table()
        assert [r.shape for r in report.rows if r.name == "pad"] == [[1, C, 9, 9]]
    from mpslayout.reference import padding
    wrong = {"zero": "zero", "constant": "zero", "clamp": "mirror", "mirror": "clamp"}
    real = padding._source_index
    if mode == "constant" and value is None:  # a zero pad read as an edge clamp
        wrong["zero"] = "clamp"
    monkeypatch.setattr(padding, "_source_index",
                        lambda n, b, a, m: real(n, b, a, wrong[m]))
    if mode == "constant" and value is not None:  # the fill value dropped
        monkeypatch.setattr(padding, "_source_index", real)
        real_pad = padding.pad
        from mpslayout.reference import onnx_windows
        monkeypatch.setattr(onnx_windows, "pad", lambda x, b, a, e, f=0.0, **k:
                            real_pad(x, b, a, "zero", 0.0, **k))
    report = verify(tmp_path / "out_g_float32", path)
    assert [r.name for r in report.rows if not r.ok] == ["pad"], report.table()


def test_pad_forms_mps_cannot_run_are_not_verified_with_the_reason(tmp_path: Path) -> None:
    nodes = [helper.make_node("Pad", ["a", "pads"], ["m"], name="pad", mode="wrap")]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")]
    report = _export_verify(_model(tmp_path, nodes, inits, opset=19), tmp_path)
    assert [x["name"] for x in report.not_verified] == ["pad"]
    assert "MPSImageEdgeMode has" in report.not_verified[0]["reason"]


# ----------------------------------------------------------------------- shape-derived


def test_a_scale_computed_from_shapes_is_a_constant_operand(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Attention's scale as torch exports it: Shape -> Slice -> Cast -> Sqrt ->
    Reciprocal, then Mul: fixed once the input size is, so the Mul is MPSCNNMultiply by a
    constant (it was "not an image the reference executor holds"); one that read the scale
    wrong would fail."""
    nodes = [helper.make_node("Shape", ["a"], ["s0"], name="shape"),
             helper.make_node("Slice", ["s0", "st", "en"], ["s1"], name="slice"),
             helper.make_node("Cast", ["s1"], ["s2"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Sqrt", ["s2"], ["s3"], name="sqrt"),
             helper.make_node("Reciprocal", ["s3"], ["s4"], name="rsqrt"),
             helper.make_node("Mul", ["a", "s4"], ["m"], name="scale")]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "st"),
             numpy_helper.from_array(np.array([2], np.int64), "en")]
    path = _model(tmp_path, nodes, inits)
    report = _export_verify(path, tmp_path)
    assert report.ok, report.table()
    assert "scale" not in {x["name"] for x in report.not_verified}, report.not_verified
    assert _ops(report)["scale"] == "MPSCNNMultiply", report.table()
    from mpslayout.verify import graph
    real = graph.NodeView.const
    monkeypatch.setattr(graph.NodeView, "const", lambda self, t: (
        None if (c := real(self, t)) is None else c * 1.01 if t == "s4" else c))
    report = verify(tmp_path / "out_g_float32", path)
    assert [r.name for r in report.rows if not r.ok] == ["scale"], report.table()


def test_elementwise_arithmetic_on_a_5d_tensor(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Mul by a constant scalar and Add of two 5-D tensors (a detect head after its 5-D
    reshape): elementwise, so MPSCNN arithmetic on one row of pixels; a wrong kernel
    fails."""
    nodes = [helper.make_node("Reshape", ["a", "five"], ["r"], name="to5d"),
             helper.make_node("Mul", ["r", "two"], ["r2"], name="double"),
             helper.make_node("Add", ["r2", "r"], ["r3"], name="plus"),
             helper.make_node("Reshape", ["r3", "four"], ["m"], name="to4d")]
    inits = [numpy_helper.from_array(np.array([1, 2, 4, 6, 6], np.int64), "five"),
             numpy_helper.from_array(np.array([1, C, 6, 6], np.int64), "four"),
             _const("two", 2.0)]
    path = _model(tmp_path, nodes, inits)
    report = _export_verify(path, tmp_path)
    assert report.ok, report.table()
    assert _ops(report)["double"] == "MPSCNNMultiply", report.table()
    assert _ops(report)["plus"] == "MPSCNNAdd", report.table()
    assert not {"double", "plus"} & {x["name"] for x in report.not_verified}
    from mpslayout.reference import onnx_pointwise
    real = onnx_pointwise.arithmetic
    monkeypatch.setattr(onnx_pointwise, "arithmetic", lambda kind, *a, **k: real(
        "subtract" if kind == "add" else kind, *a, **k))
    report = verify(tmp_path / "out_g_float32", path)
    assert "plus" in [r.name for r in report.rows if not r.ok], report.table()


def test_a_wrong_neuron_on_a_5d_tensor_fails(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """YOLO's Sigmoid after its 5-D reshape runs on one row of pixels; its tolerance is the
    input's rounding, so a sigmoid off by 1e-3 is a divergence (the bound was infinite)."""
    nodes = [helper.make_node("Reshape", ["a", "five"], ["r"], name="to5d"),
             helper.make_node("Sigmoid", ["r"], ["r2"], name="sig"),
             helper.make_node("Reshape", ["r2", "four"], ["m"], name="to4d")]
    inits = [numpy_helper.from_array(np.array([1, 2, 4, 6, 6], np.int64), "five"),
             numpy_helper.from_array(np.array([1, C, 6, 6], np.int64), "four")]
    path = _model(tmp_path, nodes, inits)
    report = _export_verify(path, tmp_path)
    assert report.ok, report.table()
    assert _ops(report)["sig"] == "MPSCNNNeuronSigmoid", report.table()
    from mpslayout.reference import neurons
    monkeypatch.setitem(neurons._FORMULAS, "sigmoid",
                        lambda x, a, b, c: 1.0 / (1.0 + np.exp(-x)) + 1e-3)
    report = verify(tmp_path / "out_g_float32", path)
    assert [r.name for r in report.rows if not r.ok] == ["sig"], report.table()
