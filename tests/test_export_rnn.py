"""Export of recurrent layers (ONNX LSTM/GRU/RNN nodes, PyTorch state_dict families, Keras
LSTM/GRU/Bidirectional): one file per MPS gate property whose bytes equal the loops of
docs/layouts.md section 9 (mpslayout.slow_rnn), a manifest that validates, and outputs of
the MPS cell formulas run from the files equal to ONNX Runtime / PyTorch / Keras. Planted
converter bugs (two gates swapped, the recurrent bias forgotten) make verify fail on the
layer."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpslayout import rnn, slow_rnn
from mpslayout.export import export
from mpslayout.verify.recurrent import run_exported

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
TWINS = {"lstm": slow_rnn.lstm_weights, "gru": slow_rnn.gru_weights,
         "rnn": slow_rnn.rnn_weights}


def _validate(doc: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()),
                        cls=jsonschema.Draft202012Validator)


def _recurrent(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The recurrent layers of an export (torch's exporter also leaves the zero initial
    states as Expand operands, which other rules export)."""
    return [e for e in doc["layers"] if e["kind"] in TWINS]


def _files(folder: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for role, info in entry["files"].items():
        a = np.fromfile(folder / info["file"], dtype=np.dtype(info["dtype"]).newbyteorder("<"))
        out[role] = a.reshape(info["shape"])
    return out


def _check_bytes(folder: Path, entry: dict[str, Any], want: dict[str, np.ndarray]) -> None:
    """Every written file holds exactly the twin's bytes, one file per property."""
    got = _files(folder, entry)
    assert list(got) == list(want)
    for role, a in want.items():
        assert entry["files"][role]["file"] == f"{entry['file_stem']}.{role}.bin"
        assert got[role].dtype == a.dtype
        assert got[role].tobytes() == a.tobytes(), role


def _torch_onnx(module: Any, x: Any, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False)


class _Net(torch.nn.Module):
    """A CRNN-style tail: bidirectional LSTM, then a GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 5, bidirectional=True)
        self.gru = torch.nn.GRU(10, 4)

    def forward(self, x: Any) -> Any:
        return self.gru(self.lstm(x)[0])[0]


@pytest.fixture(scope="module")
def pytorch_onnx(tmp_path_factory: Any) -> tuple[Path, Path, dict[str, Any]]:
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("rnn")
    net = _Net().eval()
    _torch_onnx(net, torch.randn(6, 2, 3), tmp / "m.onnx")
    doc = export(tmp / "m.onnx", tmp / "out", progress=False)
    return tmp / "m.onnx", tmp / "out", doc


def test_onnx_lstm_gru_files_follow_the_documented_rule(pytorch_onnx: Any) -> None:
    from onnx import numpy_helper

    model_path, out, doc = pytorch_onnx
    _validate(doc)
    model = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = _recurrent(doc)
    assert [e["kind"] for e in layers] == ["lstm", "lstm", "gru"]
    for entry in layers:
        src = entry["source"]
        args = [inits[src["weights"]], inits[src["recurrent_weights"]], inits[src["bias"]]]
        lbr = ({"linear_before_reset": bool(entry["recurrent"]["linear_before_reset"])}
               if entry["kind"] == "gru" else {})
        want = TWINS[entry["kind"]](*args, layout="ONNX", direction=src["direction_index"],
                                    **lbr)
        _check_bytes(out, entry, want)
    fwd, bwd, gru = layers
    assert (fwd["recurrent"]["layerSequenceDirection"],
            bwd["recurrent"]["layerSequenceDirection"]) == ("forward", "backward")
    assert fwd["recurrent"]["bidirectional"]["layers"] == [fwd["name"], bwd["name"]]
    assert fwd["recurrent"]["exact"] is True
    assert gru["recurrent"]["exact"] is False  # PyTorch's GRU: linear_before_reset=1
    assert any("linear_before_reset=1" in n for n in gru["notes"])
    # no learned tensor lost: the n gate's recurrent bias (ONNX Rb block h) kept apart
    b = inits[gru["source"]["bias"]][0]
    h = gru["recurrent"]["hidden_size"]
    rec_bias = np.fromfile(out / gru["files"]["outputGateRecurrentBias"]["file"], "<f4")
    np.testing.assert_array_equal(rec_bias, b[3 * h + 2 * h:3 * h + 3 * h])
    assert gru["recurrent"]["not_mps_properties"] == ["outputGateRecurrentBias"]


def test_verify_passes_the_lstm_and_names_the_inexact_gru(pytorch_onnx: Any) -> None:
    from mpslayout.verify import verify

    model_path, out, _ = pytorch_onnx
    report = verify(out, model_path)
    rows = {r.name: r for r in report.rows}
    assert rows["/lstm/LSTM.forward"].ok
    assert rows["/lstm/LSTM.backward"].ok
    gru = rows["/gru/GRU"]
    assert not gru.ok
    assert not report.ok
    assert any("not exact" in n for n in gru.notes)
    # MPS's cell is not the model's; the files are: run with the model's own cell they agree
    assert not gru.isolated.ok
    assert gru.isolated.max_abs > 1e-3
    assert gru.files is not None
    assert gru.files.ok
    assert gru.files_ok
    table = report.table()
    assert "INEXACT" in table
    assert "--allow-inexact" in table
    accepted = verify(out, model_path, allow_inexact=True)
    assert accepted.ok
    assert "ok*" in accepted.table()


def test_allow_inexact_does_not_pass_wrong_gru_files(pytorch_onnx: Any, tmp_path: Path,
                                                     monkeypatch: Any) -> None:
    """A planted bug in the inexact GRU's files (z and r gates swapped) fails even with
    --allow-inexact: the files check runs the model's own cell."""
    from mpslayout.cli import main

    model_path = pytorch_onnx[0]
    monkeypatch.setitem(rnn.GRU_ORDER, "ONNX", "rzh")
    export(model_path, tmp_path / "out", progress=False)
    code = main(["verify", str(tmp_path / "out"), "--model", str(model_path),
                 "--allow-inexact"])
    assert code == 1


def _onnx_model(path: Path, nodes: list[Any], inits: dict[str, np.ndarray],
                x_shape: list[int]) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _gru_rnn_graph(tmp_path: Path, **gru_attrs: Any) -> Path:
    """X -> bidirectional GRU (linear_before_reset=0: MPS's cell) -> Reshape -> RNN."""
    from onnx import helper

    rng = np.random.default_rng(0)
    h, n_in = 4, 3

    def rand(*shape: int) -> np.ndarray:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)

    inits = {"W": rand(2, 3 * h, n_in), "R": rand(2, 3 * h, h), "B": rand(2, 6 * h),
             "W2": rand(1, 2, 2 * h), "R2": rand(1, 2, 2), "B2": rand(1, 4),
             "shape": np.array([0, 0, -1], np.int64)}
    nodes = [
        helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], name="gru", hidden_size=h,
                         direction="bidirectional", **gru_attrs),
        helper.make_node("Transpose", ["Y"], ["Yt"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["Yt", "shape"], ["Y2"]),
        helper.make_node("RNN", ["Y2", "W2", "R2", "B2"], ["Z"], name="rnn", hidden_size=2,
                         direction="reverse", activations=["Relu"]),
    ]
    _onnx_model(tmp_path / "g.onnx", nodes, inits, [5, 2, n_in])
    return tmp_path / "g.onnx"


