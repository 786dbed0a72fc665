"""Keras recurrent layers through ``verify --model MODEL.keras|.h5`` (Keras as the oracle):
the ONNX translation of LSTM / GRU / SimpleRNN / Bidirectional computes what Keras computes
(ONNX Runtime against Keras, every tensor), every exported direction of a correct export
is compared and passes, the inexact GRU(reset_after=True) fails with the manifest's
reason, and planted bugs in the gate files (two gates swapped, a bias off by 1, the two
directions exchanged) fail at the layer that has them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("h5py")

from mpslayout.cli import main  # noqa: E402
from mpslayout.export import export  # noqa: E402
from mpslayout.keras_onnx import keras_as_onnx  # noqa: E402
from mpslayout.verify.keras_oracle import keras_values, verify_keras  # noqa: E402

L = keras.layers


def _biased(model: Any) -> Any:
    """Biases that are not Keras' zeros / ones, so that a misplaced bias shows."""
    for v in model.weights:
        if "bias" in v.path:
            n = int(np.prod(v.shape))
            v.assign(np.linspace(-1, 1, n, dtype=np.float32).reshape(v.shape))
    return model


def _seq(*layers: Any, shape: tuple[int, ...] = (6, 3)) -> Any:
    keras.utils.set_random_seed(1)
    return _biased(keras.Sequential([keras.Input(shape, name="seq"), *layers]))


def _mixed() -> Any:
    return _seq(L.Bidirectional(L.LSTM(5, return_sequences=True), name="bi"),
                L.GRU(4, return_sequences=True, reset_after=False, name="gru"),
                L.SimpleRNN(3, name="rnn"), L.Dense(2, name="fc"))


def _crnn() -> Any:
    """Conv2D -> pooling -> Permute + Reshape to a (width, features) sequence ->
    Bidirectional(LSTM) -> Dense, as CRNN text recognizers end."""
    keras.utils.set_random_seed(2)
    img = keras.Input((4, 6, 1), name="img")
    x = L.Conv2D(2, 3, padding="same", activation="relu", name="conv")(img)
    x = L.MaxPooling2D(2, name="pool")(x)  # (2, 3, 2)
    x = L.Permute((2, 1, 3), name="perm")(x)  # (3, 2, 2): width first
    x = L.Reshape((3, 4), name="toseq")(x)
    x = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bilstm")(x)
    return _biased(keras.Model(img, L.Dense(3, name="fc")(x)))


MODELS = {
    "mixed": _mixed,
    "crnn": _crnn,
    "gru_reset_after": lambda: _seq(L.GRU(4, return_sequences=True, name="gru")),
    "bi_sum_last": lambda: _seq(L.Bidirectional(L.LSTM(4), merge_mode="sum", name="bi")),
    "bi_ave_seq": lambda: _seq(L.Bidirectional(L.GRU(3, return_sequences=True),
                                               merge_mode="ave", name="bi")),
    "bi_mul_seq": lambda: _seq(L.Bidirectional(L.SimpleRNN(3, return_sequences=True),
                                               merge_mode="mul", name="bi")),
    "bi_concat_last": lambda: _seq(L.Bidirectional(L.SimpleRNN(4, activation="relu"),
                                                   name="bi")),
    "go_backwards": lambda: _seq(
        L.LSTM(4, return_sequences=True, go_backwards=True, name="lb"),
        L.SimpleRNN(3, go_backwards=True, name="rb")),
    "activations": lambda: _seq(
        L.LSTM(4, return_sequences=True, recurrent_activation="hard_sigmoid",
               activation="linear", name="l"),
        L.GRU(3, return_sequences=True, activation="softsign",
              recurrent_activation="hard_sigmoid", reset_after=False, name="g"),
        L.SimpleRNN(3, return_sequences=True, activation="elu", name="e"),
        L.SimpleRNN(2, activation="softplus", name="s")),
    "no_bias": lambda: _seq(L.LSTM(4, use_bias=False, return_sequences=True, name="l"),
                            L.GRU(3, use_bias=False, name="g")),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: Any) -> Any:
    """name -> (model, {"keras": path, "h5": path}), each built and saved once."""
    root = tmp_path_factory.mktemp("keras_rnn")
    cache: dict[str, Any] = {}

    def get(name: str) -> tuple[Any, dict[str, Path]]:
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = MODELS[name]()
                paths = {"keras": root / f"{name}.keras", "h5": root / f"{name}.h5"}
                for p in paths.values():
                    model.save(str(p))
            cache[name] = (model, paths)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def exported(saved: Any, tmp_path_factory: Any) -> Any:
    """(name, format, dtype) -> (export folder, model file), each exported once."""
    cache: dict[tuple[str, str, str], Any] = {}

    def get(name: str, fmt: str = "keras", dtype: str = "float32") -> tuple[Path, Path]:
        key = (name, fmt, dtype)
        if key not in cache:
            path = saved(name)[1][fmt]
            out = tmp_path_factory.mktemp(f"{name}_{fmt}_{dtype}") / "out"
            export(path, out, dtype=dtype, progress=False)
            cache[key] = (out, path)
        return cache[key]

    return get


