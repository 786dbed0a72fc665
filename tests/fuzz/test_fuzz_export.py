"""The export fuzz target (fuzz_export.py) driven by hypothesis for a fixed time, and the
fuzzer's findings as regression tests: a hostile model file must be refused with ValueError
(or exported), never raise another exception type, and never hang.

``MPSLAYOUT_FUZZ_EXPORT_SECONDS`` sets the fuzzing time (default 10).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from fuzz_convert import hypothesis_run
from fuzz_export import EXAMPLE_ONNX, KERAS_LAYERS, check_one, keras2_bytes

from mpslayout.export import export

SECONDS = float(os.environ.get("MPSLAYOUT_FUZZ_EXPORT_SECONDS", "10"))
MAX_EXAMPLES = 100  # per batch
REGRESSIONS = Path(__file__).parent / "regressions"


def test_fuzz_export(record_property) -> None:
    counts, batches = hypothesis_run(check_one, SECONDS, MAX_EXAMPLES)
    total = sum(counts.values())
    record_property("fuzz_executions", total)
    print(f"export fuzz: {total} executions in {batches} batches: {counts}")


# ------------------------------------------------------------------ findings, as regressions


@pytest.fixture
def onnx():
    onnx = pytest.importorskip("onnx")
    if not EXAMPLE_ONNX.exists():
        pytest.skip("examples/generator.onnx is missing")
    return onnx


def _refused(path: Path, tmp_path: Path, **kw) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any clear refusal; the type is the point
        export(path, tmp_path / "out", progress=False, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def _onnx_refused(onnx, model, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    _refused(path, tmp_path)


def _node(model, name: str):
    return next(n for n in model.graph.node if n.name == name)


def _set_attribute(onnx, node, name: str, value) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*keep, onnx.helper.make_attribute(name, value)])


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_onnx_gemm_with_one_input(onnx, tmp_path: Path, op: str) -> None:
    model = onnx.load(str(EXAMPLE_ONNX))
    _node(model, "relu3").op_type = op  # a one-input node becomes a dense layer
    _onnx_refused(onnx, model, tmp_path)


@pytest.mark.parametrize(
    ("node", "attr"), [("fc2", "transA"), ("dw", "group"), ("head_flatten", "axis")]
)
def test_onnx_int_attribute_given_as_ints(onnx, tmp_path: Path, node: str, attr: str) -> None:
    model = onnx.load(str(EXAMPLE_ONNX))
    _set_attribute(onnx, _node(model, node), attr, [1, 2, 3])
    _onnx_refused(onnx, model, tmp_path)


@pytest.mark.parametrize("attr", ["dilations", "strides"])
def test_onnx_ints_attribute_given_as_int(onnx, tmp_path: Path, attr: str) -> None:
    model = onnx.load(str(EXAMPLE_ONNX))
    _set_attribute(onnx, _node(model, "conv1"), attr, 2)
    _onnx_refused(onnx, model, tmp_path)


def test_onnx_attribute_without_type(onnx, tmp_path: Path) -> None:
    model = onnx.load(str(EXAMPLE_ONNX))
    for a in _node(model, "conv1").attribute:
        if a.name == "pads":
            a.type = onnx.AttributeProto.UNDEFINED  # what one flipped bit of the file does
    _onnx_refused(onnx, model, tmp_path)


def test_onnx_zero_stride(onnx, tmp_path: Path) -> None:
    model = onnx.load(str(EXAMPLE_ONNX))
    _set_attribute(onnx, _node(model, "conv1"), "strides", [2, 0])
    _onnx_refused(onnx, model, tmp_path)


def test_onnx_op_type_not_utf8(onnx, tmp_path: Path) -> None:
    data = bytearray(EXAMPLE_ONNX.read_bytes())
    at = data.index(b"\x22\x07Flatten")  # NodeProto.op_type (field 4) of the Flatten node
    data[at + 2] = 0x80  # "\x80latten"
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes(data))
    _refused(path, tmp_path)


def test_onnx_fold_bn_negative_variance(onnx, tmp_path: Path) -> None:
    model = onnx.load(str(EXAMPLE_ONNX))
    for t in model.graph.initializer:
        if t.name == "bn.var":
            t.raw_data = np.full(8, -1.0, np.float32).tobytes()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _refused(path, tmp_path, fold_bn=True)


def _keras(tmp_path: Path, **conv_cfg) -> Path:
    pytest.importorskip("h5py")
    layers = json.loads(json.dumps(KERAS_LAYERS))
    layers[0][1].update(conv_cfg)
    path = tmp_path / "m.h5"
    path.write_bytes(keras2_bytes([(c, cfg, [tuple(s) for s in sh]) for c, cfg, sh in layers]))
    return path


def test_keras_seed_exports(tmp_path: Path) -> None:
    """The fuzzer's Keras seed is a valid model (else the fuzzing above proves little)."""
    manifest = export(_keras(tmp_path), tmp_path / "out", progress=False)
    assert [x["name"] for x in manifest["layers"]] == ["conv", "fc"]


def test_keras_zero_stride(tmp_path: Path) -> None:
    _refused(_keras(tmp_path, strides=[0, 0]), tmp_path)


@pytest.mark.parametrize("value", [{}, [3], 1.5])
def test_keras_malformed_pair(tmp_path: Path, value) -> None:
    _refused(_keras(tmp_path, strides=value), tmp_path)


HANG = r"""
import sys
from mpslayout.export import export
try:
    export(sys.argv[1], sys.argv[2], progress=False)
except ValueError as e:
    print("refused:", e)
"""


def test_hdf5_attribute_hang(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    path = tmp_path / "m.h5"
    path.write_bytes((REGRESSIONS / "h5_attr_hang.h5").read_bytes())
    cmd = [sys.executable, "-c", HANG, str(path), str(tmp_path / "out")]
    env = {**os.environ, "MPSLAYOUT_HDF5_TIMEOUT": "3"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("export hung on a corrupt HDF5 file")
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stdout
    assert "did not finish in 3 s" in proc.stdout
