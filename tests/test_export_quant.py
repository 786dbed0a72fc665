"""8-bit weights in exports: a weight-only QDQ model (DequantizeLinear on constant weights,
per-channel int8 and per-tensor uint8) and ONNX Runtime's dynamic quantization
(ConvInteger / MatMulInteger) export MPS uint8 weights with per-output-channel ranges whose
bytes are the source's (moved by the layout rule) and whose values, read as MPS reads
them, are the source's float values; verify passes against ONNX Runtime; a range off by
one step fails and is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from mpslayout import slow, slow_quant
from mpslayout.export import export

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
F32 = np.float32


def _validate(doc: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()),
                        cls=jsonschema.Draft202012Validator)


def _qdq_model(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = {"cq": rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8),
         "cs": rng.uniform(0.005, 0.02, 8).astype(F32), "cz": np.zeros(8, np.int8),
         "cb": rng.standard_normal(8).astype(F32),
         "fq": rng.integers(0, 256, (10, 8 * 4 * 4)).astype(np.uint8),
         "fs": np.array(0.003, F32), "fz": np.array(128, np.uint8),
         "fb": rng.standard_normal(10).astype(F32)}
    nodes = [
        helper.make_node("DequantizeLinear", ["cq", "cs", "cz"], ["cw"], axis=0),
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("DequantizeLinear", ["fq", "fs", "fz"], ["fw"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], [numpy_helper.from_array(v, k) for k, v in t.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return t


def _read(folder: Path, info: dict[str, Any]) -> np.ndarray:
    return np.fromfile(folder / info["file"], dtype=np.dtype(info["dtype"])).reshape(
        info["shape"])


def rewrite(out: Path, layer: str, role: str, fix: Callable[[np.ndarray], np.ndarray]) -> None:
    """Plant a bug: ``layer``'s ``role`` file replaced by ``fix`` of its array (same shape
    and dtype, different values), the manifest's SHA-256 updated so only the numbers differ."""
    import hashlib

    doc = json.loads((out / "manifest.json").read_text())
    info = next(e for e in doc["layers"] if e["name"] == layer)["files"][role]
    old = _read(out, info)
    new = np.ascontiguousarray(fix(old.copy()), dtype=old.dtype)
    assert new.shape == old.shape
    assert not np.array_equal(new, old)
    (out / info["file"]).write_bytes(new.tobytes())
    info["sha256"] = hashlib.sha256(new.tobytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc))


def test_qdq_weights_keep_their_bytes_and_values(tmp_path: Path) -> None:
    t = _qdq_model(tmp_path / "m.onnx")
    doc = export(tmp_path / "m.onnx", tmp_path / "out", progress=False)
    _validate(doc)
    conv, fc = doc["layers"]
    assert (conv["weights_dtype"], fc["weights_dtype"]) == ("uint8", "uint8")
    assert conv["quantization"] == {"type": "linear", "source": "DequantizeLinear",
                                    "exact": True, "source_tensors": ["cq", "cs", "cz"]}
    assert not doc["skipped"]
    assert not doc["unsupported"]
    out = tmp_path / "out"
    # bytes: the layout rule of MPS_LAYOUTS (slow twins) applied to the mapped source bytes
    u, ranges = slow_quant.from_onnx(t["cq"], t["cs"], t["cz"])
    np.testing.assert_array_equal(_read(out, conv["files"]["weights"]),
                                  slow.conv_weights(u, layout="OIHW"))
    np.testing.assert_array_equal(_read(out, conv["files"]["ranges"]), ranges)
    u, ranges = slow_quant.from_onnx(t["fq"], t["fs"], t["fz"])
    np.testing.assert_array_equal(_read(out, fc["files"]["weights"]),
                                  slow.fc_weights(u, input_shape=(8, 4, 4), layout="OI"))
    np.testing.assert_array_equal(_read(out, fc["files"]["ranges"]), ranges)
    # values: MPS's reading equals the source's (q - zp) * scale up to float32 rounding
    got = slow_quant.dequantize_weights(_read(out, conv["files"]["weights"]),
                                        _read(out, conv["files"]["ranges"]))
    want = (t["cq"].astype(np.float64) * t["cs"].reshape(-1, 1, 1, 1)).transpose(0, 2, 3, 1)
    assert np.abs(got - want).max() <= 4 * np.finfo(F32).eps * np.abs(want).max()


