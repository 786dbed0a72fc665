"""Hostile and broken model files: a clear error, and nothing written (no OUTDIR, no
temporary folder left beside it). Also a failure half-way through an export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from export_ref import load_export, write_safetensors

import mpslayout.export.targets.mps.convert
from mpslayout.export import ExportError, export

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "generator.onnx"


def assert_nothing_written(folder, *keep):
    """Only the files the test made are in ``folder``: no OUTDIR, no hidden temp folder."""
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(keep)


def refused(model, folder, match, **kw):
    with pytest.raises(ValueError, match=match):
        export(model, Path(folder) / "out", progress=False, **kw)


# ------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx():
    return pytest.importorskip("onnx")


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.5, 0.9, 0.9999])
def test_truncated_onnx(onnx, tmp_path, fraction):
    data = EXAMPLE.read_bytes()
    path = tmp_path / "m.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    refused(path, tmp_path, r"truncated")
    assert_nothing_written(tmp_path, "m.onnx")


def test_every_onnx_truncation_is_refused(onnx, tmp_path):
    data = EXAMPLE.read_bytes()
    path = tmp_path / "m.onnx"
    for cut in range(0, len(data), 997):
        path.write_bytes(data[:cut])
        refused(path, tmp_path, "ONNX")
    assert_nothing_written(tmp_path, "m.onnx")


def external_model(onnx, folder):
    """The example with its initializers in ``folder/gen.data``."""
    folder.mkdir()
    model = onnx.load(str(EXAMPLE))
    path = folder / "gen.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="gen.data", size_threshold=0)
    return path


def set_location(onnx, path, tensor, **entries):
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.name == tensor:
            info = {e.key: e.value for e in t.external_data}
            info.update(entries)
            del t.external_data[:]
            for k, v in info.items():
                t.external_data.add(key=k, value=str(v))
    onnx.save(model, str(path))


@pytest.mark.parametrize("location", ["../secret.data", "sub/../../secret.data",
                                      "ABSOLUTE", "..\\secret.data", "LINK"])
def test_external_data_escaping_the_folder(onnx, tmp_path, location):
    secret = tmp_path / "secret.data"
    secret.write_bytes(np.zeros(4096, np.float32).tobytes())
    path = external_model(onnx, tmp_path / "model")
    if location == "ABSOLUTE":
        location = str(secret)
    elif location == "LINK":
        os.symlink(secret, tmp_path / "model" / "link.data")
        location = "link.data"
    set_location(onnx, path, "conv1.weight", location=location, offset=0)
    with pytest.raises(ValueError, match=r"conv1\.weight.*(outside|leads out|absolute)"):
        export(path, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path, "secret.data", "model")


def test_external_data_sizes(onnx, tmp_path):
    path = external_model(onnx, tmp_path / "model")
    size = (tmp_path / "model" / "gen.data").stat().st_size
    set_location(onnx, path, "fc2.weight", offset=size - 100)
    refused(path, tmp_path, r"fc2\.weight.*needs bytes")
    set_location(onnx, path, "fc2.weight", offset=0, length=12)
    refused(path, tmp_path, r"fc2\.weight.*length is 12")
    set_location(onnx, path, "fc2.weight", offset=-4)
    refused(path, tmp_path, r"negative")
    set_location(onnx, path, "fc2.weight", location="missing.data", offset=0)
    refused(path, tmp_path, r"not found")
    assert_nothing_written(tmp_path, "model")


def test_declared_size_disagrees_with_bytes(onnx, tmp_path):
    model = onnx.load(str(EXAMPLE))
    for t in model.graph.initializer:
        if t.name == "fc1.weight":
            t.raw_data = t.raw_data[:-4]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    refused(path, tmp_path, r"fc1\.weight.* declares shape \[64, 128\].* holds 32764 bytes")

    model = onnx.load(str(EXAMPLE))
    for t in model.graph.initializer:
        if t.name == "up.bias":  # typed storage: 8 values declared, 3 given
            del t.dims[:]
            t.dims.extend([8])
            t.ClearField("raw_data")
            t.float_data.extend([1.0, 2.0, 3.0])
    onnx.save(model, str(path))
    refused(path, tmp_path, r"up\.bias.*8 values.* holds 3")
    assert_nothing_written(tmp_path, "m.onnx")


def test_dangling_graph_is_refused(onnx, tmp_path):
    model = onnx.load(str(EXAMPLE))
    del model.graph.node[0]  # conv1 gone: relu1 reads nothing
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    refused(path, tmp_path, r"relu1.*reads 'c1'")
    assert_nothing_written(tmp_path, "m.onnx")


# ------------------------------------------------------------------------- safetensors


def good_safetensors(path):
    rng = np.random.default_rng(0)
    write_safetensors(path, {"conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
                             "fc.weight": rng.standard_normal((10, 32)).astype(np.float32)})
    return path.read_bytes()


def header_of(data):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def with_header(header, body):
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


def test_safetensors_hostile(tmp_path):
    path = tmp_path / "m.safetensors"
    data = good_safetensors(path)
    header, body = header_of(data)
    cases = {
        "truncated data": (data[:-100], r"truncated"),
        "truncated header": (data[:20], r"truncated"),
        "shorter than the length": (data[:5], r"not a safetensors file"),
        "absurd header length": ((1 << 40).to_bytes(8, "little") + data[8:], r"absurd"),
        "length past the end": ((len(data)).to_bytes(8, "little") + data[8:], r"truncated"),
        "not JSON": (b"\x04\x00\x00\x00\x00\x00\x00\x00{{{{" + body, r"not valid JSON"),
    }
    bad = json.loads(json.dumps(header))
    bad["fc.weight"]["shape"] = [10, 33]
    cases["shape disagrees with bytes"] = (with_header(bad, body), r"fc\.weight.*declares")
    bad = json.loads(json.dumps(header))
    bad["fc.weight"]["data_offsets"] = [0, 1280]
    cases["overlap"] = (with_header(bad, body), r"overlap")
    bad = json.loads(json.dumps(header))
    bad["fc.weight"]["shape"] = [10, -32]
    cases["negative dim"] = (with_header(bad, body), r"non-negative")
    bad = json.loads(json.dumps(header))
    bad["fc.weight"]["dtype"] = "Q4"
    cases["unknown dtype"] = (with_header(bad, body), r"unknown safetensors dtype")
    raw = json.dumps(header).encode()
    dup = raw[:-1] + b', "fc.weight": ' + json.dumps(header["fc.weight"]).encode() + b"}"
    cases["duplicate"] = (len(dup).to_bytes(8, "little") + dup + body, r"twice")
    for content, match in cases.values():
        path.write_bytes(content)
        with pytest.raises(ValueError, match=match):
            export(path, tmp_path / "out", progress=False)
        assert_nothing_written(tmp_path, "m.safetensors")


def test_truncated_pt(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.pt"
    torch.save({"fc.weight": torch.ones(10, 32)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(path, tmp_path, r"torch\.load")
    assert_nothing_written(tmp_path, "m.pt")


# ------------------------------------------------------------------------- failures


def test_failure_half_way_names_the_layer_and_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise MemoryError("simulated")

    out = tmp_path / "out"
    export(EXAMPLE, out, progress=False, only=["conv1"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(mpslayout.export.targets.mps.convert.mps, "fc_weights", broken)
    with pytest.raises(ExportError, match=r"layer 'fc1' \(Gemm\) failed: MemoryError") as e:
        export(EXAMPLE, out, progress=False, force=True)
    assert e.value.layer == "fc1"
    with pytest.raises(ExportError, match="fc1"):
        export(EXAMPLE, tmp_path / "fresh", progress=False)
    assert calls
    assert_nothing_written(tmp_path, "out")  # the earlier export is untouched
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_reports_one_line(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    proc = subprocess.run([sys.executable, "-m", "mpslayout", "export", str(path), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("mpslayout: error: ")
    assert proc.stderr.count("\n") == 1
    assert "absurd" in proc.stderr
    assert_nothing_written(tmp_path, "m.safetensors")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"dtype": "bfloat16"}, ValueError, "'float32', 'float16' or 'uint8'"),
    ({"dtype": object()}, TypeError, "dtype"),
    ({"input_shapes": {"fc1": (8, 4)}}, ValueError, r"input_shapes\['fc1'\]"),
    ({"input_shapes": [("fc1", (8, 4, 4))]}, TypeError, "mapping"),
    ({"reshapes": {"fc2": (0, 4, 16)}}, ValueError, "positive"),
    ({"strict": 1}, TypeError, "strict must be a bool"),
    ({"only": []}, ValueError, "empty"),
])
def test_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export(EXAMPLE, tmp_path / "out", progress=False, **kwargs)
    assert_nothing_written(tmp_path)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        export(tmp_path / "nope.onnx", tmp_path / "out")
    path = tmp_path / "weights.xyz"
    path.write_bytes(b"hello world, not a model")
    with pytest.raises(ValueError, match="cannot tell the format"):
        export(path, tmp_path / "out")
    assert_nothing_written(tmp_path, "weights.xyz")


# ------------------------------------------------------------------------- input dims


@pytest.mark.parametrize(("dims", "error", "match"), [
    ({"nope": (1, 3, 8, 8)}, ValueError, r"'nope', which is not an input.*'x'"),
    ({"x": (1, 3, 8)}, ValueError, "gives 3 dims.*rank 4"),
    ({"x": (1, 3, 8, 8, 1)}, ValueError, "rank 4"),
    ({"x": (1, 4, 8, 8)}, ValueError, r"dim 1 is 4, but the model fixes it to 3"),
    ({"x": (1, 3, 0, 8)}, ValueError, "positive"),
    ({"x": (1, 3, -8, 8)}, ValueError, "positive"),
    ({"x": (1, 3, 1 << 40, 8)}, ValueError, "absurd"),
    ({"x": ()}, TypeError, "non-empty"),
    ({"x": (1, 3, 8.5, 8)}, TypeError, "ints"),
    ({"x": (1, True, 8, 8)}, TypeError, "ints"),
    ({"x": "1,3,8,8"}, TypeError, "ints"),
    ({"x": 5}, TypeError, "sequence"),
    ({3: (1, 3, 8, 8)}, TypeError, "names"),
    ([("x", (1, 3, 8, 8))], TypeError, "mapping"),
])
def test_bad_input_dims(onnx, tmp_path, dims, error, match):
    with pytest.raises(error, match=match):
        export(EXAMPLE, tmp_path / "out", input_dims=dims, progress=False)
    assert_nothing_written(tmp_path)


def test_input_dims_need_an_onnx_graph(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"fc.weight": np.zeros((2, 3), np.float32)})
    refused(path, tmp_path, "input_dims fixes the inputs of an ONNX or Keras graph",
            input_dims={"x": (1, 3)})
    assert_nothing_written(tmp_path, "m.safetensors")


@pytest.mark.parametrize("arg", ["x", "x=", "=1,2", "x=1,,2", "x=1,a", "x=0,3", "x=1,-3"])
def test_cli_bad_input_dims(tmp_path, arg):
    proc = subprocess.run([sys.executable, "-m", "mpslayout", "export", str(EXAMPLE), "-o",
                           str(tmp_path / "out"), "--input-dims", arg],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "NAME=D0,D1" in proc.stderr
    assert_nothing_written(tmp_path)


def test_cli_input_dims_given_twice(onnx, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mpslayout", "export", str(EXAMPLE), "-o",
                           str(tmp_path / "out"), "--input-dims", "x=1,3,8,8",
                           "--input-dims", "x=2,3,8,8"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert "gives 'x' twice" in proc.stderr


# ------------------------------------------------------------------------- odd constants


def _graph(onnx, nodes, inits, x_shape, outputs=("y",)):
    h = onnx.helper
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [h.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _export_graph(onnx, tmp_path, model, **kw):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return export(path, tmp_path / "out", progress=False, **kw)


@pytest.mark.parametrize(("shape", "folded"), [
    ((1, 4, 1, 1), True), ((4, 1, 1), True), ((), True), ((1,), True), ((1, 1, 1, 1), True),
    ((1, 4, 5, 5), False),  # a per-pixel map: not per-channel
    ((1, 1, 5, 1), False),  # per-row
    ((4,), False),          # along W, not C: an arithmetic layer
    ((2, 4, 1, 1), False),  # along N: not even an MPS broadcast
    ((1, 1, 1, 4, 1, 1), False),  # rank 6
])
def test_mul_after_conv_folds_only_when_per_channel(onnx, tmp_path, shape, folded):
    """Whatever the constant's shape, its values reach the export: folded into the conv
    when per-channel, else an arithmetic or tensor layer; and strict never fails."""
    rng = np.random.default_rng(0)
    h = onnx.helper
    c = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    x_w = 5 if shape != (4,) else 4
    model = _graph(onnx, [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                          h.make_node("Mul", ["c", "k"], ["y"], name="mul")],
                   {"w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "k": c},
                   [1, 3, 5, x_w])
    manifest = _export_graph(onnx, tmp_path, model, strict=True)
    e = {x["name"]: x for x in manifest["layers"]}
    assert ("fused" in e["conv"]["source"]) == folded
    if folded:
        assert e["conv"]["source"]["tensors"] == ["w", "k"]
        assert len(e) == 1
        return
    entry = e.get("mul") or e["mul.scale"]
    assert entry["source"]["tensors"] == ["k"]
    # along W, H or both is an MPS broadcast; along N or at rank 6 it is not
    image = shape in ((1, 4, 5, 5), (1, 1, 5, 1), (4,))
    assert entry["kind"] == ("arithmetic" if image else "tensor")


@pytest.mark.parametrize("value", [0.0, np.inf, np.nan])
def test_div_by_zero_or_non_finite_is_not_folded(onnx, tmp_path, value):
    rng = np.random.default_rng(1)
    h = onnx.helper
    k = np.array([1.0, value, 2.0, 3.0], np.float32).reshape(1, 4, 1, 1)
    model = _graph(onnx, [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                          h.make_node("Div", ["c", "k"], ["y"], name="div")],
                   {"w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "k": k},
                   [1, 3, 2, 2])
    manifest = _export_graph(onnx, tmp_path, model, strict=True)
    e = {x["name"]: x for x in manifest["layers"]}
    assert "fused" not in e["conv"]["source"]
    assert e["div"]["kind"] == "arithmetic"


def test_constant_first_sub_and_shared_outputs_are_not_folded(onnx, tmp_path):
    rng = np.random.default_rng(2)
    h = onnx.helper
    k = rng.standard_normal((1, 4, 1, 1)).astype(np.float32)
    model = _graph(onnx, [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                          h.make_node("Sub", ["k", "c"], ["y"], name="rsub"),
                          h.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
                          h.make_node("Add", ["c2", "k2"], ["y2"], name="add2")],
                   {"w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "k": k,
                    "w2": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
                    "k2": k + 1},
                   [1, 3, 2, 2], outputs=("y", "y2", "c2"))
    manifest = _export_graph(onnx, tmp_path, model, strict=True)
    e = {x["name"]: x for x in manifest["layers"]}
    assert "fused" not in e["conv"]["source"]
    assert e["rsub"]["constant_operand"] == "primary"
    assert "fused" not in e["conv2"]["source"]  # c2 is also a graph output
    assert e["add2"]["op"] == "add"


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (7,), (2, 3, 4, 5, 6), (0,)])
def test_constants_of_odd_ranks_become_tensors(onnx, tmp_path, shape):
    rng = np.random.default_rng(3)
    h = onnx.helper
    k = rng.standard_normal(shape).astype(np.float32)
    model = _graph(onnx, [h.make_node("Add", ["x", "k"], ["y"], name="add")], {"k": k},
                   [7])
    manifest = _export_graph(onnx, tmp_path, model, strict=True)
    (entry,) = manifest["layers"]
    assert (entry["kind"], entry["role"], entry["source"]["tensors"]) == ("tensor", "shift",
                                                                          ["k"])
    assert entry["files"]["tensor"]["shape"] == list(shape)


def test_a_scale_that_would_overflow_float32_is_not_folded(onnx, tmp_path):
    rng = np.random.default_rng(4)
    h = onnx.helper
    k = np.array([1.0, 3e38, 2.0, 1.0], np.float32).reshape(1, 4, 1, 1)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32) * 4
    model = _graph(onnx, [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                          h.make_node("Mul", ["c", "k"], ["y"], name="mul")],
                   {"w": w, "k": k}, [1, 3, 2, 2])
    manifest = _export_graph(onnx, tmp_path, model, strict=True)
    e = {x["name"]: x for x in manifest["layers"]}
    assert "fused" not in e["conv"]["source"]
    assert e["mul"]["kind"] == "arithmetic"
    _, arrays = load_export(tmp_path / "out")
    assert np.isfinite(arrays["conv"]["weights"]).all()
