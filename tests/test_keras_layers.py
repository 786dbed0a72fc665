"""Keras layers beyond Conv2D, in files saved by Keras itself (.keras and legacy .h5) and in
a Keras 2-style .h5 written with h5py (model_config attribute, model_weights group):

- a 1x1 'same' convolution of stride 2 is exported whatever the input size (a 1-pixel
  kernel never pads); a 3x3 'same' stride-2 one needs the size: listed without it,
  exported with ``input_dims`` (accepted for Keras files, checked against the model);
- SeparableConv2D/1D are two MPS layers, ``NAME/depthwise`` then the pointwise ``NAME``,
  whose bytes equal the formulas written here by index, and verify checks each against
  Keras (the depthwise half through Keras' own depthwise_conv);
- Conv1D (same, valid stride 2, causal dilated) is a convolution of kernel height 1,
  (O, 1, K, I), verified against Keras;
- planted bugs (a rotated depthwise kernel, reversed pointwise input channels, a reversed
  Conv1D kernel) fail verify, naming the layer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from keras_corpus import keras

h5py = pytest.importorskip("h5py")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mpslayout import cli  # noqa: E402
from mpslayout.export import export  # noqa: E402

L = keras.layers
DIMS = {"img": (1, 16, 16, 3)}


def _image_model() -> Any:
    keras.utils.set_random_seed(11)
    x0 = keras.Input((None, None, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x0)
    x = L.Conv2D(16, 1, strides=2, padding="same", name="proj")(x)
    x = L.SeparableConv2D(8, 3, padding="same", activation="relu", depth_multiplier=2,
                          name="sep")(x)
    x = L.SeparableConv2D(8, 3, strides=2, padding="valid", name="sep2")(x)
    x = L.Conv2D(4, 3, strides=2, padding="same", name="down")(x)
    return keras.Model(x0, x)


def _sequence_model() -> Any:
    keras.utils.set_random_seed(12)
    s = keras.Input((20, 5), name="seq")
    y = L.Conv1D(8, 3, padding="same", activation="relu", name="k1")(s)
    y = L.Conv1D(6, 5, strides=2, padding="valid", name="k2")(y)
    y = L.Conv1D(6, 3, padding="causal", dilation_rate=2, name="k3")(y)
    y = L.SeparableConv1D(4, 3, padding="same", name="sep1d")(y)
    return keras.Model(s, y)


def _randomize(model: Any) -> Any:
    """Biases are zeros at init: give every variable values, so a bias bug shows."""
    rng = np.random.default_rng(13)
    for v in model.weights:
        v.assign(rng.uniform(-0.5, 0.5, v.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: Any) -> dict[tuple[str, str], Path]:
    tmp = tmp_path_factory.mktemp("keras_layers")
    out = {}
    for name, build in (("image", _image_model), ("sequence", _sequence_model)):
        m = _randomize(build())
        for fmt in ("keras", "h5"):
            path = tmp / f"{name}.{fmt}"
            m.save(str(path))
            out[name, fmt] = path
    return out


def _verify(outdir: Path, path: Path, **kw: Any) -> Any:
    from mpslayout.verify.keras_oracle import verify_keras

    return verify_keras(outdir, path, **kw)


def _weights(out: Path, doc: dict[str, Any], name: str) -> np.ndarray:
    f = next(e for e in doc["layers"] if e["name"] == name)["files"]["weights"]
    return np.fromfile(out / f["file"], dtype=f["dtype"]).reshape(f["shape"])


def _kernel(model: Any, layer: str, role: str) -> np.ndarray:
    return next(np.asarray(v.numpy()) for v in model.get_layer(layer).weights
                if v.path.endswith(role))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_separable_and_strided_1x1(saved: Any, tmp_path: Path, fmt: str) -> None:
    path = saved["image", fmt]
    doc = export(path, tmp_path / "a", progress=False)
    names = [e["name"] for e in doc["layers"]]
    # the 1x1 stride-2 'same' one never pads; the 3x3 stride-2 one needs the size
    assert "proj" in names
    assert "down" not in names
    (down,) = [e for e in doc["skipped"] if e["name"] == "down"]
    assert "--input-dims" in down["reason"]
    proj = next(e for e in doc["layers"] if e["name"] == "proj")
    assert proj["padding"] == {"top": 0, "left": 0, "bottom": 0, "right": 0}
    doc = export(path, tmp_path / "b", progress=False, input_dims=DIMS, strict=True)
    kinds = {e["name"]: e["kind"] for e in doc["layers"]}
    assert kinds == {"c1": "convolution", "proj": "convolution",
                     "sep/depthwise": "convolution", "sep": "convolution",
                     "sep2/depthwise": "depthwise", "sep2": "convolution",
                     "down": "convolution"}
    assert doc["options"]["input_dims"] == {"img": [1, 16, 16, 3]}
    assert doc["inputs"]["img"] == [1, 16, 16, 3]
    # the bytes, by index from Keras' own variables
    model = keras.models.load_model(str(path), compile=False)
    dk = _kernel(model, "sep2", "depthwise_kernel")  # (3, 3, 8, 1)
    want = np.zeros((8, 3, 3), np.float32)
    for c in range(8):
        for y in range(3):
            for x in range(3):
                want[c, y, x] = dk[y, x, c, 0]
    np.testing.assert_array_equal(_weights(tmp_path / "b", doc, "sep2/depthwise"), want)
    pk = _kernel(model, "sep", "pointwise_kernel")  # (1, 1, 32, 8)
    want = np.zeros((8, 1, 1, 32), np.float32)
    for o in range(8):
        for i in range(32):
            want[o, 0, 0, i] = pk[0, 0, i, o]
    np.testing.assert_array_equal(_weights(tmp_path / "b", doc, "sep"), want)
    sep = next(e for e in doc["layers"] if e["name"] == "sep")
    assert sep["files"]["bias"]
    assert "bias" not in next(e for e in doc["layers"]
                              if e["name"] == "sep/depthwise")["files"]
    report = _verify(tmp_path / "b", path, input_dims=DIMS)
    assert report.ok, report.table()
    rows = {r.name: r for r in report.rows}
    for name in ("sep/depthwise", "sep", "sep2/depthwise", "sep2"):
        assert rows[name].isolated is not None, name  # each half against Keras itself
        assert rows[name].isolated.ok


def test_keras_input_dims_are_checked(saved: Any, tmp_path: Path) -> None:
    path = saved["image", "keras"]
    with pytest.raises(ValueError, match="not an input of the model"):
        export(path, tmp_path / "a", progress=False, input_dims={"x": (1, 8, 8, 3)})
    with pytest.raises(ValueError, match="rank 4"):
        export(path, tmp_path / "b", progress=False, input_dims={"img": (1, 8, 8)})
    with pytest.raises(ValueError, match="fixes it to 3"):
        export(path, tmp_path / "c", progress=False, input_dims={"img": (1, 8, 8, 4)})
    assert cli.main(["export", str(path), "-o", str(tmp_path / "d"), "-q",
                     "--input-dims", "img=1,16,16,3"]) == 0


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_conv1d(saved: Any, tmp_path: Path, fmt: str) -> None:
    path = saved["sequence", fmt]
    doc = export(path, tmp_path / "out", progress=False, strict=True)
    kinds = {e["name"]: e["kind"] for e in doc["layers"]}
    assert kinds == {"k1": "convolution", "k2": "convolution", "k3": "convolution",
                     "sep1d/depthwise": "depthwise", "sep1d": "convolution"}
    k3 = next(e for e in doc["layers"] if e["name"] == "k3")
    assert k3["padding"] == {"top": 0, "left": 4, "bottom": 0, "right": 0}  # causal
    assert k3["dilations"] == {"x": 2, "y": 1}
    model = keras.models.load_model(str(path), compile=False)
    kern = _kernel(model, "k2", "kernel")  # (K, I, O)
    k, i_, o = kern.shape
    want = np.zeros((o, 1, k, i_), np.float32)
    for a in range(o):
        for t in range(k):
            for b in range(i_):
                want[a, 0, t, b] = kern[t, b, a]
    np.testing.assert_array_equal(_weights(tmp_path / "out", doc, "k2"), want)
    report = _verify(tmp_path / "out", path)
    assert report.ok, report.table()
    assert report.layers_checked == 5


# ----------------------------------------------------------------------- planted bugs


def _plant(src: Path, dst: Path, layer: str, fn: Callable[[np.ndarray], np.ndarray]) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    info = next(e for e in doc["layers"] if e["name"] == layer)["files"]["weights"]
    f = dst / info["file"]
    a = np.fromfile(f, dtype=np.dtype(info["dtype"])).reshape(info["shape"])
    b = np.ascontiguousarray(fn(a)).reshape(a.shape).astype(a.dtype)
    assert not np.array_equal(a, b)
    f.write_bytes(b.tobytes())
    info["sha256"] = hashlib.sha256(b.tobytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


def _rotate(a: np.ndarray) -> np.ndarray:  # OHWI / [C][kH][kW] turned by 180 degrees
    return a[:, ::-1, ::-1] if a.ndim == 3 else a[:, ::-1, ::-1, :]


def _channels_reversed(a: np.ndarray) -> np.ndarray:  # the input channels read backwards
    return a[..., ::-1]


def _reversed_1d(a: np.ndarray) -> np.ndarray:  # (O, 1, K, I) / (C, 1, K): K reversed
    return a[:, :, ::-1]


BUGS = [("image", "sep/depthwise", _rotate), ("image", "sep2/depthwise", _rotate),
        ("image", "sep", _channels_reversed), ("sequence", "k2", _reversed_1d),
        ("sequence", "sep1d/depthwise", _reversed_1d)]


@pytest.mark.parametrize(("model", "layer", "bug"), BUGS,
                         ids=[f"{m}-{layer}-{b.__name__[1:]}" for m, layer, b in BUGS])
def test_planted_bug_names_the_layer(saved: Any, tmp_path: Path, model: str, layer: str,
                                     bug: Callable[[np.ndarray], np.ndarray]) -> None:
    path = saved[model, "keras"]
    dims = DIMS if model == "image" else None
    export(path, tmp_path / "out", progress=False, input_dims=dims)
    bad = _plant(tmp_path / "out", tmp_path / "bad", layer, bug)
    report = _verify(bad, path, input_dims=dims)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.name == layer, report.table()


# ------------------------------------------------------------- a Keras 2 file by hand


def _keras2_h5(path: Path, weights: dict[str, list[tuple[str, np.ndarray]]]) -> None:
    """The layout Keras 2 / tf.keras writes: a Sequential config whose input size is
    unknown, model_weights/<layer>/<layer>/<var>:0 datasets."""
    layers = [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, None, None, 3],
                                                "name": "input_1", "dtype": "float32"}},
        {"class_name": "Conv2D", "config": {
            "name": "proj", "filters": 4, "kernel_size": [1, 1], "strides": [2, 2],
            "padding": "same", "data_format": "channels_last", "dilation_rate": [1, 1],
            "activation": "linear", "use_bias": True}},
        {"class_name": "SeparableConv2D", "config": {
            "name": "sep", "filters": 6, "kernel_size": [3, 3], "strides": [1, 1],
            "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
            "depth_multiplier": 1, "activation": "relu", "use_bias": True}},
    ]
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["backend"] = b"tensorflow"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"input_1", b"proj", b"sep"]
        mw.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for layer, arrays in weights.items():
            g = mw.create_group(layer)
            names = [f"{layer}/{role}:0" for role, _ in arrays]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, (_, a) in zip(names, arrays):
                g.create_dataset(n, data=a)


def test_keras2_h5_separable_and_strided_1x1(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)

    def r(*shape: int) -> np.ndarray:
        return rng.uniform(-0.5, 0.5, shape).astype(np.float32)

    w = {"proj": [("kernel", r(1, 1, 3, 4)), ("bias", r(4))],
         "sep": [("depthwise_kernel", r(3, 3, 4, 1)), ("pointwise_kernel", r(1, 1, 4, 6)),
                 ("bias", r(6))]}
    _keras2_h5(tmp_path / "m.h5", w)
    doc = export(tmp_path / "m.h5", tmp_path / "out", progress=False, strict=True)
    assert [e["name"] for e in doc["layers"]] == ["proj", "sep/depthwise", "sep"]
    dk = w["sep"][0][1]
    np.testing.assert_array_equal(_weights(tmp_path / "out", doc, "sep/depthwise"),
                                  dk[:, :, :, 0].transpose(2, 0, 1))
    # the reference: Keras itself on the same weights, against the exported layers run
    # by the reference executor (what verify does)
    report = _verify(tmp_path / "out", tmp_path / "m.h5", input_dims={"input_1": (1, 9, 9, 3)})
    assert report.ok, report.table()
    assert report.layers_checked == 3
