"""Keras files saved by Keras itself: the export carries every array of the file or lists
it, the ONNX translation computes what Keras computes (ONNX Runtime vs Keras), and
``verify --model MODEL.keras|.h5`` (Keras as the oracle) passes correct exports and fails
planted layout bugs at the layer that has them, with and without ``--input``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from keras_corpus import CORPUS, keras, saved

h5py = pytest.importorskip("h5py")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mpslayout.export import export  # noqa: E402
from mpslayout.keras_onnx import keras_as_onnx  # noqa: E402

FORMATS = ["keras", "h5"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_corpus")


def _arrays(path):
    """Every dataset of a Keras file, read with h5py (the reference count)."""
    import zipfile

    found = []

    def visit(p, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(p)

    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as zf, zf.open("model.weights.h5") as m, \
                h5py.File(m, "r") as f:
            f.visititems(visit)
    else:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    return found


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", CORPUS)
def test_export_accounts_for_every_array(folder, tmp_path, name, fmt):
    model, paths = saved(name, folder)
    doc = export(paths[fmt], tmp_path / "out", progress=False)
    carried = [t for e in doc["layers"] for t in e["source"]["tensors"]]
    listed = [t for e in doc["skipped"] + doc["unsupported"] + doc.get("training_state", [])
              for t in e.get("tensors", [])]
    assert len(set(carried)) == len(carried)
    assert not set(carried) & set(listed)
    arrays = _arrays(paths[fmt])
    assert sorted(set(carried) | set(listed)) == sorted(arrays)
    # Keras' own count of its weights: each is carried, or listed by its layer
    in_layers = [t for e in doc["skipped"] + doc["unsupported"] for t in e.get("tensors", [])]
    assert len(carried) + len(in_layers) == len(model.weights)
    assert doc["skipped"] == []
    # only layers MPS has no kernel for (EfficientNet's Normalization) are unsupported;
    # their floating-point weights are exported as "tensor" layers all the same
    assert {e["op"] for e in doc["unsupported"]} <= {"Normalization"}
    assert all(not np.issubdtype(np.dtype(str(v.dtype)), np.floating) for v in model.weights
               if any(v.path.startswith(e["name"] + "/") for e in doc["unsupported"])
               and v.path.rsplit("/", 1)[-1] == "count")
    exported = {e["source"]["layer"] for e in doc["layers"]}
    assert exported == {x.name for x in model.layers if x.weights}
    assert doc["inputs"] == {model.inputs[0]._keras_history[0].name:
                             [1, *model.inputs[0].shape[1:]]}


@pytest.mark.parametrize("name", [*CORPUS, "zoo"])
def test_translation_computes_what_keras_computes(folder, name):
    """ONNX Runtime on keras_as_onnx(model) against Keras on the same input, every
    tensor the translation names."""
    model, _ = saved(name, folder)
    tr = keras_as_onnx(model)
    assert tr.untranslated == []
    onnx.checker.check_model(tr.model)
    shape = [2, *model.inputs[0].shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    names = [n for n in tr.tensors if n not in tr.inputs]
    sub = keras.Model(model.inputs, [tr.tensors[n][0] for n in names])
    want = [keras.ops.convert_to_numpy(v) for v in sub([x], training=False)]
    m = onnx.ModelProto()
    m.CopyFrom(tr.model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(names, {tr.inputs[0]: x.transpose(0, 3, 1, 2).copy()})
    for n, w, g in zip(names, want, got):
        w = tr.to_graph(n, w)
        scale = max(float(np.max(np.abs(w))), 1e-6)
        assert g.shape == w.shape, n
        assert float(np.max(np.abs(g - w))) <= 1e-5 * scale, n


# ---------------------------------------------------------------------------- verify


def _verify_graph():
    from mpslayout import verify

    if not hasattr(verify, "verify_graph"):
        pytest.skip("mpslayout.verify has no verify_graph yet")


def _verify(outdir, path, **kw):
    _verify_graph()
    from mpslayout.verify.keras_oracle import verify_keras

    return verify_keras(outdir, path, **kw)


@pytest.fixture(scope="module")
def exports(folder, tmp_path_factory):
    out = {}
    for name in ("seed003", "mobilenet_v2"):
        _, paths = saved(name, folder)
        for fmt in FORMATS:
            d = tmp_path_factory.mktemp(f"{name}_{fmt}") / "out"
            export(paths[fmt], d, progress=False)
            out[name, fmt] = (d, paths[fmt])
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["seed003", "mobilenet_v2"])
def test_verify_passes_correct_exports(exports, name, fmt):
    outdir, path = exports[name, fmt]
    report = _verify(outdir, path)
    assert report.ok, report.table()
    assert report.layers_checked == len(json.loads((outdir / "manifest.json").read_text())
                                        ["layers"])


def _plant(src, dst, layer, fn):
    """A copy of export ``src`` whose ``layer`` weights went through ``fn`` (same shape)."""
    import shutil

    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    entry = next(e for e in doc["layers"] if e["name"] == layer)
    info = entry["files"]["weights"]
    f = dst / info["file"]
    a = np.fromfile(f, dtype=np.dtype(info["dtype"])).reshape(info["shape"])
    b = np.ascontiguousarray(fn(a)).reshape(a.shape).astype(a.dtype)
    assert not np.array_equal(a, b)
    f.write_bytes(b.tobytes())
    info["sha256"] = hashlib.sha256(b.tobytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


def _rotate(a):  # (O, kH, kW, I) kernel turned by 180 degrees
    return a[:, ::-1, ::-1, :]


def _oihw_bytes(a):  # OIHW bytes where MPS reads OHWI
    return a.transpose(0, 3, 1, 2)


def _chw_rows(a):  # a fully connected layer's rows in C, H, W order instead of H, W, C
    return a.transpose(0, 3, 1, 2)


BUGS = [(name, layer, bug, with_input)
        for name, layer, bug in [("seed003", "conv", _rotate), ("seed003", "conv", _oihw_bytes),
                                 ("seed003", "fc", _chw_rows), ("seed003", "up", _rotate)]
        for with_input in (False, True)]
# MobileNetV2 (8 s a run): each bug once, one with the input given, one without
BUGS += [("mobilenet_v2", "Conv1", _rotate, False), ("mobilenet_v2", "Conv1", _oihw_bytes, True)]


@pytest.mark.parametrize(("name", "layer", "bug", "with_input"), BUGS,
                         ids=[f"{a}-{b}-{c.__name__}-{'input' if d else 'recorded'}"
                              for a, b, c, d in BUGS])
def test_verify_names_a_planted_bug(exports, tmp_path, name, layer, bug, with_input):
    """A rotated kernel, OIHW bytes, CHW rows after Flatten, a transposed convolution
    without its flip (turning it by 180 degrees undoes the flip MPS needs): each fails
    at the layer that has it, with the input given or from the dims the export recorded."""
    outdir, path = exports[name, "keras"]
    bad = _plant(outdir, tmp_path / "bad", layer, bug)
    kw = {}
    if with_input:
        shape = json.loads((outdir / "manifest.json").read_text())["inputs"]
        dims = next(iter(shape.values()))
        kw["input"] = np.random.default_rng(5).standard_normal(dims).astype(np.float32)
    report = _verify(bad, path, **kw)
    assert not report.ok
    assert report.first_divergence.name == layer, report.table()


def test_cli_verify_keras(exports, capsys):
    _verify_graph()
    from mpslayout.cli import main

    outdir, path = exports["seed003", "h5"]
    assert main(["verify", str(outdir), "--model", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_cli_verify_keras_without_keras(exports, monkeypatch, capsys):
    import sys

    from mpslayout.cli import main

    outdir, path = exports["seed003", "keras"]
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras raises ImportError
    assert main(["verify", str(outdir), "--model", str(path)]) == 2
    assert "needs the keras package" in capsys.readouterr().err


def test_verify_refuses_unknown_dims_without_input(tmp_path):
    """A model of any image size, exported without recorded dims: verify asks for --input
    rather than feeding an image too small for the kernels."""
    _verify_graph()
    from mpslayout.verify import VerifyError

    L = keras.layers
    inp = keras.Input((None, None, 3), name="x")
    m = keras.Model(inp, L.Conv2D(4, 3, padding="same", name="conv")(inp))
    m.save(tmp_path / "m.keras")
    doc = export(tmp_path / "m.keras", tmp_path / "out", progress=False)
    assert doc["inputs"] == {}
    with pytest.raises(VerifyError, match="--input"):
        _verify(tmp_path / "out", tmp_path / "m.keras")
    report = _verify(tmp_path / "out", tmp_path / "m.keras", input_dims={"x": [2, 6, 5, 3]})
    assert report.ok, report.table()
    assert "--input-dims" in report.input
    x = np.random.default_rng(0).standard_normal((1, 7, 5, 3)).astype(np.float32)
    report = _verify(tmp_path / "out", tmp_path / "m.keras", input=x)
    assert report.ok, report.table()
    bad = _plant(tmp_path / "out", tmp_path / "bad", "conv", _rotate)
    assert _verify(bad, tmp_path / "m.keras", input=x).first_divergence.name == "conv"


def test_h5_without_recorded_shapes_still_carries_every_weight(folder, tmp_path):
    """The silent-loss bug: a legacy .h5 whose config records no tensor shapes (as Keras 2
    writes it) must still export MobileNetV2's final Dense, its input shape propagated
    through the residual Adds and the global pooling."""
    model, paths = saved("mobilenet_v2", folder)
    stripped = tmp_path / "no_shapes.h5"
    stripped.write_bytes(paths["h5"].read_bytes())

    def strip(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                obj.get("config", {}).pop("shape", None)
            for v in obj.values():
                strip(v)
        elif isinstance(obj, list):
            for v in obj:
                strip(v)

    with h5py.File(stripped, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        strip(cfg)
        assert '"shape"' not in json.dumps(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    doc = export(stripped, tmp_path / "out", progress=False)
    assert doc["skipped"] == []
    assert doc["unsupported"] == []
    assert len(doc["layers"]) == len([x for x in model.layers if x.weights])
    fc = next(e for e in doc["layers"] if e["name"] == "predictions")
    assert fc["kind"] == "fully_connected"
    # the propagated geometry is the one Keras recorded
    recorded = export(paths["h5"], tmp_path / "recorded", progress=False)

    def geometry(m):
        return [{k: v for k, v in e.items() if k != "source"} for e in m["layers"]]

    assert geometry(doc) == geometry(recorded)
