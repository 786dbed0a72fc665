"""export --target mlx of Keras files (.keras and legacy .h5), verified by MLX's own kernels
against Keras itself: the corpus models and a recurrent one pass, a planted layout bug
fails on its layer; and Keras' own keras.json (which Keras writes with "tensorflow" on first
import) does not stop verify from using an installed backend."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from keras_corpus import CORPUS, keras, saved

pytest.importorskip("h5py")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("mlx.core")

from mpslayout.export import export
from mpslayout.mlx import files
from mpslayout.verify.mlx_target import verify_mlx


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_mlx")


@pytest.fixture(scope="module")
def recurrent_model(folder):
    L = keras.layers
    keras.utils.set_random_seed(5)
    m = keras.Sequential([
        keras.Input((6, 6, 3)),
        L.Conv2D(4, 3, padding="same", name="c1"),
        L.Flatten(),
        L.Dense(12, name="d"),
        L.Reshape((4, 3)),
        L.Bidirectional(L.LSTM(5, return_sequences=True), name="bi"),
        L.GRU(3, return_sequences=True, name="gru"),
    ])
    path = folder / "rnn.keras"
    m.save(path)
    return path


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("name", CORPUS[:2])
def test_corpus_exports_and_verifies(folder, name, fmt):
    model = saved(name, folder)[1][fmt]
    out = folder / f"{name}.{fmt}.safetensors"
    export(model, out, target="mlx", progress=False, force=True)
    report = verify_mlx(out, model)
    assert report.ok, report.table()
    assert report.layers_checked >= 5


def test_recurrent_keras_model(folder, recurrent_model):
    out = folder / "rnn.safetensors"
    export(recurrent_model, out, target="mlx", progress=False, force=True)
    names = set(files.load(out))
    assert {"bi.Wx", "bi.reverse.Wx", "gru.b", "gru.bhn"} <= names or \
        any(n.endswith(".reverse.Wx") for n in names), sorted(names)
    report = verify_mlx(out, recurrent_model)
    assert report.ok, report.table()
    assert sum(r.kind in ("lstm", "gru") for r in report.rows) == 3


def test_planted_dense_bug_fails_on_its_layer(folder, tmp_path):
    model = saved("seed003", folder)[1]["keras"]
    out = folder / "seed003.planted.safetensors"
    export(model, out, target="mlx", progress=False, force=True)
    w = files.load(out)
    rec = next(x for x in w.facts["layers"] if x["name"] == "fc")
    arrays = {k: np.array(v) for k, v in w.items()}
    k = rec["tensors"]["weight"]
    o, n = arrays[k].shape
    h, ww, c = 2, 2, n // 4  # seed003's flatten reads a 2x2 image (9 -> 5 -> 5 -> 3 -> ...)
    if h * ww * c == n:  # the HWC columns read as CHW: the bug a Keras -> MLX port avoids
        arrays[k] = np.ascontiguousarray(
            arrays[k].reshape(o, h, ww, c).transpose(0, 3, 1, 2).reshape(o, n))
    else:
        arrays[k] = np.ascontiguousarray(arrays[k][:, ::-1])
    bad = tmp_path / "bad.safetensors"
    files.save(bad, arrays, w.facts, tensors=w.tensors)
    report = verify_mlx(bad, model)
    assert not report.ok
    assert report.first_divergence.name == "fc"


def test_keras_json_written_by_keras_does_not_block_verify(tmp_path):
    """Keras writes ~/.keras/keras.json with "tensorflow" on its first import; without
    TensorFlow, verify must still pick an installed backend."""
    pytest.importorskip("torch")
    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed: keras.json's backend is usable")
    except ImportError:
        pass
    (tmp_path / "keras.json").write_text('{"backend": "tensorflow"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)
    code = ("from mpslayout.verify.keras_oracle import import_keras; "
            "print(import_keras().backend.backend())")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("torch", "jax")


def test_keras_conv1d_layers_are_checked(folder, tmp_path):
    """A Keras Conv1D / SeparableConv1D: the translation holds (N, C, L) between Transposes
    and Keras gives only the (N, L, C) side; every convolution is still run and checked."""
    L = keras.layers
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((16, 3)), L.Conv1D(5, 3, padding="same", name="c1"),
                          L.SeparableConv1D(4, 3, name="sep")])
    path = folder / "conv1d.keras"
    m.save(path)
    out = tmp_path / "c1.safetensors"
    export(path, out, target="mlx", progress=False)
    report = verify_mlx(out, path)
    assert report.ok, report.table()
    assert {r.name for r in report.rows} == {"c1", "sep/depthwise", "sep"}
    w = files.load(out)
    rec = next(x for x in w.facts["layers"] if x["name"] == "c1")
    arrays = {k: np.array(v) for k, v in w.items()}
    arrays[rec["tensors"]["weight"]] = np.ascontiguousarray(
        arrays[rec["tensors"]["weight"]][:, ::-1])  # the kernel reversed along the sequence
    bad = tmp_path / "bad.safetensors"
    files.save(bad, arrays, w.facts, tensors=w.tensors)
    assert verify_mlx(bad, path).first_divergence.name == "c1"


def test_keras_dense_after_a_flattened_conv1d(folder, tmp_path):
    """Conv1D -> Flatten -> Dense: the Dense reads the (N, L, C) sequence flattened, as the
    1 x L image MPS holds it (columns L-major, C-minor, Keras' own order); it exports for
    both targets and verifies, and columns taken in C-major order fail on the Dense."""
    from mpslayout.verify.keras_oracle import verify_keras

    L = keras.layers
    keras.utils.set_random_seed(2)
    m = keras.Sequential([keras.Input((16, 3)), L.Conv1D(5, 3, padding="same", name="c1"),
                          L.Flatten(), L.Dense(6, name="d")])
    path = folder / "conv1d_dense.keras"
    m.save(path)
    doc = export(path, tmp_path / "mps", progress=False)
    assert [x["name"] for x in doc["layers"]] == ["c1", "d"]
    assert verify_keras(tmp_path / "mps", path).ok
    out = tmp_path / "c2.safetensors"
    export(path, out, target="mlx", progress=False)
    assert verify_mlx(out, path).ok
    w = files.load(out)
    arrays = {k: np.array(v) for k, v in w.items()}
    k = "d.weight"
    arrays[k] = np.ascontiguousarray(arrays[k].reshape(6, 16, 5).transpose(0, 2, 1)
                                     .reshape(6, 80))
    bad = tmp_path / "bad.safetensors"
    files.save(bad, arrays, w.facts, tensors=w.tensors)
    assert verify_mlx(bad, path).first_divergence.name == "d"