def test_qdq_verify_passes_and_a_range_off_by_one_step_fails(tmp_path: Path) -> None:
    from mpslayout.verify import verify

    _qdq_model(tmp_path / "m.onnx")
    doc = export(tmp_path / "m.onnx", tmp_path / "out", progress=False)
    report = verify(tmp_path / "out", tmp_path / "m.onnx")
    assert report.ok, report.table()
    # plant the bug: the conv's ranges one step (of 255) too high, manifest kept consistent
    assert doc["layers"][0]["name"] == "conv"
    rewrite(tmp_path / "out", "conv", "ranges",
            lambda r: r + ((r[:, 1] - r[:, 0]) / 255)[:, None])
    report = verify(tmp_path / "out", tmp_path / "m.onnx")
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.name == "conv"


def _quantize_dynamic(net: Any, shape: tuple[int, ...], folder: Path,
                      weight_type: str = "QUInt8") -> Any:
    """``net`` exported by torch to folder/f.onnx, then ONNX Runtime's quantize_dynamic of
    its Conv/MatMul/Gemm weights to folder/q.onnx (returned, loaded)."""
    import warnings

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*shape),), str(folder / "f.onnx"), dynamo=False)
        quantize_dynamic(str(folder / "f.onnx"), str(folder / "q.onnx"),
                         weight_type=getattr(QuantType, weight_type),
                         op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    return onnx.load(str(folder / "q.onnx"))


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_dynamic_quantization_conv_integer_exports_and_verifies(tmp_path: Path,
                                                               weight_type: str) -> None:
    """ONNX Runtime's quantize_dynamic of a torch-exported Conv + Linear: ConvInteger and
    MatMulInteger with weight zero points, weight scales in the Mul after them."""
    torch = pytest.importorskip("torch")
    from mpslayout.verify import verify

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10)).eval()
    model = _quantize_dynamic(net, (1, 3, 4, 4), tmp_path, weight_type)
    assert {"ConvInteger", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    doc = export(tmp_path / "q.onnx", tmp_path / "out", progress=False)
    _validate(doc)
    layers = {e["name"]: e for e in doc["layers"] if e["weights_dtype"] == "uint8"}
    assert sorted(e["quantization"]["source"] for e in layers.values()) == [
        "ConvInteger", "MatMulInteger"]
    conv = next(e for e in layers.values() if e["kind"] == "convolution")
    q, zp, s = (inits[n] for n in conv["quantization"]["source_tensors"])
    u, ranges = slow_quant.from_onnx(q, s, zp)
    out = tmp_path / "out"
    np.testing.assert_array_equal(_read(out, conv["files"]["weights"]),
                                  slow.conv_weights(u, layout="OIHW"))
    np.testing.assert_array_equal(_read(out, conv["files"]["ranges"]), ranges)
    got = slow_quant.dequantize_weights(_read(out, conv["files"]["weights"]),
                                        _read(out, conv["files"]["ranges"]))
    want = ((q.astype(np.float64) - zp) * s).transpose(0, 2, 3, 1)
    assert np.abs(got - want).max() <= 4 * np.finfo(F32).eps * np.abs(ranges).max()
    report = verify(out, tmp_path / "q.onnx")
    assert report.ok, report.table()
    assert all(r.ok for r in report.rows)


def test_dynamic_quantization_biases_fold_into_the_layers(tmp_path: Path) -> None:
    """quantize_dynamic writes ``ConvInteger -> Cast -> Mul(scale) -> Add(Reshape(bias,
    [1, C, 1, 1]))`` for a Conv with bias and ``MatMulInteger -> Cast -> Mul -> Add(bias)``
    for a Linear: both Adds fold into their layer's bias."""
    torch = pytest.importorskip("torch")
    from mpslayout.verify import verify

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 6)).eval()
    model = _quantize_dynamic(net, (1, 3, 5, 5), tmp_path)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvInteger") == 2
    assert ops.count("MatMulInteger") == 1
    adds = {n.name for n in model.graph.node if n.op_type == "Add"}
    assert len(adds) == 3
    out = tmp_path / "out"
    doc = export(tmp_path / "q.onnx", out, progress=False)
    layers = doc["layers"]
    assert [e["kind"] for e in layers] == ["convolution", "convolution", "fully_connected"]
    assert all(e["weights_dtype"] == "uint8" and e["quantization"]["exact"] for e in layers)
    assert {f["node"] for e in layers for f in e["source"]["fused"]} == adds
    assert sum("reshape" in f for e in layers for f in e["source"]["fused"]) == 2
    for e, mod in zip(layers, (net[0], net[2], net[5])):
        np.testing.assert_array_equal(_read(out, e["files"]["bias"]),
                                      mod.bias.detach().numpy())
    report = verify(out, tmp_path / "q.onnx")
    assert report.ok, report.table()
    assert [r.name for r in report.rows if r.layer] == [e["name"] for e in layers]
    assert not report.not_verified
    rewrite(out, layers[1]["name"], "bias", lambda b: b * 0)  # the folded bias forgotten
    report = verify(out, tmp_path / "q.onnx")
    assert report.first_divergence is not None
    assert report.first_divergence.name == layers[1]["name"], report.table()