def test_onnx_gru_linear_before_reset_0_and_rnn_verify(tmp_path: Path) -> None:
    from mpslayout.verify import verify

    path = _gru_rnn_graph(tmp_path)
    doc = export(path, tmp_path / "out", progress=False)
    _validate(doc)
    assert [e["name"] for e in doc["layers"]] == ["gru.forward", "gru.backward", "rnn"]
    assert all(e["recurrent"]["exact"] for e in doc["layers"])
    assert doc["layers"][2]["recurrent"]["neurons"]["input"]["type"] == "ReLU"
    report = verify(tmp_path / "out", path)
    assert [r.ok for r in report.rows if r.layer] == [True, True, True], report.table()
    # float16 weights: judged against ONNX Runtime with float16-rounded weights
    doc16 = export(path, tmp_path / "o16", dtype="float16", progress=False)
    assert doc16["layers"][0]["files"]["inputGateInputWeights"]["dtype"] == "float16"
    assert doc16["layers"][0]["files"]["inputGateInputWeights.bias"]["dtype"] == "float32"
    report = verify(tmp_path / "o16", path)
    assert all(r.ok for r in report.rows if r.layer), report.table()


def test_activation_parameters_go_to_the_activations_that_take_them(tmp_path: Path) -> None:
    """activation_alpha/beta are handed out in order to the activations with such a
    parameter (as ONNX Runtime reads them): [Sigmoid, Affine] x 2 with alphas [2, 3] gives
    the Affines 2 and 3, not the Sigmoids. verify compares with ONNX Runtime."""
    from mpslayout.verify import verify

    path = _gru_rnn_graph(tmp_path, activations=["Sigmoid", "Affine", "HardSigmoid", "Tanh"],
                          activation_alpha=[0.5, 0.3], activation_beta=[0.1, 0.4])
    doc = export(path, tmp_path / "out", progress=False)
    fwd, bwd = doc["layers"][0]["recurrent"], doc["layers"][1]["recurrent"]
    assert fwd["neurons"]["outputGate"] == {"type": "Linear", "a": 0.5, "b": pytest.approx(0.1)}
    assert bwd["neurons"]["inputGate"] == {"type": "HardSigmoid", "a": pytest.approx(0.3),
                                           "b": pytest.approx(0.4)}
    report = verify(tmp_path / "out", path)
    assert [r.ok for r in report.rows if r.layer] == [True, True, True], report.table()


