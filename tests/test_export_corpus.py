"""Every corpus model (tests/corpus.py) exported with its input dims fixed: nothing learned
is left behind (a count against corpus.learned_tensors, written from the ONNX operator
definitions), and every exported layer, run in numpy from the manifest and the .bin files
(export_ref), matches ONNX Runtime on the original model at the layer's output (recurrent
layers have their own reference in tests/test_export_rnn.py). Folded layers are checked a
second time through tests/nhwc_ref.py's plain convolutions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from export_ref import assert_matches, load_export, ort_values, run_layer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import corpus  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from mpslayout.export import export  # noqa: E402

RECURRENT = ("lstm", "gru", "rnn")


def _corpus(name):
    if name in corpus.TORCH_NAMES:
        pytest.importorskip("torch")
    return corpus.build(name)


def as_image(a):
    """NCHW -> NHWC, (N, K) -> (N, 1, 1, K), a (N, T, C) sequence -> (N, 1, T, C)."""
    a = np.asarray(a, np.float64)
    if a.ndim == 2:
        return a[:, None, None, :]
    if a.ndim == 3:
        return a[:, None, :, :]
    return a.transpose(0, 2, 3, 1)


def before_through(model, entry):
    """The tensor a layer computes before the pointwise ops it lists in ``through``."""
    producer = {o: n for n in model.graph.node for o in n.output}
    t = entry["source"]["output"]
    for _ in entry["source"].get("through", []):
        t = producer[t].input[0]
    return t


def run_entry(entry, arrays, x):
    if entry["kind"] == "fully_connected" and x.shape[1] == 1 and x.shape[2] > 1 \
            and entry["input_channels"] == x.shape[3] and "reshape" not in entry:
        # a MatMul on a (N, T, C) sequence: the 1x1 layer applied at each position
        w = np.asarray(arrays["weights"], np.float64).reshape(arrays["weights"].shape[0], -1)
        y = x @ w.T
        return y + arrays["bias"] if "bias" in arrays else y
    return run_layer(entry, arrays, x)


def export_corpus(cm, tmp_path, **kw):
    path = corpus.save(cm, tmp_path)
    out = tmp_path / "out"
    manifest = export(path, out, input_dims=cm.input_dims, progress=False, **kw)
    return manifest, out


@pytest.mark.parametrize("name", corpus.NAMES)
@pytest.mark.parametrize("fold_bn", [False, True])
def test_corpus_export_carries_every_learned_tensor(name, fold_bn, tmp_path):
    cm = _corpus(name)
    manifest, _ = export_corpus(cm, tmp_path, fold_bn=fold_bn)
    learned = corpus.learned_tensors(cm.model)
    carried = {t for e in manifest["layers"] for t in e["source"]["tensors"]}
    listed = {t: e for e in manifest["skipped"] + manifest["unsupported"]
              for t in e.get("tensors", [])}
    missing = sorted(set(learned) - carried - set(listed))
    assert not missing, f"left behind silently: {missing}"
    for t in set(learned) - carried:
        assert listed[t]["reason"]
    assert set(listed) - carried == set()  # nothing left behind in this corpus
    # and nothing is carried that is not a learned tensor of the model
    assert carried <= set(learned)
    assert manifest["inputs"] == {k: list(v) for k, v in cm.input_dims.items()}
    assert manifest["options"]["input_dims"] == manifest["inputs"]


def check_corpus_layers(name, tmp_path, dtype):
    cm = _corpus(name)
    manifest, out = export_corpus(cm, tmp_path, fold_bn=True, dtype=dtype)
    again, arrays = load_export(out)
    assert again == manifest
    feeds = corpus.feeds(cm)
    inits = {t.name: numpy_helper.to_array(t) for t in cm.model.graph.initializer}
    # recurrent layers have their own reference (tests/test_export_rnn.py)
    checked = [e for e in manifest["layers"] if e["kind"] not in ("tensor", *RECURRENT)]
    names = {e["source"]["input"] for e in checked}
    names |= {before_through(cm.model, e) for e in checked}
    values = ort_values(cm.model, feeds, names)
    for entry in manifest["layers"]:
        a = arrays[entry["name"]]
        if entry["kind"] == "tensor":
            (src,) = entry["source"]["tensors"]
            np.testing.assert_array_equal(a["tensor"], inits[src].astype(dtype))
            continue
        if entry["kind"] in RECURRENT:
            continue
        got = run_entry(entry, a, as_image(values[entry["source"]["input"]]))
        want = as_image(values[before_through(cm.model, entry)])
        try:
            assert_matches(got, want, dtype)
        except AssertionError as e:
            raise AssertionError(f"layer {entry['name']} ({entry['kind']}): {e}") from None


@pytest.mark.parametrize("name", corpus.NAMES)
def test_corpus_layers_match_onnx_runtime(name, tmp_path):
    check_corpus_layers(name, tmp_path, "float32")


@pytest.mark.parametrize("name", ["mobilenetv3_db", "conv_affine", "norms", "attention",
                                  "hardswish_decomposed"])
def test_corpus_layers_match_onnx_runtime_float16(name, tmp_path):
    check_corpus_layers(name, tmp_path, "float16")


def test_corpus_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" /
                         "manifest.schema.json").read_text())
    for name in ("conv_affine", "norms", "lstm", "attention"):
        manifest, _ = export_corpus(_corpus(name), tmp_path / name)
        jsonschema.validate(manifest, schema, cls=jsonschema.Draft202012Validator)


# ------------------------------------------------------------------------- what each does


def test_convtranspose_bias_add_folds_into_a_new_bias(tmp_path):
    """ConvTranspose without bias + Add (1, C, 1, 1): one transposed layer whose bias is
    the Add's constant; proven against ORT with nhwc_ref's plain transposed convolution."""
    from nhwc_ref import conv_transpose2d_nhwc

    cm = corpus.build("convtranspose_bias_add")
    manifest, out = export_corpus(cm, tmp_path)
    _, arrays = load_export(out)
    (up,) = [e for e in manifest["layers"] if e["name"] == "up"]
    assert up["source"]["fused"] == [{"node": "up_bias", "op": "Add", "tensor": "up.bias"}]
    assert up["source"]["output"] == "up_bias_out"  # the last fused node
    assert up["source"]["tensors"] == ["up.w", "up.bias"]
    feeds = corpus.feeds(cm)
    v = ort_values(cm.model, feeds, ["relu1_out", "up_bias_out"])
    inits = {t.name: numpy_helper.to_array(t) for t in cm.model.graph.initializer}
    np.testing.assert_array_equal(arrays["up"]["bias"], inits["up.bias"].reshape(-1))
    # the exported OHWI weights are the flipped, swapped source: undo it for nhwc_ref
    w_iohw = inits["up.w"]
    np.testing.assert_array_equal(arrays["up"]["weights"],
                                  w_iohw.transpose(1, 2, 3, 0)[:, ::-1, ::-1, :])
    got = conv_transpose2d_nhwc(as_image(v["relu1_out"]), arrays["up"]["weights"],
                                arrays["up"]["bias"], stride=2)
    np.testing.assert_allclose(got, as_image(v["up_bias_out"]), rtol=1e-5, atol=1e-5)


def test_conv_affine_chains_fold_exactly(tmp_path):
    """Conv -> Mul -> Add and Conv -> Div -> Sub fold into weights and bias (float64, then
    float32); nhwc_ref's plain conv on the exported weights matches ORT on the original
    graph. Sub(c, x) and a (1, C, H, W) Mul after a Relu stay arithmetic layers."""
    from nhwc_ref import conv2d_nhwc

    cm = corpus.build("conv_affine")
    manifest, out = export_corpus(cm, tmp_path)
    _, arrays = load_export(out)
    e = {x["name"]: x for x in manifest["layers"]}
    assert [f["op"] for f in e["conv1"]["source"]["fused"]] == ["Mul", "Add"]
    assert [f["op"] for f in e["conv2"]["source"]["fused"]] == ["Div", "Sub"]
    assert e["conv1"]["source"]["bias"] is None
    assert e["conv1"]["source"]["tensors"] == ["c1.w", "bn1.scale", "bn1.shift"]
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64)
             for t in cm.model.graph.initializer}
    s1, t1 = inits["bn1.scale"].reshape(-1), inits["bn1.shift"].reshape(-1)
    np.testing.assert_array_equal(
        arrays["conv1"]["weights"],
        (inits["c1.w"] * s1[:, None, None, None]).astype(np.float32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(arrays["conv1"]["bias"], t1.astype(np.float32))
    v = ort_values(cm.model, corpus.feeds(cm), ["relu1_out", "bn1_add_out", "c2_sub_out",
                                                "relu2_out", "reverse_sub_out", "pos_mul_out"])
    got = conv2d_nhwc(as_image(v["x"]), arrays["conv1"]["weights"], arrays["conv1"]["bias"],
                      padding=1)
    np.testing.assert_allclose(got, as_image(v["bn1_add_out"]), rtol=1e-5, atol=1e-5)
    got = conv2d_nhwc(as_image(v["relu1_out"]), arrays["conv2"]["weights"],
                      arrays["conv2"]["bias"])
    np.testing.assert_allclose(got, as_image(v["c2_sub_out"]), rtol=1e-5, atol=1e-5)
    rev, pos = e["reverse_sub"], e["pos_mul"]
    assert (rev["kind"], rev["op"], rev["constant_operand"]) == ("arithmetic", "subtract",
                                                                 "primary")
    assert rev["constant_shape"] == {"height": 1, "width": 1, "channels": 8}
    assert rev["broadcast_strides"] == {"x": 0, "y": 0, "feature_channels": 1}
    assert rev["files"]["constant"]["shape"] == [2, 1, 1, 4]
    assert rev["files"]["constant"]["layout"] == "image_slices"
    assert (pos["op"], pos["constant_operand"]) == ("multiply", "secondary")
    assert pos["broadcast_strides"] == {"x": 1, "y": 1, "feature_channels": 1}
    assert pos["files"]["constant"]["shape"] == [2, 6, 6, 4]


def test_decomposed_hardswish_scalars_are_broadcast_constants(tmp_path):
    cm = corpus.build("hardswish_decomposed")
    manifest, _ = export_corpus(cm, tmp_path)
    e = {x["name"]: x for x in manifest["layers"]}
    assert e["hs_add"]["constant_shape"] == {"height": 1, "width": 1, "channels": 1}
    assert e["hs_add"]["broadcast_strides"] == {"x": 0, "y": 0, "feature_channels": 0}
    assert e["hs_div"]["op"] == "divide"
    assert e["conv1"]["source"].get("fused") is None  # its output has two readers
    assert manifest["inputs"] == {"x": [1, 3, 8, 8]}


def test_sequence_constants_are_tensors_and_projections_fully_connected(tmp_path):
    manifest, _ = export_corpus(corpus.build("layernorm_decomposed"), tmp_path / "ln")
    e = {x["name"]: x for x in manifest["layers"]}
    assert (e["ln_scale.scale"]["kind"], e["ln_scale.scale"]["role"]) == ("tensor", "scale")
    assert e["ln_shift.shift"]["source"]["tensors"] == ["ln.beta"]
    assert e["ln_shift.shift"]["files"]["tensor"]["shape"] == [8]
    assert e["proj"]["kind"] == "fully_connected"
    assert e["proj"]["source"]["fused"][0]["tensor"] == "proj.b"
    assert any("each of the T positions" in n for n in e["proj"]["notes"])
    manifest, _ = export_corpus(corpus.build("attention"), tmp_path / "attn")
    kinds = {x["name"]: x["kind"] for x in manifest["layers"]}
    assert {kinds[f"{p}_matmul"] for p in "qkvo"} == {"fully_connected"}
    assert kinds["scale.scale"] == "tensor"


def test_norms_prelu_embedding_are_tensors(tmp_path):
    manifest, _ = export_corpus(corpus.build("norms"), tmp_path)
    roles = {x["name"]: (x["role"], x["source"]["tensors"]) for x in manifest["layers"]
             if x["kind"] == "tensor"}
    assert roles == {"inorm.scale": ("scale", ["in.scale"]),
                     "inorm.shift": ("shift", ["in.bias"]),
                     "prelu.slope": ("slope", ["prelu.slope"]),
                     "layernorm.scale": ("scale", ["ln.weight"]),
                     "layernorm.shift": ("shift", ["ln.bias"]),
                     "pos_embed.table": ("table", ["pos.embed"])}


def test_input_dims_make_flatten_matmul_exportable(tmp_path):
    cm = corpus.build("flatten_matmul_symbolic")
    path = corpus.save(cm, tmp_path)
    manifest = export(path, tmp_path / "none", progress=False)
    assert [x["name"] for x in manifest["skipped"]] == ["fc"]
    assert "--input-shape" in manifest["skipped"][0]["reason"]
    assert manifest["skipped"][0]["tensors"] == ["fc.w"]
    assert manifest["inputs"] == {"x": [None, 2, None, None]}
    with pytest.raises(ValueError, match=r"fc.w \(node fc, MatMul\)"):
        export(path, tmp_path / "strict", strict=True, progress=False)
    manifest = export(path, tmp_path / "dims", input_dims={"x": (1, 2, 5, 3)}, strict=True,
                      progress=False)
    fc = {x["name"]: x for x in manifest["layers"]}["fc"]
    assert fc["fully_connected"]["source_image"] == {"height": 5, "width": 3, "channels": 4}
    assert fc["source"]["tensors"] == ["fc.w", "fc.b"]
    assert manifest["inputs"] == {"x": [1, 2, 5, 3]}


def test_input_dims_give_same_padding_and_image_sizes(tmp_path):
    cm = corpus.build("dynamic_dims")
    path = corpus.save(cm, tmp_path)
    manifest = export(path, tmp_path / "none", progress=False)
    assert [x["name"] for x in manifest["skipped"]] == ["conv1"]  # SAME with stride 2
    manifest = export(path, tmp_path / "dims", input_dims={"x": [1, 3, 15, 13]},
                      progress=False)
    e = {x["name"]: x for x in manifest["layers"]}
    assert e["conv1"]["output_shape"] == {"height": 8, "width": 7, "channels": 8}
    assert e["dw"]["input_shape"] == {"height": 8, "width": 7, "channels": 8}


def test_cli_input_dims(tmp_path):
    import subprocess
    import sys

    path = corpus.save(corpus.build("flatten_matmul_symbolic"), tmp_path)
    r = subprocess.run([sys.executable, "-m", "mpslayout", "export", str(path), "-o",
                        str(tmp_path / "o"), "--input-dims", "x=1,2,5,3", "--strict"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert doc["inputs"] == {"x": [1, 2, 5, 3]}
    r = subprocess.run([sys.executable, "-m", "mpslayout", "export", str(path), "-o",
                        str(tmp_path / "p")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert "left behind: fc.w" in r.stdout
