"""ONNX Runtime's dynamic quantization (``onnxruntime.quantization.quantize_dynamic``) of
real torch-exported models with Conv, LSTM and Linear layers:

- ``DynamicQuantizeLSTM`` (com.microsoft): its 8-bit W and R become MPS gate weights, the
  float values ORT multiplies by; ``--strict`` passes with nothing left behind, and when
  the node cannot be read its 8-bit tensors are listed, so ``--strict`` fails naming them.
  Judged against torch's float LSTM and ORT's own quantized run (within the quantization
  error), and against the documented loops on the dequantized weights (exactly);
- ``ConvInteger -> Add(int32 bias) -> Cast -> Mul`` (the bias quantized in the graph by
  ``Cast(Floor(Div(bias, Mul(x_scale, w_scale))))``; written here by rewriting
  quantize_dynamic's float-bias output into that form): exported with the float bias and
  recognised by verify;
- planted bugs (an LSTM's gates swapped, a quantized kernel rotated) fail verify, naming
  the layer;
- a raw tensor of ``Div(c, x)`` says its constant is the first operand.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from test_export_quant import rewrite  # noqa: E402

from mpslayout import cli, rnn, slow_rnn  # noqa: E402
from mpslayout.export import export  # noqa: E402
from mpslayout.verify import verify  # noqa: E402
from mpslayout.verify.recurrent import run_exported  # noqa: E402

nn = torch.nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.lstm = nn.LSTM(64, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Any) -> Any:
        y = torch.relu(self.c2(torch.relu(self.c1(x))))  # (1, 8, 8, 8)
        y = y.permute(0, 3, 1, 2).flatten(2)  # (1, 8, 64): a sequence of 8
        y, _ = self.lstm(y)
        return self.fc(y) / 2.0


def _quantized(tmp: Path, module: nn.Module, x: Any, weight_type: str) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(tmp / "f.onnx"), dynamo=False,
                          input_names=["x"])
        qt = getattr(quantization.QuantType, weight_type)
        quantization.quantize_dynamic(str(tmp / "f.onnx"), str(tmp / "q.onnx"),
                                      weight_type=qt)
    return tmp / "q.onnx"


def _export(model: Path, out: Path, **kw: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export(str(model), str(out), progress=False, **kw)


def _files(out: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = {}
    for role, f in entry["files"].items():
        arrays[role] = np.fromfile(out / f["file"], dtype=f["dtype"]).reshape(f["shape"])
    return arrays


@pytest.fixture(scope="module", params=["QUInt8", "QInt8"])
def quantized_net(request: Any, tmp_path_factory: Any) -> tuple[Path, nn.Module]:
    torch.manual_seed(1)
    net = Net()
    tmp = tmp_path_factory.mktemp(request.param)
    return _quantized(tmp, net, torch.randn(1, 3, 16, 16), request.param), net


def test_whole_model_exports_strict_and_verifies(quantized_net: Any, tmp_path: Path) -> None:
    path, _ = quantized_net
    doc = _export(path, tmp_path / "out", strict=True)
    kinds = sorted(e["kind"] for e in doc["layers"] if e["kind"] != "tensor")
    assert kinds == ["convolution", "convolution", "fully_connected", "lstm"]
    (lstm,) = [e for e in doc["layers"] if e["kind"] == "lstm"]
    q_names = {n.input[1] for n in onnx.load(str(path)).graph.node
               if n.op_type == "DynamicQuantizeLSTM"}
    assert q_names & set(lstm["source"]["tensors"])
    assert any(t.endswith("_scale") for t in lstm["source"]["tensors"])
    report = verify(tmp_path / "out", path)
    assert report.ok, report.table()
    rows = {r.name: r for r in report.rows}
    assert rows[lstm["name"]].ok
    assert all(rows[e["name"]].ok for e in doc["layers"] if e["kind"] == "convolution")


def _lstm_only(tmp: Path, weight_type: str) -> tuple[Path, nn.Module]:
    torch.manual_seed(2)
    lstm = nn.LSTM(12, 8)
    return _quantized(tmp, lstm, torch.randn(5, 1, 12), weight_type), lstm


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_dynamic_quantize_lstm_files(tmp_path: Path, weight_type: str) -> None:
    path, lstm = _lstm_only(tmp_path, weight_type)
    doc = _export(path, tmp_path / "out", strict=True)
    (e,) = [x for x in doc["layers"] if x["kind"] == "lstm"]
    files = _files(tmp_path / "out", e)
    # exactly: the documented loops on the dequantized weights, written here by index
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def deq(q: str, s: str, z: str) -> np.ndarray:
        a, sc, zp = init[q].astype(np.float64), init[s].ravel(), init[z].ravel()
        d, k, n = a.shape
        out = np.zeros((d, n, k))
        for di in range(d):
            for col in range(n):
                s_ = sc[di * n + col] if sc.size > d else sc[di]
                z_ = zp[di * n + col] if zp.size > d else zp[di]
                out[di, col, :] = (a[di, :, col] - z_) * s_
        return out.astype(np.float32)

    w = deq(node.input[1], node.input[8], node.input[9])
    r = deq(node.input[2], node.input[10], node.input[11])
    want = slow_rnn.lstm_weights(w[0], r[0], init[node.input[3]][0], layout="ONNX")
    for role, arr in want.items():
        np.testing.assert_array_equal(files[role], arr)
    # numerically: the cell from the files against torch's float LSTM and ORT's quantized
    x = np.random.default_rng(3).standard_normal((5, 1, 12)).astype(np.float32)
    got = run_exported(e, files, x)
    with torch.no_grad():
        want_torch = lstm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got, want_torch, atol=0.03)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y_ort, *_) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, y_ort.reshape(got.shape), atol=0.03)


def test_planted_lstm_gate_swap_fails(quantized_net: Any, tmp_path: Path,
                                      monkeypatch: Any) -> None:
    path, _ = quantized_net
    monkeypatch.setitem(rnn.LSTM_ORDER, "ONNX", "iocf")  # output and forget swapped
    doc = _export(path, tmp_path / "out")
    (lstm,) = [e for e in doc["layers"] if e["kind"] == "lstm"]
    monkeypatch.undo()
    report = verify(tmp_path / "out", path)
    assert not report.ok
    rows = {r.name: r for r in report.rows}
    assert not rows[lstm["name"]].ok
    assert rows[lstm["name"]].error is None  # a numeric failure, not a crash
    assert all(r.ok for r in report.rows if r.name != lstm["name"])


def test_unreadable_dynamic_quantize_lstm_is_listed_and_strict_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _lstm_only(tmp_path, "QUInt8")
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    for t in model.graph.initializer:  # a zero point of 3 values for one direction
        if t.name == node.input[9]:
            t.CopyFrom(numpy_helper.from_array(np.zeros(3, np.uint8), t.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    rc = cli.main(["export", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "o"),
                   "--strict"])
    err = capsys.readouterr().err
    assert rc != 0
    assert node.input[1] in err
    assert node.input[2] in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------- int32 bias chain


def _int32_bias_form(src: Path, dst: Path) -> None:
    """quantize_dynamic's ``ConvInteger -> Cast -> Mul -> Add(float bias)`` rewritten as
    ``ConvInteger -> Add(Cast(int32, Floor(Div(bias, scale)))) -> Cast -> Mul``."""
    m = onnx.load(str(src))
    nodes = list(m.graph.node)
    chains: dict[int, tuple[str, str]] = {}
    drop = set()
    for n in nodes:
        if n.op_type != "ConvInteger":
            continue
        base = n.output[0]
        cast = next(c for c in nodes if c.op_type == "Cast" and c.input[0] == base)
        mul = next(c for c in nodes if c.op_type == "Mul" and c.input[0] == cast.output[0])
        add = next(c for c in nodes if c.op_type == "Add" and mul.output[0] in c.input)
        chains[id(n)] = (next(t for t in add.input if t != mul.output[0]), mul.input[1])
        drop.add(id(add))
        cast.input[0] = f"{base}_biased"
        mul.output[0] = add.output[0]
    out = []
    for n in nodes:
        if id(n) in drop:
            continue
        out.append(n)
        if id(n) in chains:
            bias, scale = chains[id(n)]
            b = n.output[0]
            out += [helper.make_node("Div", [bias, scale], [f"{b}_div"], name=f"{b}_div"),
                    helper.make_node("Floor", [f"{b}_div"], [f"{b}_floor"], name=f"{b}_fl"),
                    helper.make_node("Cast", [f"{b}_floor"], [f"{b}_bq"], name=f"{b}_bq",
                                     to=TensorProto.INT32),
                    helper.make_node("Add", [b, f"{b}_bq"], [f"{b}_biased"],
                                     name=f"{b}_bias_add")]
    del m.graph.node[:]
    m.graph.node.extend(out)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def _rotate(q: np.ndarray) -> np.ndarray:
    return q[:, ::-1, ::-1, :]


@pytest.mark.parametrize("bug", [None, "rotate"])
def test_conv_integer_with_int32_bias(quantized_net: Any, tmp_path: Path, bug: Any,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path, net = quantized_net
    _int32_bias_form(path, tmp_path / "m.onnx")
    doc = _export(tmp_path / "m.onnx", tmp_path / "out", strict=True)
    convs = [e for e in doc["layers"] if e["kind"] == "convolution"]
    assert len(convs) == 2
    for e in convs:
        assert e["weights_dtype"] == "uint8"
        assert any("int32 bias" in n for n in e["notes"])
    # the exported bias is the float model's
    for e, mod in zip(convs, (net.c1, net.c2)):
        f = e["files"]["bias"]
        b = np.fromfile(tmp_path / "out" / f["file"], dtype="<f4")
        np.testing.assert_allclose(b, mod.bias.detach().numpy(), rtol=1e-6)
    assert not any(e["kind"] == "tensor" and e["source"]["op"] in ("Div", "Add")
                   for e in doc["layers"])
    if bug:
        rewrite(tmp_path / "out", convs[1]["name"], "weights", _rotate)
    report = verify(tmp_path / "out", tmp_path / "m.onnx")
    if bug is None:
        assert report.ok, report.table()
        assert {r.name for r in report.rows if r.kind == "convolution" and r.ok} == \
            {e["name"] for e in convs}
    else:
        assert report.first_divergence is not None
        assert report.first_divergence.name == convs[1]["name"], report.table()
        assert cli.main(["verify", str(tmp_path / "out"), "--model",
                         str(tmp_path / "m.onnx")]) == 1
        assert f"first divergence at layer {convs[1]['name']!r}" in capsys.readouterr().out


# ------------------------------------------------------------------- operand order


def test_div_constant_first_operand_is_named(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6])
    c = numpy_helper.from_array(np.arange(1, 7, dtype=np.float32).reshape(1, 1, 6), "c")
    d = numpy_helper.from_array(np.full((2, 4, 6), 3, np.float32), "d")
    g = helper.make_graph([helper.make_node("Div", ["c", "x"], ["t"], name="c_over_x"),
                           helper.make_node("Div", ["t", "d"], ["y"], name="t_over_d")],
                          "g", [x], [y], [c, d])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "m.onnx"))
    doc = _export(tmp_path / "m.onnx", tmp_path / "out")
    by = {e["source"]["node"]: e for e in doc["layers"]}
    first, second = by["c_over_x"], by["t_over_d"]
    assert (first["constant_operand"], first["role"]) == ("primary", "operand")
    assert "first operand" in first["notes"][0]
    assert (second["constant_operand"], second["role"]) == ("secondary", "scale")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["layers"]