def test_unsupported_activation_is_exported_and_flagged(tmp_path: Path) -> None:
    path = _gru_rnn_graph(tmp_path, activations=["Sigmoid", "ThresholdedRelu"] * 2)
    doc = export(path, tmp_path / "out", progress=False)
    gru = doc["layers"][0]
    assert gru["recurrent"]["exact"] is False
    assert gru["recurrent"]["neurons"]["outputGate"] is None
    assert any("no neuron" in n for n in gru["notes"])


@pytest.mark.parametrize("bug", ["swap_gates", "no_recurrent_bias"])
def test_planted_converter_bugs_fail_verify(pytorch_onnx: Any, tmp_path: Path, bug: str,
                                            monkeypatch: Any) -> None:
    from mpslayout.verify import verify

    model_path = pytorch_onnx[0]
    if bug == "swap_gates":  # forget and cell gate blocks exchanged
        monkeypatch.setitem(rnn.LSTM_ORDER, "ONNX", "iocf")
    else:  # only the input bias (Wb) kept
        monkeypatch.setattr(rnn, "_sum_bias", lambda parts, k, h: parts[0][
            k * h:(k + 1) * h].astype(np.float32))
    export(model_path, tmp_path / "out", progress=False)
    report = verify(tmp_path / "out", model_path)
    rows = {r.name: r for r in report.rows}
    assert not report.ok
    assert not rows["/lstm/LSTM.forward"].ok
    assert not rows["/lstm/LSTM.backward"].ok
    assert rows["/lstm/LSTM.forward"].error is None  # a numeric failure, not a crash
    line = next(x for x in report.table().splitlines() if "/lstm/LSTM.forward " in x)
    assert line.rstrip().endswith("FAIL")


# ------------------------------------------------------------------ state_dict