def _input(model: Any, seed: int = 0) -> np.ndarray:
    shape = [2, *model.inputs[0].shape[1:]]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- the translation


@pytest.mark.parametrize("name", list(MODELS))
def test_translation_computes_what_keras_computes(saved: Any, name: str) -> None:
    """ONNX Runtime on the translation against Keras: the model's output (Keras' own
    call), every Keras tensor, and each recurrent node's Y (Keras rerunning each
    direction with return_sequences=True)."""
    model, _ = saved(name)
    tr = keras_as_onnx(model)
    assert tr.untranslated == []
    assert tr.recurrent, "no recurrent node in the translation"
    onnx.checker.check_model(tr.model)
    x = _input(model)
    values = keras_values(keras, model, tr, x)
    names = [n for n in values if n not in tr.inputs]
    assert set(tr.recurrent) <= set(names)
    m = onnx.ModelProto()
    m.CopyFrom(tr.model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(names, sess.run(names, {tr.inputs[0]: tr.to_graph(tr.inputs[0], x)})))
    for n in names:
        w = values[n]
        assert got[n].shape == w.shape, n
        assert np.max(np.abs(got[n] - w)) <= 1e-5 * max(1.0, np.max(np.abs(w))), n
    want = keras.ops.convert_to_numpy(model(x, training=False))
    out = tr.model.graph.output[0].name
    np.testing.assert_allclose(tr.to_graph(out, want), got[out], rtol=1e-5, atol=1e-5)


def _translate_one(*layers: Any, shape: tuple[int, ...] = (6, 3)) -> list[str]:
    inp = keras.Input(shape)
    x = inp
    for layer in layers:
        x = layer(x)
    tr = keras_as_onnx(keras.Model(inp, x if not isinstance(x, (list, tuple)) else x[0]))
    return [u["reason"] for u in tr.untranslated]


def test_untranslatable_configurations_say_why() -> None:
    reasons = _translate_one(L.LSTM(3, return_state=True))
    assert "return_state=True" in reasons[0]
    reasons = _translate_one(L.Masking(), L.GRU(3))
    assert any("mask" in r for r in reasons)
    reasons = _translate_one(L.SimpleRNN(3, activation="selu"))
    assert "'selu'" in reasons[0]
    inp = keras.Input((6, 3), batch_size=1)
    tr = keras_as_onnx(keras.Model(inp, L.LSTM(3, stateful=True)(inp)))
    assert "stateful=True" in tr.untranslated[0]["reason"]
    inp = keras.Input((6, 3))
    y = L.Bidirectional(L.LSTM(3), merge_mode=None)(inp)
    tr = keras_as_onnx(keras.Model(inp, L.Add()(y)))
    assert "merge_mode=None" in tr.untranslated[0]["reason"]


# ---------------------------------------------------------------- verify


def _rows(report: Any) -> dict[str, Any]:
    return {r.name: r for r in report.rows}


