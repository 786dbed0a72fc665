"""verify's verdicts: what it says when the input does not reach every weight, when ONNX
Runtime cannot run the model (old opsets; --expect), when an export holds raw tensors
(run by their op's meaning), and when nothing is checkable (exit status 3). Each check
also sees its planted bug fail."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
nn = torch.nn


from onnx import helper, numpy_helper  # noqa: E402

from mpslayout import cli  # noqa: E402
from mpslayout.verify import Uncheckable, verify  # noqa: E402

PYTORCH_CONVERTED = Path(os.path.dirname(onnx.__file__)) / "backend/test/data/pytorch-converted"


def _to_onnx(model: nn.Module, x: torch.Tensor, path: Path, **kw: object) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], **kw)
    return path


def _export(model: Path, out: Path, *extra: str) -> Path:
    assert cli.main(["export", str(model), "-o", str(out), "-q", "--force", *extra]) == 0
    return out


def _rewrite(out: Path, layer: str, role: str,
             fix: Callable[[np.ndarray], np.ndarray]) -> None:
    """Plant a bug: one file of one layer rewritten, its SHA-256 updated so only the
    numbers differ."""
    doc = json.loads((out / "manifest.json").read_text())
    entry = next(x for x in doc["layers"] if x["name"] == layer)
    info = entry["files"][role]
    dt = np.dtype({"float32": "<f4", "float16": "<f2", "uint8": "u1"}[info["dtype"]])
    a = np.fromfile(out / info["file"], dtype=dt).reshape(info["shape"])
    data = np.array(fix(a.copy()), dtype=dt, order="C")  # 0-D stays 0-D
    assert data.shape == a.shape
    assert not np.array_equal(data, a)
    (out / info["file"]).write_bytes(data.tobytes())
    info["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))


# ------------------------------------------------------------ taps the input never reaches


class _LateDepthwise(nn.Module):
    """An OCR-style trunk: four stride-2 convolutions, then a 5x5 depthwise layer that at
    a 32-pixel-high input sees a 2-pixel-high map."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for width in (8, 8, 8, 8):
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU()]
            c = width
        self.trunk = nn.Sequential(*layers)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.trunk(x))


def _late_depthwise(tmp_path: Path) -> tuple[Path, Path, str]:
    torch.manual_seed(0)
    path = _to_onnx(_LateDepthwise(), torch.randn(1, 3, 32, 64), tmp_path / "late.onnx",
                    dynamic_axes={"x": {2: "h", 3: "w"}})
    out = _export(path, tmp_path / "late")
    doc = json.loads((out / "manifest.json").read_text())
    dw = next(x["name"] for x in doc["layers"] if x["kind"] == "depthwise")
    return path, out, dw