def test_state_dict_two_layer_bidirectional_lstm_and_gru(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(3)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    gru = torch.nn.GRU(4, 6)
    sd = {f"enc.{k}": v.contiguous() for k, v in lstm.state_dict().items()}
    sd.update({f"dec.{k}": v.contiguous() for k, v in gru.state_dict().items()})
    st.save_file(sd, str(tmp_path / "m.safetensors"))
    doc = export(tmp_path / "m.safetensors", tmp_path / "out", progress=False)
    _validate(doc)
    names = [e["name"] for e in doc["layers"]]
    assert sorted(names) == ["dec.l0", "enc.l0", "enc.l0_reverse", "enc.l1", "enc.l1_reverse"]
    npsd = {k: v.numpy() for k, v in sd.items()}
    for entry in doc["layers"]:
        mod, _, tail = entry["name"].partition(".")
        sfx = tail[1:]  # "0" / "0_reverse"
        b = np.stack([npsd[f"{mod}.bias_ih_l{sfx}"], npsd[f"{mod}.bias_hh_l{sfx}"]])
        lbr = {"linear_before_reset": True} if entry["kind"] == "gru" else {}
        want = TWINS[entry["kind"]](npsd[f"{mod}.weight_ih_l{sfx}"],
                                    npsd[f"{mod}.weight_hh_l{sfx}"], b, layout="PyTorch",
                                    **lbr)
        _check_bytes(tmp_path / "out", entry, want)
    # the two stacked bidirectional layers, run from the files, equal torch
    x = np.random.default_rng(4).standard_normal((6, 2, 3)).astype(np.float32)
    with torch.no_grad():
        want_y = lstm(torch.from_numpy(x))[0].numpy()
    entries = {e["name"]: e for e in doc["layers"]}
    y = x
    for k in (0, 1):
        f, r = entries[f"enc.l{k}"], entries[f"enc.l{k}_reverse"]
        y = np.concatenate([run_exported(e, _files(tmp_path / "out", e), y) for e in (f, r)],
                           axis=-1)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    assert entries["dec.l0"]["recurrent"]["exact"] is False


@pytest.mark.parametrize("bug", [None, "swap_gates", "other_weights"])
def test_state_dict_export_verifies_against_the_onnx_export(tmp_path: Path, bug: Any,
                                                            monkeypatch: Any) -> None:
    """The same network saved as a state_dict and exported to ONNX: verify matches each
    state_dict direction to its ONNX node by the values of its input weights (names differ)
    and compares it with ONNX Runtime; a planted gate swap still fails."""
    st = pytest.importorskip("safetensors.torch")
    from mpslayout.verify import verify

    torch.manual_seed(6)
    net = _Net().eval()
    _torch_onnx(net, torch.randn(6, 2, 3), tmp_path / "m.onnx")
    st.save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                 str(tmp_path / "m.safetensors"))
    if bug == "swap_gates":
        monkeypatch.setitem(rnn.LSTM_ORDER, "PyTorch", "fico")
    if bug == "other_weights":  # a state_dict of another training run
        torch.manual_seed(7)
        st.save_file({k: v.contiguous() for k, v in _Net().state_dict().items()},
                     str(tmp_path / "m.safetensors"))
    export(tmp_path / "m.safetensors", tmp_path / "out", progress=False)
    report = verify(tmp_path / "out", tmp_path / "m.onnx", allow_inexact=True)
    rows = {r.name: r for r in report.rows}
    assert set(rows) == {"lstm.l0", "lstm.l0_reverse", "gru.l0"}
    if bug == "other_weights":
        assert all("no LSTM node" in (r.error or "") for r in rows.values() if "lstm" in r.name)
        assert not report.ok
        return
    assert all(r.error is None for r in rows.values())
    if bug:
        assert not rows["lstm.l0"].ok
        assert not report.ok
    else:
        assert rows["lstm.l0"].ok
        assert rows["lstm.l0_reverse"].ok
        assert rows["gru.l0"].files_ok  # PyTorch's GRU: files right, cell not MPS's
        assert report.ok


