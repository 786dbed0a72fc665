"""ONNX's own test models as a conformance suite (docs/verify.md, "ONNX's test models"): every
model of ``onnx/backend/test/data/pytorch-converted/`` with learned tensors, from the
installed onnx package, exports with ``strict=True`` and verifies OK on its shipped input,
its final output also compared with the shipped ``output_0.pb``; or it is refused with a
reason from the documented list (no MPS kernel). The ``light/`` networks (weights made by
ConstantOfShape) export with ``strict=True`` and verify OK on a seeded input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from mpslayout.export import export  # noqa: E402
from mpslayout.verify import verify  # noqa: E402

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"

# the documented refusals (docs/verify.md): MPSCNN has no kernel for these layers
REFUSALS = {
    "test_Conv3d": "MPSCNN has no 3-D convolution",
    "test_Conv3d_dilated": "MPSCNN has no 3-D convolution",
    "test_Conv3d_dilated_strided": "MPSCNN has no 3-D convolution",
    "test_Conv3d_groups": "MPSCNN has no 3-D convolution",
    "test_Conv3d_no_bias": "MPSCNN has no 3-D convolution",
    "test_Conv3d_stride": "MPSCNN has no 3-D convolution",
    "test_Conv3d_stride_padding": "MPSCNN has no 3-D convolution",
}


def _learned(model) -> bool:
    """A model with learned tensors: a float initializer (or a ConstantOfShape weight)."""
    floats = [t for t in model.graph.initializer if t.data_type in (1, 10, 11, 16)]
    return bool(floats) or any(n.op_type == "ConstantOfShape" for n in model.graph.node)


def _converted():
    folder = DATA / "pytorch-converted"
    if not folder.is_dir():
        return []
    out = []
    for d in sorted(folder.iterdir()):
        m = d / "model.onnx"
        if m.is_file() and _learned(onnx.load(str(m), load_external_data=False)):
            out.append(d.name)
    return out


def _read(pb: Path) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(pb)))


@pytest.mark.parametrize("name", _converted())
def test_pytorch_converted(name, tmp_path):
    d = DATA / "pytorch-converted" / name
    model = d / "model.onnx"
    proto = onnx.load(str(model))
    data = d / "test_data_set_0"
    inputs = [vi.name for vi in proto.graph.input
              if vi.name not in {t.name for t in proto.graph.initializer}]
    feeds = {n: _read(data / f"input_{i}.pb") for i, n in enumerate(inputs)}
    expect = {proto.graph.output[0].name: _read(data / "output_0.pb")}
    out = tmp_path / "out"
    if name in REFUSALS:
        with pytest.raises(ValueError, match=REFUSALS[name]):
            export(model, out, strict=True, progress=False)
        assert not out.exists()
        return
    export(model, out, strict=True, progress=False)
    report = verify(out, model, input=feeds, expect=expect)
    assert report.ok, report.table()
    assert report.verdict == "ok"


def _light():
    folder = DATA / "light"
    return sorted(p.name for p in folder.glob("*.onnx")) if folder.is_dir() else []


@pytest.mark.parametrize("name", _light())
def test_light_networks(name, tmp_path):
    model = DATA / "light" / name
    out = tmp_path / "out"
    doc = export(model, out, strict=True, progress=False)
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(model)).graph.node)
    exported = sum(x["kind"] in ("convolution", "depthwise") for x in doc["layers"])
    assert exported == convs  # every convolution, its ConstantOfShape weight evaluated
    report = verify(out, model)
    assert report.ok, report.table()