def test_taps_outside_a_small_input_are_untested_not_a_divergence(tmp_path: Path,
                                                                  capsys) -> None:
    path, out, dw = _late_depthwise(tmp_path)
    x = ["--input-dims", "x=1,3,32,64"]
    assert cli.main(["verify", str(out), "--model", str(path), *x]) == 0
    text = capsys.readouterr().out
    assert "OK:" in text, text
    assert "untested" in text, text
    assert "x=1,3,48,64" in text, text
    assert cli.main(["verify", str(out), "--model", str(path), "--json", *x]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "ok"
    assert doc["exit_status"] == 0
    [u] = doc["untested"]
    assert u["layer"] == dw
    assert u["untested_taps"] == {"rows": [0, 4], "columns": []}
    assert u["smallest_input"] == "x=1,3,48,64"
    # at the size it names, every tap is read: nothing untested
    report = verify(out, path, input_dims={"x": (1, 3, 48, 64)})
    assert report.ok, report.table()
    assert not report.untested, report.table()


def test_untested_taps_hide_a_bug_the_named_input_finds(tmp_path: Path) -> None:
    """A wrong weight in a tap row the small input never reads passes there (that is what
    "untested" means), and fails at the smallest input the report names; a wrong weight in
    a row that is read fails at the small input too."""
    path, out, dw = _late_depthwise(tmp_path)

    def row0(w: np.ndarray) -> np.ndarray:  # (C, kH, kW): kernel row 0 doubled
        w[:, 0] = 2 * w[:, 0] + 0.5
        return w

    _rewrite(out, dw, "weights", row0)
    small = verify(out, path, input_dims={"x": (1, 3, 32, 64)})
    assert small.ok, small.table()
    assert small.untested, small.table()
    named = verify(out, path, input_dims={"x": (1, 3, 48, 64)})
    assert not named.ok, named.table()
    assert named.first_divergence.name == dw, named.table()

    def row1(w: np.ndarray) -> np.ndarray:  # a read row: rows 1 and 3 swapped
        return w[:, [0, 3, 2, 1, 4]]

    _rewrite(out, dw, "weights", row1)
    bad = verify(out, path, input_dims={"x": (1, 3, 32, 64)})
    assert not bad.ok, bad.table()
    assert bad.first_divergence.name == dw, bad.table()


# ------------------------------------------------------------ float16 sums with a constant


class _Shift(nn.Module):
    """The affine end of a LayerNorm on a (N, T, C) sequence: x * scale + shift."""

    def __init__(self, c: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.scale = nn.Parameter(torch.rand(c, generator=g) + 0.5)
        self.shift = nn.Parameter(torch.rand(c, generator=g) * 0.4 - 1.0)  # about -0.8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def test_float16_sum_with_a_constant_is_charged_by_its_terms(tmp_path: Path) -> None:
    """y = a + c with a about -c (y ~ 0.002, a ~ 0.8): the float16 constant's rounding is
    up to u16*|c|, far above u16*|y|. A correct float16 export passes; the shift written in
    reverse channel order fails, naming its raw tensor."""
    c, t = 16, 24
    m = _Shift(c)
    path = _to_onnx(m, torch.randn(1, t, c), tmp_path / "shift.onnx", opset_version=13)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        s, b = m.scale.numpy(), m.shift.numpy()
    a = -b + 0.002 * rng.standard_normal((1, t, c))  # x*scale lands next to -shift
    x = (a / s).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = _export(path, tmp_path / "f16", "--dtype", "float16")
    report = verify(out, path, input=x)
    assert report.ok, report.table()
    doc = json.loads((out / "manifest.json").read_text())
    shift = next(e["name"] for e in doc["layers"] if e["source"]["op"] == "Add")
    assert next(r for r in report.rows if r.name == shift).layer
    _rewrite(out, shift, "tensor", lambda v: v[::-1])
    bad = verify(out, path, input=x)
    assert not bad.ok, bad.table()
    assert bad.first_divergence.name == shift, bad.table()


# ------------------------------------------------------ ONNX's own pytorch-converted models

_CONVERTED = ["test_BatchNorm1d_3d_input_eval", "test_BatchNorm2d_eval",
              "test_BatchNorm2d_momentum_eval", "test_BatchNorm3d_eval",
              "test_BatchNorm3d_momentum_eval", "test_Linear", "test_PReLU_1d",
              "test_PReLU_1d_multiparam", "test_PReLU_2d", "test_PReLU_2d_multiparam",
              "test_PReLU_3d", "test_PReLU_3d_multiparam", "test_Softsign", "test_Embedding",
              "test_Embedding_sparse"]


def _converted(name: str) -> Path:
    d = PYTORCH_CONVERTED / name
    if not (d / "model.onnx").is_file():
        pytest.skip(f"the installed onnx package ships no {name}")
    return d


def _npy(pb: Path, to: Path) -> Path:
    np.save(to, numpy_helper.to_array(onnx.load_tensor(str(pb))))
    return to


@pytest.mark.parametrize("name", _CONVERTED)
def test_pytorch_converted_models_verify_on_their_shipped_data(tmp_path: Path, name: str,
                                                               capsys) -> None:
    """Opset-6 files ONNX Runtime no longer runs (BatchNormalization and PRelu with
    consumed_inputs, Gemm and Add with broadcast): verify runs a copy upgraded by
    onnx.version_converter and says so; the shipped output_0.pb is compared too."""
    d = _converted(name)
    out = _export(d / "model.onnx", tmp_path / "out")
    data = d / "test_data_set_0"
    x = _npy(data / "input_0.pb", tmp_path / "x.npy")
    code = cli.main(["verify", str(out), "--model", str(d / "model.onnx"), "--input", str(x),
                     "--expect", str(data / "output_0.pb"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc
    assert doc["verdict"] == "ok"
    assert doc["layers_checked"] >= 1
    assert any(r["kind"] == "expected" and r["ok"] for r in doc["rows"]), doc
    if name.startswith(("test_BatchNorm", "test_PReLU", "test_Linear", "test_Softsign")):
        assert any("version_converter" in n for n in doc["model_notes"]), doc


@pytest.mark.parametrize(("name", "role", "fix"), [
    ("test_BatchNorm2d_eval", "gamma", lambda a: a[::-1]),
    ("test_BatchNorm3d_eval", "variance", lambda a: 4 * a + 0.5),
    ("test_BatchNorm1d_3d_input_eval", "mean", lambda a: a + 0.5),
    # the shipped slopes are all 0.25 (PyTorch's init): one channel's slope made wrong
    ("test_PReLU_2d_multiparam", "tensor", lambda a: a * np.array([1, 1, 3], a.dtype)),
    ("test_PReLU_3d_multiparam", "tensor", lambda a: a * np.array([3, 1, 1], a.dtype)),
    ("test_PReLU_1d", "tensor", lambda a: a + 0.5),
    ("test_Embedding", "tensor", lambda a: a[[1, 0, 2, 3]]),
    ("test_Softsign", "tensor", lambda a: a + 1),
    ("test_Linear", "weights", lambda a: a[::-1]),
])
def test_pytorch_converted_planted_bugs_fail(tmp_path: Path, name: str, role: str,
                                             fix: Callable[[np.ndarray], np.ndarray]) -> None:
    d = _converted(name)
    out = _export(d / "model.onnx", tmp_path / "out")
    layer = json.loads((out / "manifest.json").read_text())["layers"][0]["name"]
    _rewrite(out, layer, role, fix)
    x = numpy_helper.to_array(onnx.load_tensor(str(d / "test_data_set_0/input_0.pb")))
    report = verify(out, d / "model.onnx", input=x,
                    expect=str(d / "test_data_set_0/output_0.pb"))
    assert not report.ok, report.table()
    assert report.verdict == "failed"
    assert report.exit_status == 1
    assert report.first_divergence.name == layer, report.table()


def test_a_wrong_expected_output_fails(tmp_path: Path) -> None:
    d = _converted("test_BatchNorm2d_eval")
    out = _export(d / "model.onnx", tmp_path / "out")
    x = numpy_helper.to_array(onnx.load_tensor(str(d / "test_data_set_0/input_0.pb")))
    y = numpy_helper.to_array(onnx.load_tensor(str(d / "test_data_set_0/output_0.pb")))
    report = verify(out, d / "model.onnx", input=x, expect={"5": y + 0.01})
    assert not report.ok
    assert report.first_divergence.kind == "expected", report.table()


def test_the_upgraded_prelu_keeps_its_per_channel_meaning(tmp_path: Path) -> None:
    """onnx.version_converter leaves an opset-6 PRelu slope [C] as it is, which from opset
    7 broadcasts along the last axis; verify gives it the per-channel meaning the model
    had (the shipped output says which), and says so."""
    d = _converted("test_PReLU_2d_multiparam")
    out = _export(d / "model.onnx", tmp_path / "out")
    x = numpy_helper.to_array(onnx.load_tensor(str(d / "test_data_set_0/input_0.pb")))
    report = verify(out, d / "model.onnx", input=x,
                    expect=str(d / "test_data_set_0/output_0.pb"))
    assert report.ok, report.table()
    assert "per channel" in " ".join(report.model_notes)


# ------------------------------------------------------------ no oracle: the expected values


def _unrunnable(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A Conv whose output also feeds an operator of a domain no ONNX Runtime knows: the
    model cannot be run, its conv output is known (computed here with PyTorch)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y = conv(x).numpy()
    w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Frobnicate", ["y"], ["z"], name="custom", domain="com.example")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    return path, _export(path, tmp_path / "out"), x.numpy(), y


def test_no_runtime_and_no_expect_is_nothing_checkable(tmp_path: Path, capsys) -> None:
    path, out, x, _ = _unrunnable(tmp_path)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(Uncheckable, match="--expect"):
        verify(out, path, input=x)
    assert cli.main(["verify", str(out), "--model", str(path), "--input",
                     str(tmp_path / "x.npy"), "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "nothing_checkable"
    assert doc["exit_status"] == 3
    assert "ONNX Runtime cannot run" in doc["reason"]


def test_expected_outputs_judge_when_no_runtime_runs_the_model(tmp_path: Path) -> None:
    path, out, x, y = _unrunnable(tmp_path)
    report = verify(out, path, input=x, expect={"y": y})
    assert report.ok, report.table()
    assert report.oracle.startswith("the expected outputs")
    assert any("--expect" in n for n in report.model_notes)
    _rewrite(out, "conv", "weights", lambda w: w[:, ::-1, ::-1])  # rotated 180 degrees
    bad = verify(out, path, input=x, expect={"y": y})
    assert not bad.ok, bad.table()
    assert bad.first_divergence.name == "conv"


# ------------------------------------------------------------ nothing checkable


def test_an_export_of_nothing_runnable_is_exit_3_not_a_divergence(tmp_path: Path,
                                                                  capsys) -> None:
    """A model whose only learned tensor is a raw operand of an op with no MPS kernel and
    no plain meaning verify knows (Einsum): nothing checkable, exit 3, in --json too."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Einsum", ["x", "k"], ["y"], name="mix", equation="bi,ij->bj")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float32), "k")])
    path = tmp_path / "einsum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    out = _export(path, tmp_path / "out")
    report = verify(out, path)
    assert report.verdict == "nothing_checkable", report.table()
    assert report.exit_status == 3
    assert "NOTHING CHECKABLE" in report.table()
    assert cli.main(["verify", str(out), "--model", str(path), "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "nothing_checkable"
    assert doc["exit_status"] == 3
    assert doc["not_verified"][0]["name"] == "mix"


# ------------------------------------------------------------ raw tensors by their meaning


class _Tokens(nn.Module):
    """An embedding, a LayerNorm (opset 17: one LayerNormalization node) and a PReLU."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.emb = nn.Embedding(11, 8)
        self.norm = nn.LayerNorm(8)
        with torch.no_grad():
            self.norm.weight.copy_(torch.rand(8, generator=g) + 0.5)
            self.norm.bias.copy_(torch.randn(8, generator=g))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.emb(ids))


def test_embedding_and_layer_norm_raw_tensors_run_by_their_meaning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ids = torch.tensor([[1, 4, 9, 2, 10, 0]])
    path = tmp_path / "tokens.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Tokens().eval(), (ids,), str(path), dynamo=False,
                          input_names=["ids"], output_names=["y"], opset_version=17)
    out = _export(path, tmp_path / "out")
    doc = json.loads((out / "manifest.json").read_text())
    table = next(e["name"] for e in doc["layers"] if e.get("role") == "table")
    scale = next(e["name"] for e in doc["layers"] if e.get("role") == "scale")
    shift = next(e["name"] for e in doc["layers"] if e.get("role") == "shift")
    given = {"ids": ids.numpy()}
    report = verify(out, path, input=given)
    assert report.ok, report.table()
    assert report.layers_checked == 2, report.table()  # the table; scale and shift together
    assert not report.not_verified, report.table()
    _rewrite(out, table, "tensor", lambda t: t[::-1])
    bad = verify(out, path, input=given)
    assert bad.first_divergence.name == table, bad.table()
    _rewrite(out, table, "tensor", lambda t: t[::-1])  # back
    _rewrite(out, scale, "tensor", lambda s: s[::-1])
    bad = verify(out, path, input=given)
    assert bad.first_divergence is not None, bad.table()
    assert scale in bad.first_divergence.name
    _rewrite(out, scale, "tensor", lambda s: s[::-1])  # back
    _rewrite(out, shift, "tensor", lambda s: s + 0.01)
    bad = verify(out, path, input=given)
    assert bad.first_divergence is not None, bad.table()
    assert shift in bad.first_divergence.name


# ------------------------------------------------------------ saying what it does


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, monkeypatch, capsys) -> None:
    import mpslayout.export as export_module

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "export", interrupted)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    assert cli.main(["export", str(path), "-o", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: nothing was written"
    assert not (tmp_path / "out").exists()


def test_refusal_hint_shows_the_models_rank_and_channels(tmp_path: Path, capsys) -> None:
    conv = helper.make_node("Conv", ["input1", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv], "g",
        [helper.make_tensor_value_info("input1", onnx.TensorProto.FLOAT, [1, 1, 64, "W"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")])
    path = tmp_path / "ocr.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    out = _export(path, tmp_path / "out")
    assert cli.main(["verify", str(out), "--model", str(path)]) == 1
    err = capsys.readouterr().err
    assert "--input-dims input1=1,1,64,W" in err, err
    assert "1,3,H,W" not in err


def test_a_bad_file_gives_no_runtime_warning(tmp_path: Path) -> None:
    path, out, dw = _late_depthwise(tmp_path)

    def poison(w: np.ndarray) -> np.ndarray:
        w[0, 2, 2], w[1, 2, 2], w[2, 2, 2] = np.nan, np.inf, 3e38
        return w

    _rewrite(out, dw, "weights", poison)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        report = verify(out, path, input_dims={"x": (1, 3, 48, 64)}, storage="float16")
    assert not report.ok
    row = report.first_divergence
    assert row.name == dw, report.table()
    assert any("not finite" in n for n in row.notes), report.table()


def test_an_unexported_lstm_reads_not_in_the_export(tmp_path: Path) -> None:
    class _M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 1)
            self.rnn = nn.LSTM(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    torch.manual_seed(0)
    path = _to_onnx(_M(), torch.randn(3, 1, 4), tmp_path / "lstm.onnx")
    out = tmp_path / "out"
    doc_only = _export(path, out)
    doc = json.loads((doc_only / "manifest.json").read_text())
    lstm = next(e for e in doc["layers"] if e["kind"] == "lstm")
    # an export that left the LSTM out: the manifest lists it with its reason
    doc["layers"] = [e for e in doc["layers"] if e is not lstm]
    doc["skipped"].append({"name": lstm["source"]["node"], "op": "LSTM",
                           "reason": "not in --only", "tensors": lstm["source"]["tensors"]})
    (out / "manifest.json").write_text(json.dumps(doc))
    report = verify(out, path)
    why = next(x["reason"] for x in report.not_verified if x["op"] == "LSTM")
    assert why.startswith("not in the export (not in --only)"), why


def test_progress_goes_to_a_terminal_only(tmp_path: Path, monkeypatch, capsys) -> None:
    path, out, _ = _late_depthwise(tmp_path)
    args = ["verify", str(out), "--model", str(path), "--input-dims", "x=1,3,48,64"]
    assert cli.main(args) == 0
    got = capsys.readouterr()
    assert got.err == ""
    assert got.out.startswith("mpslayout verify: ")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "layer 5 of 5" in err, err


def test_manifest_weights_dtype_agrees_with_its_layers(tmp_path: Path) -> None:
    path, out, _ = _late_depthwise(tmp_path)
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["layer_weights_dtypes"] == {"float32": 5}
    assert doc["weights_dtype"] == "float32"
    out16 = _export(path, tmp_path / "f16", "--dtype", "float16")
    doc = json.loads((out16 / "manifest.json").read_text())
    assert doc["layer_weights_dtypes"] == {"float16": 5}
    assert doc["weights_dtype"] == "float16"