@pytest.mark.parametrize("bug", [None, "swap_gates"])
def test_state_dict_cells_are_recurrent_layers(tmp_path: Path, bug: Any,
                                               monkeypatch: Any) -> None:
    """nn.LSTMCell / GRUCell / RNNCell (weight_ih, weight_hh, bias_ih, bias_hh, no _l0) are
    one forward recurrent layer each: the bytes equal the documented loops, and the LSTM and
    RNN cells run from the files over T steps equal the torch cell called T times. A
    planted gate swap fails that comparison."""
    torch.manual_seed(8)
    cells = {"lstm_cell": torch.nn.LSTMCell(3, 5), "gru_cell": torch.nn.GRUCell(3, 4),
             "rnn_cell": torch.nn.RNNCell(3, 6), "dec.cell": torch.nn.LSTMCell(5, 2,
                                                                                  bias=False)}
    sd = {f"{m}.{k}": v for m, c in cells.items() for k, v in c.state_dict().items()}
    torch.save(sd, str(tmp_path / "m.pt"))
    if bug == "swap_gates":
        monkeypatch.setitem(rnn.LSTM_ORDER, "PyTorch", "fico")
    doc = export(tmp_path / "m.pt", tmp_path / "out", progress=False, strict=True)
    _validate(doc)
    entries = {e["name"]: e for e in doc["layers"]}
    assert {n: e["kind"] for n, e in entries.items()} == {
        "lstm_cell": "lstm", "gru_cell": "gru", "rnn_cell": "rnn", "dec.cell": "lstm"}
    assert not doc["skipped"]
    assert all(e["recurrent"]["layerSequenceDirection"] == "forward"
               and e["recurrent"]["bidirectional"] is None for e in entries.values())
    npsd = {k: v.numpy() for k, v in sd.items()}
    x = np.random.default_rng(9).standard_normal((4, 2, 3)).astype(np.float32)
    for name, cell in cells.items():
        e = entries[name]
        if "bias_ih" in cell.state_dict():
            b = np.stack([npsd[f"{name}.bias_ih"], npsd[f"{name}.bias_hh"]])
        else:
            b = None
        if bug is None:
            lbr = {"linear_before_reset": True} if e["kind"] == "gru" else {}
            want = TWINS[e["kind"]](npsd[f"{name}.weight_ih"], npsd[f"{name}.weight_hh"], b,
                                    layout="PyTorch", **lbr)
            _check_bytes(tmp_path / "out", e, want)
        if e["kind"] == "gru":  # PyTorch's GRU cell is not MPS's: files only
            assert e["recurrent"]["exact"] is False
            continue
        xs = x if e["recurrent"]["input_size"] == 3 else np.random.default_rng(1) \
            .standard_normal((4, 2, 5)).astype(np.float32)
        h = torch.zeros(2, cell.hidden_size)
        state: Any = (h, torch.zeros(2, cell.hidden_size)) if e["kind"] == "lstm" else h
        ys = []
        with torch.no_grad():
            for t in range(xs.shape[0]):
                state = cell(torch.from_numpy(xs[t]), state)
                ys.append((state[0] if e["kind"] == "lstm" else state).numpy())
        got = run_exported(e, _files(tmp_path / "out", e), xs)
        if bug and e["kind"] == "lstm":
            assert not np.allclose(got, np.stack(ys), rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_allclose(got, np.stack(ys), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ Keras


def _keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_bidirectional_lstm_and_gru_against_keras(tmp_path: Path, suffix: str) -> None:
    keras = _keras()
    pytest.importorskip("h5py")
    x = np.random.default_rng(5).standard_normal((2, 6, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((6, 3)),
            keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True)),
            keras.layers.GRU(4, return_sequences=True, reset_after=False),
        ])
        for v in model.weights:  # biases that are not 0/1
            if "bias" in v.path:
                v.assign(np.linspace(-1, 1, int(np.prod(v.shape)), dtype=np.float32)
                         .reshape(v.shape))
        mid = keras.ops.convert_to_numpy(model.layers[0](x))
        want = keras.ops.convert_to_numpy(model(x))
        model.save(str(tmp_path / f"m{suffix}"))
    doc = export(tmp_path / f"m{suffix}", tmp_path / "out", progress=False)
    _validate(doc)
    fwd, bwd, gru = doc["layers"]
    assert (fwd["kind"], bwd["kind"], gru["kind"]) == ("lstm", "lstm", "gru")
    assert gru["recurrent"]["exact"] is True
    out = tmp_path / "out"
    xt = x.transpose(1, 0, 2)
    y = np.concatenate([run_exported(e, _files(out, e), xt) for e in (fwd, bwd)], axis=-1)
    np.testing.assert_allclose(y, mid.transpose(1, 0, 2), rtol=1e-5, atol=1e-5)
    z = run_exported(gru, _files(out, gru), y)
    np.testing.assert_allclose(z, want.transpose(1, 0, 2), rtol=1e-5, atol=1e-5)


