"""Whole-model export from ONNX, checked against ONNX Runtime layer by layer.

Each test builds a small ONNX graph, exports it, reads the .bin files back through the
manifest and runs every exported layer in numpy from its MPS description (export_ref),
feeding it the layer's input as ONNX Runtime computes it and comparing with the layer's
output there: 1e-5 for float32 weights, 1e-2 relative for float16. (onnx's own
ReferenceEvaluator is wrong for grouped ConvTranspose, so ONNX Runtime is the oracle.)
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from export_ref import POINTWISE, assert_matches, load_export, nhwc, ort_values, run_layer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mpslayout.export import export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "generator.onnx"
SCHEMA = ROOT / "docs" / "manifest.schema.json"


# ------------------------------------------------------------------------- helpers


def make_model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def rand(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def feeds_for(model, seed=0):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    return {i.name: rand(rng, *[d.dim_value for d in i.type.tensor_type.shape.dim], scale=1.0)
            for i in model.graph.input if i.name not in inits}


def check_against_ort(manifest, outdir, model, dtype="float32"):
    """Every exported layer, run in numpy from the manifest, against ONNX Runtime."""
    again, arrays = load_export(outdir)
    assert again == manifest
    feeds = feeds_for(model)
    names = {e["source"][k] for e in manifest["layers"] for k in ("input", "output")
             if e["kind"] != "tensor"}
    values = ort_values(model, feeds, names)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for entry in manifest["layers"]:
        if entry["kind"] == "tensor":  # the source tensor as it is, in the export dtype
            (name,) = entry["source"]["tensors"]
            np.testing.assert_array_equal(arrays[entry["name"]]["tensor"],
                                          inits[name].astype(entry["weights_dtype"]))
            continue
        got = run_layer(entry, arrays[entry["name"]], nhwc(values[entry["source"]["input"]]))
        for op in entry["source"].get("through", []):
            got = POINTWISE[op](got)
        want = nhwc(values[entry["source"]["output"]])
        try:
            assert_matches(got, want, dtype)
        except AssertionError as e:
            raise AssertionError(f"layer {entry['name']} ({entry['kind']}): {e}") from None


def export_and_check(model, tmp_path, dtype="float32", **kw):
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    out = tmp_path / f"out-{dtype}"
    manifest = export(path, out, dtype=dtype, progress=False, **kw)
    check_against_ort(manifest, out, model, dtype)
    return manifest


def by_name(manifest):
    return {e["name"]: e for e in manifest["layers"]}


def validate_schema(manifest):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(manifest, schema, cls=jsonschema.Draft202012Validator)


# ------------------------------------------------------------------------- the example


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bundled_generator_exports_and_matches(tmp_path, dtype):
    model = onnx.load(str(EXAMPLE))
    out = tmp_path / "gen"
    manifest = export(EXAMPLE, out, dtype=dtype, progress=False)
    check_against_ort(manifest, out, model, dtype)
    kinds = {e["name"]: e["kind"] for e in manifest["layers"]}
    assert kinds == {"conv1": "convolution", "fc1": "fully_connected", "fc2": "subpixel",
                     "up": "transposed", "dw": "depthwise", "bn": "batch_normalization",
                     "pw": "convolution", "head": "fully_connected"}
    layers = by_name(manifest)
    assert layers["fc1"]["fully_connected"]["source_image"] == {
        "height": 4, "width": 4, "channels": 8}
    assert layers["fc2"]["reshape"]["source_order"] == "CHW"
    assert layers["up"]["kernel_offset"] == {"x": 0, "y": 0}  # 4/2 - 4 + 1 + 1
    assert manifest["unsupported"] == []
    assert manifest["skipped"] == []
    validate_schema(manifest)


def test_bundled_generator_folded_matches(tmp_path):
    model = onnx.load(str(EXAMPLE))
    manifest = export_and_check(model, tmp_path, fold_bn=True)
    layers = by_name(manifest)
    assert "bn" not in layers
    assert layers["dw"]["source"]["folded_batch_norm"] == "bn"
    validate_schema(manifest)


def test_bundled_generator_is_what_its_script_makes():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import make_generator
    finally:
        sys.path.pop(0)
    assert make_generator.build().SerializeToString() == EXAMPLE.read_bytes()
    assert EXAMPLE.stat().st_size < 1 << 20


def test_cli_exports_the_example(tmp_path):
    out = tmp_path / "gen"
    proc = subprocess.run([sys.executable, "-m", "mpslayout", "export", str(EXAMPLE), "-o",
                           str(out), "--dtype", "float16"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "exported 8 layers" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights_dtype"] == "float16"
    again = subprocess.run([sys.executable, "-m", "mpslayout", "export", str(EXAMPLE), "-o",
                            str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1
    assert "already exists" in again.stderr


# ------------------------------------------------------------------------- convolutions


CONV_CASES = {
    # cin, cout, kernel, stride, pads (t, l, b, r) or auto_pad, dilation, groups
    "3x3": (3, 8, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), 1),
    "asym-pad-3x5-s2": (4, 8, (3, 5), (2, 2), [0, 2, 1, 1], (1, 1), 1),
    "dilated": (4, 4, (3, 3), (1, 2), [2, 2, 2, 2], (2, 2), 1),
    "grouped-same-upper": (8, 8, (3, 3), (2, 2), "SAME_UPPER", (1, 1), 2),
    "even-same-lower": (4, 8, (4, 4), (2, 2), "SAME_LOWER", (1, 1), 1),
    "valid": (4, 8, (3, 3), (1, 1), "VALID", (1, 1), 1),
    "depthwise": (8, 8, (3, 3), (2, 2), [1, 1, 1, 1], (1, 1), 8),
    "depthwise-multiplier-2": (4, 8, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), 4),
    "1x1": (8, 16, (1, 1), (1, 1), [0, 0, 0, 0], (1, 1), 1),
    "2x2-one-sided": (4, 4, (2, 2), (1, 1), [0, 0, 1, 1], (1, 1), 1),
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(tmp_path, case, dtype):
    cin, cout, k, s, pads, d, g = CONV_CASES[case]
    rng = np.random.default_rng(1)
    attrs = {"kernel_shape": list(k), "strides": list(s), "dilations": list(d), "group": g}
    if isinstance(pads, str):
        attrs["auto_pad"] = pads
    else:
        attrs["pads"] = [pads[0], pads[1], pads[2], pads[3]]
    model = make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)],
        {"x": [2, cin, 9, 11]}, ["y"],
        {"w": rand(rng, cout, cin // g, *k), "b": rand(rng, cout)},
    )
    manifest = export_and_check(model, tmp_path, dtype)
    entry = manifest["layers"][0]
    if case == "depthwise":
        assert entry["kind"] == "depthwise"
        assert entry["files"]["weights"]["layout"] == "OHW"
    elif case == "depthwise-multiplier-2":
        assert entry["kind"] == "convolution"
        assert entry["groups"] == 1
        assert "multiplier 2" in entry["notes"][0]
    else:
        assert entry["kind"] == "convolution"
        assert entry["groups"] == g


TRANSPOSED_CASES = {
    # cin, cout, kernel, stride, pads or auto_pad, dilation, groups, output_padding
    "4x4-s2": (8, 4, (4, 4), (2, 2), [1, 1, 1, 1], (1, 1), 1, (0, 0)),
    "grouped-outpad": (8, 8, (3, 3), (2, 2), [1, 1, 1, 1], (1, 1), 2, (1, 1)),
    "asym": (4, 4, (3, 5), (2, 3), [0, 1, 2, 0], (1, 1), 1, (1, 2)),
    "dilated": (4, 4, (3, 3), (1, 1), [1, 1, 1, 1], (2, 2), 1, (0, 0)),
    "same-upper": (4, 8, (3, 3), (2, 2), "SAME_UPPER", (1, 1), 1, (0, 0)),
    "output-shape": (4, 4, (3, 3), (2, 2), "output_shape", (1, 1), 1, (0, 0)),
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", list(TRANSPOSED_CASES))
def test_conv_transpose(tmp_path, case, dtype):
    cin, cout, k, s, pads, d, g, op = TRANSPOSED_CASES[case]
    rng = np.random.default_rng(2)
    attrs = {"kernel_shape": list(k), "strides": list(s), "dilations": list(d), "group": g,
             "output_padding": list(op)}
    if pads == "output_shape":
        attrs["output_shape"] = [12, 13]
    elif isinstance(pads, str):
        attrs["auto_pad"] = pads
    else:
        attrs["pads"] = list(pads)
    model = make_model(
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", **attrs)],
        {"x": [2, cin, 6, 7]}, ["y"],
        {"w": rand(rng, cin, cout // g, *k), "b": rand(rng, cout)},
    )
    manifest = export_and_check(model, tmp_path, dtype)
    entry = manifest["layers"][0]
    assert entry["kind"] == "transposed"
    assert entry["groups"] == g
    if case == "4x4-s2":
        assert entry["kernel_offset"] == {"x": 0, "y": 0}


# ------------------------------------------------------------------------- dense


def conv_flatten_gemm(rng, trans_b=1, alpha=1.0, beta=1.0):
    w = rand(rng, 10, 60) if trans_b else rand(rng, 60, 10)
    return make_model(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1]),
         helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=trans_b,
                          alpha=alpha, beta=beta)],
        {"x": [2, 3, 3, 5]}, ["y"],
        {"cw": rand(rng, 4, 3, 3, 3), "cb": rand(rng, 4), "w": w, "b": rand(rng, 10)},
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_linear_after_flatten(tmp_path, dtype):
    manifest = export_and_check(conv_flatten_gemm(np.random.default_rng(3)), tmp_path, dtype)
    fc = by_name(manifest)["fc"]
    assert fc["kind"] == "fully_connected"
    assert fc["fully_connected"] == {"source_image": {"height": 3, "width": 5, "channels": 4},
                                     "flatten_order": "CHW"}
    assert fc["files"]["weights"]["shape"] == [10, 3, 5, 4]


def test_gemm_trans_b0_alpha_beta(tmp_path):
    model = conv_flatten_gemm(np.random.default_rng(4), trans_b=0, alpha=0.5, beta=2.0)
    manifest = export_and_check(model, tmp_path)
    assert "alpha=0.5" in by_name(manifest)["fc"]["notes"][0]


def test_reshape_matmul_add(tmp_path):
    rng = np.random.default_rng(5)
    model = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["f"], name="flat"),
         helper.make_node("MatMul", ["f", "w"], ["m"], name="fc"),
         helper.make_node("Add", ["m", "b"], ["y"], name="fc_bias")],
        {"x": [2, 4, 3, 5]}, ["y"],
        {"shape": np.array([2, -1], np.int64), "w": rand(rng, 60, 7), "b": rand(rng, 7)},
    )
    manifest = export_and_check(model, tmp_path)
    fc = manifest["layers"][0]
    assert fc["source"]["bias"] is None  # MatMul has none: the Add is fused into it
    assert fc["source"]["fused"] == [{"node": "fc_bias", "op": "Add", "tensor": "b"}]
    assert fc["source"]["tensors"] == ["w", "b"]
    assert fc["source"]["output"] == "y"
    assert manifest["unsupported"] == []


def test_flatten_of_nhwc_transpose(tmp_path):
    rng = np.random.default_rng(6)
    model = make_model(
        [helper.make_node("Transpose", ["x"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
         helper.make_node("Flatten", ["t"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1)],
        {"x": [2, 4, 3, 5]}, ["y"], {"w": rand(rng, 7, 60), "b": rand(rng, 7)},
    )
    manifest = export_and_check(model, tmp_path)
    assert manifest["layers"][0]["fully_connected"]["flatten_order"] == "HWC"
    assert manifest["layers"][0]["source"]["input"] == "x"


def dense_reshape_model(rng, n_in, shape, *, relu=False, nhwc_reshape=False,
                        spatial=None, bias=None):
    """Gemm -> [Relu] -> Reshape to `shape` (NCHW dims, or NHWC dims then a Transpose)."""
    o = int(np.prod(shape))
    nodes, inputs, src = [], {}, "v"
    if spatial is not None:
        inputs["x"] = [2, *spatial]
        nodes.append(helper.make_node("Flatten", ["x"], ["v"], name="flatten"))
    else:
        inputs["v"] = [2, n_in]
    nodes.append(helper.make_node("Gemm", [src, "w", "b"], ["d"], name="dense", transB=1))
    last = "d"
    if relu:
        nodes.append(helper.make_node("Relu", ["d"], ["dr"], name="relu"))
        last = "dr"
    nodes.append(helper.make_node("Reshape", [last, "shape"], ["r"], name="reshape"))
    out = "r"
    if nhwc_reshape:
        nodes.append(helper.make_node("Transpose", ["r"], ["rt"], name="to_nchw",
                                      perm=[0, 3, 1, 2]))
        out = "rt"
    inits = {"w": rand(rng, o, n_in), "b": rand(rng, o) if bias is None else bias,
             "shape": np.array([-1, *shape], np.int64)}
    return make_model(nodes, inputs, [out], inits)


def test_dense_reshape_square_is_subpixel(tmp_path):
    rng = np.random.default_rng(7)
    bias = np.repeat(rand(rng, 6), 16)  # constant over (y, x): conv_transpose works too
    manifest = export_and_check(dense_reshape_model(rng, 12, (6, 4, 4), bias=bias), tmp_path)
    entry = manifest["layers"][0]
    assert entry["kind"] == "subpixel"
    assert entry["subpixel"] == {"factor": 4, "image_channels": 6, "source_mode": None}
    alts = {a["target"]: a["available"] for a in entry["reshape"]["alternatives"]}
    assert alts == {"rows": True, "subpixel": True, "conv_transpose": True}
    validate_schema(manifest)


def test_dense_relu_reshape_rows(tmp_path):
    rng = np.random.default_rng(8)
    manifest = export_and_check(dense_reshape_model(rng, 12, (5, 2, 3), relu=True), tmp_path)
    entry = manifest["layers"][0]
    assert entry["kind"] == "fully_connected"
    assert entry["reshape"]["target"] == "rows"
    assert entry["source"]["through"] == ["Relu"]
    alts = {a["target"]: a["available"] for a in entry["reshape"]["alternatives"]}
    assert alts == {"rows": True, "subpixel": False, "conv_transpose": False}


def test_dense_reshape_nhwc_order(tmp_path):
    rng = np.random.default_rng(9)
    manifest = export_and_check(dense_reshape_model(rng, 12, (4, 4, 3), nhwc_reshape=True),
                                tmp_path)
    assert manifest["layers"][0]["reshape"]["source_order"] == "HWC"


def test_dense_reshape_reading_an_image(tmp_path):
    rng = np.random.default_rng(10)
    model = dense_reshape_model(rng, 36, (8, 2, 2), spatial=(4, 3, 3))
    manifest = export_and_check(model, tmp_path)
    entry = manifest["layers"][0]
    assert entry["kind"] == "subpixel"
    assert entry["kernel"] == {"height": 3, "width": 3}


# ------------------------------------------------------------------------- batch norm


def conv_bn(rng, op="Conv", groups=1):
    w = rand(rng, 8, 4, 3, 3) if op == "Conv" else rand(rng, 8, 8 // groups, 3, 3)
    cout = 8
    return make_model(
        [helper.make_node(op, ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1], group=groups),
         helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["y"], name="bn",
                          epsilon=1e-3)],
        {"x": [2, 4 if op == "Conv" else 8, 5, 5]}, ["y"],
        {"w": w, "b": rand(rng, cout), "g": rand(rng, cout) + 1, "be": rand(rng, cout),
         "m": rand(rng, cout), "v": np.abs(rand(rng, cout)) + 0.5},
    )


def test_batch_norm_emitted(tmp_path):
    manifest = export_and_check(conv_bn(np.random.default_rng(11)), tmp_path)
    bn = by_name(manifest)["bn"]
    assert bn["kind"] == "batch_normalization"
    assert bn["epsilon"] == pytest.approx(1e-3)
    assert set(bn["files"]) == {"gamma", "beta", "mean", "variance"}


@pytest.mark.parametrize(("op", "groups"), [("Conv", 1), ("ConvTranspose", 1),
                                            ("ConvTranspose", 2)])
def test_batch_norm_folded(tmp_path, op, groups):
    manifest = export_and_check(conv_bn(np.random.default_rng(12), op, groups), tmp_path,
                                fold_bn=True)
    assert [e["name"] for e in manifest["layers"]] == ["conv"]
    assert manifest["layers"][0]["source"]["output"] == "y"


def test_batch_norm_folded_into_gemm_before_reshape(tmp_path):
    rng = np.random.default_rng(13)
    model = make_model(
        [helper.make_node("Gemm", ["v", "w", "b"], ["d"], name="dense", transB=1),
         helper.make_node("BatchNormalization", ["d", "g", "be", "m", "var"], ["n"],
                          name="bn1d"),
         helper.make_node("Reshape", ["n", "shape"], ["y"], name="reshape")],
        {"v": [2, 12]}, ["y"],
        {"w": rand(rng, 32, 12), "b": rand(rng, 32), "g": rand(rng, 32), "be": rand(rng, 32),
         "m": rand(rng, 32), "var": np.abs(rand(rng, 32)) + 0.5,
         "shape": np.array([-1, 2, 4, 4], np.int64)},
    )
    manifest = export_and_check(model, tmp_path, fold_bn=True)
    assert [e["kind"] for e in manifest["layers"]] == ["subpixel"]


# ------------------------------------------------------------------------- sub-pixel


@pytest.mark.parametrize("mode", ["CRD", "DCR"])
@pytest.mark.parametrize("relu", [False, True])
def test_conv_depth_to_space_is_subpixel(tmp_path, mode, relu):
    rng = np.random.default_rng(14)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])]
    last = "c"
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["cr"], name="relu"))
        last = "cr"
    nodes.append(helper.make_node("DepthToSpace", [last], ["y"], name="d2s", blocksize=2,
                                  mode=mode))
    model = make_model(nodes, {"x": [2, 4, 5, 6]}, ["y"],
                       {"w": rand(rng, 12, 4, 3, 3), "b": rand(rng, 12)})
    manifest = export_and_check(model, tmp_path)
    entry = manifest["layers"][0]
    assert entry["kind"] == "subpixel"
    assert entry["subpixel"] == {"factor": 2, "image_channels": 3, "source_mode": mode}
    assert entry["output_shape"] == {"height": 10, "width": 12, "channels": 3}
    assert manifest["unsupported"] == []


# ------------------------------------------------------------------------- the rest


def unsupported_model(rng):
    return make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[1, 1]),
         helper.make_node("InstanceNormalization", ["c", "s", "sb"], ["n"], name="inorm"),
         helper.make_node("Mul", ["n", "gain"], ["y"], name="gain_mul")],
        {"x": [1, 4, 3, 3]}, ["y"],
        {"w": rand(rng, 4, 4, 1, 1), "b": rand(rng, 4), "s": rand(rng, 4),
         "sb": rand(rng, 4), "gain": rand(rng, 1, 4, 1, 1)},
    )


def test_learned_tensors_of_other_ops_are_exported_with_their_role(tmp_path):
    manifest = export_and_check(unsupported_model(np.random.default_rng(15)), tmp_path,
                                strict=True)
    assert manifest["unsupported"] == []
    kinds = {e["name"]: (e["kind"], e.get("role"), e["source"]["tensors"])
             for e in manifest["layers"]}
    assert kinds["inorm.scale"] == ("tensor", "scale", ["s"])
    assert kinds["inorm.shift"] == ("tensor", "shift", ["sb"])
    assert kinds["gain_mul"] == ("arithmetic", None, ["gain"])


def lstm_model(rng):
    return make_model(
        [helper.make_node("Foo", ["x"], ["f"], name="custom", domain="com.example"),
         # three activations per direction are required: one is malformed, not exported
         helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], name="rnn", hidden_size=3,
                          activations=["Sigmoid"])],
        {"x": [2, 1, 4]}, ["y", "f"],
        {"W": rand(rng, 1, 12, 4), "R": rand(rng, 1, 12, 3), "B": rand(rng, 1, 24)},
    )


def test_strict_fails_only_on_learned_tensors_left_behind(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(lstm_model(np.random.default_rng(15)), str(path))
    with pytest.raises(ValueError, match=r"strict: 3 learned tensor\(s\) left behind: "
                       r"W \(node rnn, LSTM\).*R \(node rnn, LSTM\).*B \(node rnn, LSTM\)"):
        export(path, tmp_path / "out", strict=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    # the weightless custom op alone is listed, not fatal
    onnx.save(make_model([helper.make_node("Foo", ["x"], ["f"], name="custom",
                                           domain="com.example"),
                          helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                         {"x": [1, 2, 3, 3]}, ["y", "f"],
                         {"w": rand(np.random.default_rng(1), 2, 2, 1, 1)}), str(path))
    manifest = export(path, tmp_path / "ok", strict=True, progress=False)
    assert [(x["name"], x.get("tensors")) for x in manifest["unsupported"]] == [
        ("custom", None)]


def test_unexported_lstm_is_listed_with_its_tensors(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(lstm_model(np.random.default_rng(15)), str(path))
    with pytest.raises(ValueError, match="no layer"):
        export(path, tmp_path / "out", progress=False)  # nothing else to export
    m = lstm_model(np.random.default_rng(15))
    m.graph.node.append(helper.make_node("Conv", ["c_in", "cw"], ["c_out"], name="conv"))
    m.graph.input.append(helper.make_tensor_value_info("c_in", TensorProto.FLOAT, [1, 2, 3, 3]))
    m.graph.output.append(helper.make_tensor_value_info("c_out", TensorProto.FLOAT, None))
    m.graph.initializer.append(numpy_helper.from_array(rand(np.random.default_rng(2), 2, 2,
                                                            1, 1), "cw"))
    onnx.save(m, str(path))
    manifest = export(path, tmp_path / "out2", progress=False)
    (rnn,) = [x for x in manifest["skipped"] if x["name"] == "rnn"]
    assert rnn["tensors"] == ["W", "R", "B"]
    assert "activations" in rnn["reason"]


def test_only_selects_and_reports_unknown_names(tmp_path):
    manifest = export(EXAMPLE, tmp_path / "a", only=["fc2", "up.weight"], progress=False)
    assert [e["name"] for e in manifest["layers"]] == ["fc2", "up"]
    assert manifest["options"]["only"] == ["fc2", "up.weight"]
    with pytest.raises(ValueError, match="'nope'"):
        export(EXAMPLE, tmp_path / "b", only=["nope"], progress=False)
    assert not (tmp_path / "b").exists()


def test_dynamic_spatial_size_needs_input_shape(tmp_path):
    rng = np.random.default_rng(16)
    model = make_model(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1]),
         helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1)],
        {"x": [1, 3, "H", "W"]}, ["y"],
        {"cw": rand(rng, 4, 3, 3, 3), "cb": rand(rng, 4), "w": rand(rng, 10, 60),
         "b": rand(rng, 10)},
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    manifest = export(path, tmp_path / "a", progress=False)
    assert [e["name"] for e in manifest["layers"]] == ["conv"]
    reason = manifest["skipped"][0]["reason"]
    assert "--input-shape fc=C,H,W" in reason
    assert "--input-dims" in reason
    manifest = export(path, tmp_path / "b", input_shapes={"fc": (4, 3, 5)}, progress=False)
    fc = by_name(manifest)["fc"]
    assert fc["fully_connected"]["source_image"] == {"height": 3, "width": 5, "channels": 4}
    with pytest.raises(ValueError, match="input_shapes"):
        export(path, tmp_path / "c", input_shapes={"fc9": (4, 3, 5)}, progress=False)


def test_float16_model(tmp_path):
    """float16 initializers: float32 export equals the export of the same values in float32."""
    rng = np.random.default_rng(17)
    w = rand(rng, 8, 4, 3, 3).astype(np.float16)

    def model(dt):
        tp = TensorProto.FLOAT16 if dt == np.float16 else TensorProto.FLOAT
        g = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3])],
            "t", [helper.make_tensor_value_info("x", tp, [1, 4, 5, 5])],
            [helper.make_tensor_value_info("y", tp, None)],
            [numpy_helper.from_array(w.astype(dt), "w")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    files = {}
    for dt in (np.float16, np.float32):
        for out_dtype in ("float16", "float32"):
            path = tmp_path / f"{dt.__name__}.onnx"
            onnx.save(model(dt), str(path))
            out = tmp_path / f"{dt.__name__}-{out_dtype}"
            export(path, out, dtype=out_dtype, progress=False)
            files[dt, out_dtype] = (out / "conv.weights.bin").read_bytes()
    assert files[np.float16, "float32"] == files[np.float32, "float32"]
    assert files[np.float16, "float16"] == files[np.float32, "float16"]


def test_external_data_is_read(tmp_path):
    model = onnx.load(str(EXAMPLE))
    path = tmp_path / "ext" / "gen.onnx"
    path.parent.mkdir()
    onnx.save_model(model, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="gen.data", size_threshold=0)
    assert (path.parent / "gen.data").stat().st_size > 100_000
    manifest = export(path, tmp_path / "out", progress=False)
    check_against_ort(manifest, tmp_path / "out", onnx.load(str(EXAMPLE)))
    direct = export(EXAMPLE, tmp_path / "direct", progress=False)
    assert [e["files"] for e in manifest["layers"]] == [e["files"] for e in direct["layers"]]


def test_force_replaces_an_earlier_export_only(tmp_path):
    out = tmp_path / "out"
    export(EXAMPLE, out, progress=False, only=["conv1"])
    with pytest.raises(FileExistsError):
        export(EXAMPLE, out, progress=False)
    manifest = export(EXAMPLE, out, progress=False, force=True)
    assert len(manifest["layers"]) == 8
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not replacing"):
        export(EXAMPLE, other, progress=False, force=True)
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(tmp_path, capsys):
    from mpslayout.export.progress import Progress

    tty = _Terminal()
    bar = Progress(2, 3 << 20, True, stream=tty)
    bar.start("conv1")
    bar.advance(1 << 20)
    bar.finish_layer()
    bar.close()
    assert "layers" in tty.getvalue()
    quiet = io.StringIO()
    bar = Progress(2, 100, True, stream=quiet)
    bar.start("conv1")
    bar.advance(100)
    bar.close()
    assert quiet.getvalue() == ""
    export(EXAMPLE, tmp_path / "out", progress=True)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------- constants


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (4, 1, 1), (1, 1, 5, 1), (1, 1, 1, 6),
                                   (6,), (1, 4, 5, 6), (), (5, 1), (1, 1, 1, 1)])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("first", [False, True])
def test_arithmetic_constants_match_ort(tmp_path, shape, op, first):
    """A constant operand after a Sigmoid (nothing to fold into): an arithmetic layer whose
    constant image and broadcast strides reproduce ONNX Runtime (export_ref reads the
    slices and broadcasts along the axes where the constant holds one value)."""
    rng = np.random.default_rng(21)
    k = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    ins = ["k", "r"] if first else ["r", "k"]
    model = make_model([helper.make_node("Sigmoid", ["x"], ["r"], name="sig"),  # c / x > 0
                        helper.make_node(op, ins, ["y"], name="arith")],
                       {"x": [1, 4, 5, 6]}, ["y"], {"k": k})
    manifest = export_and_check(model, tmp_path, strict=True)
    (entry,) = manifest["layers"]
    assert entry["constant_operand"] == ("primary" if first else "secondary")
    full = (1,) * (4 - len(shape)) + shape
    assert entry["constant_shape"] == {"height": full[2], "width": full[3],
                                       "channels": full[1]}
    assert entry["broadcast_strides"] == {"x": int(full[3] > 1), "y": int(full[2] > 1),
                                          "feature_channels": int(full[1] > 1)}


def test_gemm_and_grouped_transpose_fold_affine_chains(tmp_path):
    """Gemm (alpha, beta, transB) -> Mul (1, O) -> Sub (O,) and a grouped ConvTranspose ->
    BatchNormalization -> Mul (C, 1, 1) -> Add: each one layer, exact against ORT."""
    rng = np.random.default_rng(31)
    model = make_model(
        [helper.make_node("Gemm", ["v", "gw", "gb"], ["g"], name="fc", transB=1, alpha=0.5,
                          beta=2.0),
         helper.make_node("Mul", ["g", "gs"], ["gm"], name="fc_mul"),
         helper.make_node("Sub", ["gm", "gt"], ["y1"], name="fc_sub"),
         helper.make_node("ConvTranspose", ["x", "tw"], ["t"], name="up", strides=[2, 2],
                          group=2),
         helper.make_node("BatchNormalization", ["t", "s", "b", "m", "var"], ["tb"],
                          name="bn"),
         helper.make_node("Mul", ["tb", "ts"], ["tm"], name="up_mul"),
         helper.make_node("Add", ["tm", "tt"], ["y2"], name="up_add")],
        {"v": [2, 6], "x": [1, 8, 3, 3]}, ["y1", "y2"],
        {"gw": rand(rng, 5, 6), "gb": rand(rng, 5), "gs": rand(rng, 1, 5) + 1,
         "gt": rand(rng, 5), "tw": rand(rng, 8, 4, 2, 2), "s": rand(rng, 8) + 1,
         "b": rand(rng, 8), "m": rand(rng, 8), "var": np.abs(rand(rng, 8)) + 0.5,
         "ts": rand(rng, 8, 1, 1) + 1, "tt": rand(rng, 1, 8, 1, 1)},
    )
    manifest = export_and_check(model, tmp_path, fold_bn=True, strict=True)
    e = by_name(manifest)
    assert len(e) == 2
    assert [f["node"] for f in e["fc"]["source"]["fused"]] == ["fc_mul", "fc_sub"]
    assert e["fc"]["source"]["output"] == "y1"
    assert e["fc"]["source"]["tensors"] == ["gw", "gb", "gs", "gt"]
    assert e["up"]["source"]["folded_batch_norm"] == "bn"
    assert e["up"]["source"]["tensors"] == ["tw", "s", "b", "m", "var", "ts", "tt"]
    assert e["up"]["source"]["output"] == "y2"
    (tmp_path / "f16").mkdir()
    export_and_check(model, tmp_path / "f16", dtype="float16", fold_bn=True)


def test_constant_nodes_and_identity_chains_are_learned_tensors_too(tmp_path):
    """A bias held by a Constant node (older exporters) folds like an initializer, a scale
    reached through Identity nodes too; both are named in source.tensors."""
    rng = np.random.default_rng(33)
    bias = rand(rng, 1, 4, 1, 1)
    model = make_model(
        [helper.make_node("Constant", [], ["cb"], name="const_b",
                          value=numpy_helper.from_array(bias, "cb_value")),
         helper.make_node("Identity", ["s"], ["s1"], name="id1"),
         helper.make_node("Identity", ["s1"], ["s2"], name="id2"),
         helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Mul", ["c", "s2"], ["m"], name="mul"),
         helper.make_node("Add", ["m", "cb"], ["y"], name="add")],
        {"x": [1, 3, 4, 4]}, ["y"],
        {"w": rand(rng, 4, 3, 3, 3), "s": rand(rng, 4, 1, 1) + 1},
    )
    manifest = export_and_check(model, tmp_path, strict=True)
    (conv,) = manifest["layers"]
    assert conv["source"]["tensors"] == ["w", "s", "cb"]
    assert [f["tensor"] for f in conv["source"]["fused"]] == ["s", "cb"]


def test_input_dims_resolve_a_computed_reshape_target(tmp_path):
    """Gemm -> Reshape to Shape(img): with symbolic dims the target is unknown (said in the
    notes and assumptions); with --input-dims it is known and the rows are reordered."""
    rng = np.random.default_rng(34)
    model = make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc", transB=1),
         helper.make_node("Shape", ["img"], ["sh"], name="shape"),
         helper.make_node("Reshape", ["g", "sh"], ["r"], name="reshape"),
         helper.make_node("Conv", ["r", "cw"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        {"x": ["N", 8], "img": ["N", 4, "H", "W"]}, ["y"],
        {"w": rand(rng, 16, 8), "b": rand(rng, 16), "cw": rand(rng, 2, 4, 3, 3)})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    manifest = export(path, tmp_path / "a", progress=False)
    assert "fc" in manifest["assumptions"][0]
    assert "reshape" not in by_name(manifest)["fc"]
    manifest = export(path, tmp_path / "b", input_dims={"x": (1, 8), "img": (1, 4, 2, 2)},
                      progress=False)
    fc = by_name(manifest)["fc"]
    assert fc["reshape"]["shape"] == {"height": 2, "width": 2, "channels": 4}
    assert manifest["inputs"] == {"x": [1, 8], "img": [1, 4, 2, 2]}
    assert manifest["assumptions"] == []