@pytest.mark.parametrize("mode", ["linear", "lut"])
def test_dtype_uint8_quantizes_float_weights(tmp_path: Path, mode: str) -> None:
    """--dtype uint8 on a float model: per-output-channel ranges (the twin's loops on the
    MPS-layout weights) or one table; verify passes with the default tolerances (which
    include the quantization bound) and says how much of the tolerance it takes."""
    from mpslayout.cli import main
    from mpslayout.verify import verify

    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 3, 3, 3)).astype(F32)
    b = rng.standard_normal(6).astype(F32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "f.onnx"))
    assert main(["export", str(tmp_path / "f.onnx"), "-o", str(tmp_path / "out"),
                 "--dtype", "uint8", "--quantize", mode, "-q"]) == 0
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    _validate(doc)
    (conv,) = doc["layers"]
    assert conv["weights_dtype"] == "uint8"
    assert conv["quantization"]["type"] == mode
    assert conv["quantization"]["exact"] is False
    assert doc["options"]["quantize"] == mode
    q = _read(tmp_path / "out", conv["files"]["weights"])
    np.testing.assert_array_equal(_read(tmp_path / "out", conv["files"]["bias"]), b)
    if mode == "linear":
        want_q, want_r = slow_quant.quantize_linear(slow.conv_weights(w, layout="OIHW"))
        np.testing.assert_array_equal(q, want_q)
        np.testing.assert_array_equal(_read(tmp_path / "out", conv["files"]["ranges"]), want_r)
    else:
        lut = _read(tmp_path / "out", conv["files"]["lut"])
        assert conv["files"]["lut"]["layout"] == "lut"
        assert lut.shape == (256,)
        np.testing.assert_array_equal(lut[q], slow.conv_weights(w, layout="OIHW"))  # 162 values
    report = verify(tmp_path / "out", tmp_path / "f.onnx")
    assert report.ok, report.table()
    assert any("requantized" in n and "of the tolerance" in n for n in report.rows[0].notes)
    assert report.rows[0].isolated.quant_share is not None