def test_cli_summary_names_the_inexact_cell(pytorch_onnx: Any, tmp_path: Path,
                                            capsys: Any) -> None:
    from mpslayout.cli import main

    assert main(["export", str(pytorch_onnx[0]), "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "not exact on MPS: /gru/GRU: linear_before_reset=1" in out
    assert "not exact on MPS: /lstm" not in out


def test_corpus_crnn_tail_verifies(tmp_path: Path) -> None:
    """The shared corpus' CRNN tail (bidirectional LSTM as torch exports it, then a
    classifier): both directions export and agree with ONNX Runtime."""
    import corpus

    from mpslayout.verify import verify

    onnx.save(corpus.build("lstm").model, str(tmp_path / "crnn.onnx"))
    doc = export(tmp_path / "crnn.onnx", tmp_path / "out", progress=False)
    assert [e["name"] for e in _recurrent(doc)] == ["lstm.forward", "lstm.backward"]
    rows = {r.name: r for r in verify(tmp_path / "out", tmp_path / "crnn.onnx").rows}
    assert rows["lstm.forward"].ok
    assert rows["lstm.backward"].ok


@pytest.mark.parametrize(("op", "change", "reason"), [
    ("GRU", {"hidden_size": 5}, "do not describe"),
    ("GRU", {"direction": "sideways"}, "direction"),
    ("GRU", {"activations": ["Sigmoid"]}, "activations"),
    ("GRU", {"W": np.zeros((1, 9, 3), np.int8)}, "not floating point"),
    ("GRU", {"B": np.zeros((1, 7), np.float32)}, "B has shape"),
    ("GRU", {"W": np.zeros((9, 3), np.float32)}, "3-D"),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Nope"]}, "no neuron"),
])
def test_malformed_recurrent_nodes_are_listed_not_crashed(tmp_path: Path, op: str,
                                                          change: dict[str, Any],
                                                          reason: str) -> None:
    """A node the exporter cannot read is listed with the reason (or, for an activation MPS
    lacks, exported with a note); the rest of the model still exports."""
    from onnx import TensorProto, helper, numpy_helper

    g, h = (3, 3) if op == "GRU" else (4, 3)
    ins = {"W": np.zeros((1, g * h, 3), np.float32), "R": np.zeros((1, g * h, h), np.float32),
           "B": np.zeros((1, 2 * g * h), np.float32)}
    attrs: dict[str, Any] = {"hidden_size": h}
    for k, v in change.items():
        (ins if k in ins else attrs)[k] = v
    nodes = [helper.make_node(op, ["X", "W", "R", "B"], ["Y"], name="cell", **attrs),
             helper.make_node("Conv", ["c_in", "cw"], ["c_out"], name="conv")]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 1, 3]),
                       helper.make_tensor_value_info("c_in", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("c_out", TensorProto.FLOAT, None)],
        [*(numpy_helper.from_array(v, k) for k, v in ins.items()),
         numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "cw")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    doc = export(tmp_path / "m.onnx", tmp_path / "out", progress=False)
    assert "conv" in [e["name"] for e in doc["layers"]]
    listed = [x["reason"] for x in doc["skipped"] + doc["unsupported"]]
    notes = [n for e in doc["layers"] for n in e["notes"]]
    assert any(reason in r for r in listed + notes), (listed, notes)


def _set(path: list[str], value: Any) -> Any:
    def change(entry: dict[str, Any]) -> None:
        target = entry
        for key in path[:-1]:
            target = target[key]
        if value is _DROP:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


_DROP = object()


@pytest.mark.parametrize(("change", "reason"), [
    (_set(["recurrent"], _DROP), "no 'recurrent' object"),
    (_set(["recurrent", "neurons"], _DROP), "recurrent.neurons"),
    (_set(["recurrent", "neurons", "inputGate"], {"type": "Bogus"}), "a neuron must be"),
    (_set(["recurrent", "hidden_size"], "5"), "hidden_size must be a positive integer"),
    (_set(["recurrent", "hidden_size"], 7), "files cannot run as this cell"),
    (_set(["recurrent", "cell"], "lstm"), "is not the layer's kind"),
    (_set(["recurrent", "layerSequenceDirection"], 1), "'forward' or 'backward'"),
    (_set(["recurrent", "layer"], "MPSRNNImageInferenceLayer"), "files cannot run"),
])
def test_hand_broken_recurrent_manifest_is_named_not_crashed(
        tmp_path: Path, change: Any, reason: str) -> None:
    """A manifest edited by hand (or cut short) fails verify on that layer's row with what is
    wrong, instead of a KeyError from the reference."""
    import shutil

    from mpslayout.verify import verify

    path = _gru_rnn_graph(tmp_path)
    export(path, tmp_path / "out", progress=False)
    shutil.copytree(tmp_path / "out", tmp_path / "bad")
    doc = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    change(doc["layers"][0])
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps(doc))
    report = verify(tmp_path / "bad", path)
    assert not report.ok
    first = report.rows[0]
    assert first.name == "gru.forward"
    assert reason in (first.error or ""), report.table()
    assert report.rows[1].ok  # the other direction is still judged
