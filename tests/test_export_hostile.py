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
from export_ref import write_safetensors

import mpslayout.export.layers
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
    monkeypatch.setattr(mpslayout.export.layers.mps, "fc_weights", broken)
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
    ({"dtype": "bfloat16"}, ValueError, "float32' or 'float16"),
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