RECURRENT = ["bi.forward", "bi.backward", "gru", "rnn"]


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_cli_verify_passes_every_direction(exported: Any, fmt: str, capsys: Any) -> None:
    outdir, path = exported("mixed", fmt)
    assert main(["verify", str(outdir), "--model", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["rows"]}
    for name in [*RECURRENT, "fc"]:
        assert rows[name]["ok"], name
        assert rows[name]["isolated"] is not None, name
    assert doc["layers_checked"] == 5
    assert not [x for x in doc["not_verified"] if x["op"] in ("LSTM", "GRU", "RNN")]


def test_float16_export_verifies(exported: Any) -> None:
    """float16 gate weights: the judge is ONNX Runtime running the translated node with
    its weights rounded to float16."""
    outdir, path = exported("mixed", "keras", "float16")
    report = verify_keras(outdir, path)
    assert report.ok, report.table()
    assert all(_rows(report)[n].isolated is not None for n in RECURRENT)


def test_crnn_verifies(exported: Any) -> None:
    outdir, path = exported("crnn")
    report = verify_keras(outdir, path)
    assert report.ok, report.table()
    assert {"conv", "fc", "bilstm.forward", "bilstm.backward"} <= {
        r.name for r in report.rows if r.isolated is not None}
    assert not [x for x in report.not_verified if "no ONNX translation" in x["reason"]]


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_inexact_gru_fails_with_the_manifests_reason(exported: Any, fmt: str,
                                                     capsys: Any) -> None:
    outdir, path = exported("gru_reset_after", fmt)
    assert main(["verify", str(outdir), "--model", str(path)]) == 1
    out = capsys.readouterr().out
    failed = next(x for x in out.splitlines() if x.startswith("FAILED"))
    for what in ("'gru'", "not exact", "reset_after=True"):
        assert what in failed
    row = _rows(verify_keras(outdir, path))["gru"]
    assert not row.ok
    assert row.error is None  # compared and failed, not an error
    assert row.isolated is not None
    assert row.files is not None  # the files run with Keras' own cell: they hold its weights
    assert row.files.ok


def _plant(src: Path, dst: Path, fn: Any) -> Path:
    """A copy of export ``src`` whose files ``fn(files)`` rewrote; ``files`` maps
    (layer, property) to the array, and the manifest's checksums follow."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    arrays, infos = {}, {}
    for e in doc["layers"]:
        for prop, info in e["files"].items():
            a = np.fromfile(dst / info["file"], dtype=np.dtype(info["dtype"]))
            arrays[e["name"], prop] = a.reshape(info["shape"])
            infos[e["name"], prop] = info
    new = fn(dict(arrays))
    assert any(not np.array_equal(new[k], arrays[k]) for k in arrays)
    for k, a in new.items():
        b = np.ascontiguousarray(a, dtype=arrays[k].dtype)
        (dst / infos[k]["file"]).write_bytes(b.tobytes())
        infos[k]["sha256"] = hashlib.sha256(b.tobytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


def _swap_gates(f: dict[Any, np.ndarray]) -> dict[Any, np.ndarray]:
    a, b = ("bi.forward", "forgetGateInputWeights"), ("bi.forward", "cellGateInputWeights")
    f[a], f[b] = f[b], f[a]
    return f


def _bias_plus_one(f: dict[Any, np.ndarray]) -> dict[Any, np.ndarray]:
    k = ("bi.forward", "outputGateInputWeights.bias")
    f[k] = f[k] + 1
    return f


def _swap_directions(f: dict[Any, np.ndarray]) -> dict[Any, np.ndarray]:
    for (layer, prop) in [k for k in f if k[0] == "bi.forward"]:
        f[layer, prop], f["bi.backward", prop] = f["bi.backward", prop], f[layer, prop]
    return f


BUGS = [(_swap_gates, ["bi.forward"]), (_bias_plus_one, ["bi.forward"]),
        (_swap_directions, ["bi.forward", "bi.backward"])]


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize(("bug", "bad"), BUGS, ids=[b.__name__.strip("_") for b, _ in BUGS])
def test_planted_bug_fails_and_names_the_layer(exported: Any, tmp_path: Path, fmt: str,
                                               bug: Any, bad: list[str]) -> None:
    outdir, path = exported("mixed", fmt)
    report = verify_keras(_plant(outdir, tmp_path / "bad", bug), path)
    rows = _rows(report)
    assert not report.ok
    assert report.first_divergence.name == bad[0], report.table()
    for name in RECURRENT:
        assert rows[name].ok == (name not in bad), name
        assert rows[name].error is None  # a numeric failure, not a crash


def test_translation_bug_is_not_blamed_on_the_export(exported: Any, monkeypatch: Any
                                                     ) -> None:
    """A wrong gate order in the translator itself is named as the translator's bug."""
    from mpslayout.keras_onnx import recurrent

    outdir, path = exported("mixed")
    monkeypatch.setattr(recurrent, "LSTM_BLOCKS", (0, 1, 2, 3))
    rows = _rows(verify_keras(outdir, path))
    for name in ("bi.forward", "bi.backward"):
        assert "mpslayout.keras_onnx, not of the export" in (rows[name].error or ""), name
    assert rows["gru"].ok
    assert rows["rnn"].ok


def test_untranslated_recurrent_layer_is_named(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 3), name="seq")
    y, h, _ = L.LSTM(3, return_state=True, name="lstm")(inp)
    keras.Model(inp, L.Add(name="add")([y, h])).save(str(tmp_path / "m.keras"))
    export(tmp_path / "m.keras", tmp_path / "out", progress=False)
    row = _rows(verify_keras(tmp_path / "out", tmp_path / "m.keras"))["lstm"]
    assert "no ONNX translation" in row.error
    assert "return_state=True" in row.error
