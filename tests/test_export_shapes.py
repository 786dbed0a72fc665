"""A Linear whose input size only a run can tell (issue 17 item 3): Paddle and dynamic
PyTorch exports compute a flatten's shape through Shape/Gather/Unsqueeze/Concat subgraphs
that ONNX shape inference does not resolve. With ``--input-dims`` the export resolves them
by constant propagation, or, for what that cannot prove, by one ONNX Runtime run; no
``--input-shape`` is needed, and no hint asks for a flag already given. Each export is
verified against ONNX Runtime; each mechanism's planted removal is seen failing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

import mpslayout  # noqa: E402
from mpslayout.export.sources.onnx import shapes  # noqa: E402
from mpslayout.verify import verify  # noqa: E402

DIMS = {"x": (2, 3, 6, 5)}


def paddle_model(path: Path, opset: int, *, opaque: bool = False) -> None:
    """Conv -> Relu -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) -> MatMul
    -> Add, as paddle2onnx writes a flatten before a Linear (attribute-form Unsqueeze and
    Squeeze before opset 13). ``opaque``: the batch size goes through Log/Exp/Round, which
    no constant propagation evaluates (only a run tells)."""
    rng = np.random.default_rng(1)
    inits = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv_w"),
             nh.from_array(rng.standard_normal(8).astype(np.float32), "conv_b"),
             nh.from_array(rng.standard_normal((8 * 6 * 5, 7)).astype(np.float32), "fc_w"),
             nh.from_array(rng.standard_normal(7).astype(np.float32), "fc_b"),
             nh.from_array(np.array([0], np.int64), "zero"),
             nh.from_array(np.array([-1], np.int64), "minus1")]
    nodes = [h.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Shape", ["r"], ["s"]),
             h.make_node("Gather", ["s", "zero"], ["n"], axis=0)]
    if opaque:
        nodes += [h.make_node("Cast", ["n"], ["nf"], to=T.FLOAT),
                  h.make_node("Log", ["nf"], ["nl"]), h.make_node("Exp", ["nl"], ["ne"]),
                  h.make_node("Round", ["ne"], ["nr"]),
                  h.make_node("Cast", ["nr"], ["n2"], to=T.INT64)]
    else:
        nodes.append(h.make_node("Identity", ["n"], ["n2"]))
    if opset >= 13:
        nodes += [h.make_node("Squeeze", ["n2", "zero"], ["n3"]),
                  h.make_node("Unsqueeze", ["n3", "zero"], ["n4"])]
    else:
        nodes += [h.make_node("Squeeze", ["n2"], ["n3"], axes=[0]),
                  h.make_node("Unsqueeze", ["n3"], ["n4"], axes=[0])]
    nodes += [h.make_node("Concat", ["n4", "minus1"], ["shape"], axis=0),
              h.make_node("Reshape", ["r", "shape"], ["flat"]),
              h.make_node("MatMul", ["flat", "fc_w"], ["mm"], name="linear"),
              h.make_node("Add", ["mm", "fc_b"], ["y"])]
    graph = h.make_graph(nodes, "paddle", [h.make_tensor_value_info("x", T.FLOAT,
                                                                    ["N", 3, "H", "W"])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 7])], inits)
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def torch_model(path: Path, mode: str) -> Any:
    """Conv -> Relu -> ``x.view(x.size(0), -1)`` or ``torch.flatten(x, 1)`` -> Linear,
    exported with batch, height and width dynamic."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    gen = torch.Generator().manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 6 * 5, 7)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.c(x))
            y = y.view(y.size(0), -1) if mode == "view" else torch.flatten(y, 1)
            return self.fc(y)

    m = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, 6, 5),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=13,
                          dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})
    return m


def _export_and_verify(path: Path, tmp: Path) -> dict[str, Any]:
    out = tmp / "out"
    mpslayout.export(str(path), str(out), strict=True, input_dims=DIMS, progress=False)
    doc = json.loads((out / "manifest.json").read_text())
    kinds = [e["kind"] for e in doc["layers"]]
    assert kinds == ["convolution", "fully_connected"]
    fc = doc["layers"][1]
    assert fc["fully_connected"]["source_image"] == {"height": 6, "width": 5, "channels": 8}
    rep = verify(out, path, input_dims=DIMS)
    assert rep.ok, [r.error for r in rep.rows]
    return doc


MODELS = {"paddle_opset11": lambda p: paddle_model(p, 11),
          "paddle_opset13": lambda p: paddle_model(p, 13),
          "torch_view": lambda p: torch_model(p, "view"),
          "torch_flatten": lambda p: torch_model(p, "flatten")}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_flatten_shape_resolved_with_input_dims(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.onnx"
    MODELS[name](path)
    doc = _export_and_verify(path, tmp_path)
    assert not any("ONNX Runtime run" in a for a in doc["assumptions"])  # no run needed


def test_constant_propagation_is_what_resolves_them(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """Planted: no propagation rounds and no run. The view flatten and the Paddle flatten
    are then left behind (ONNX's own data propagation does not resolve them)."""
    monkeypatch.setattr(shapes, "_ROUNDS", 0)
    monkeypatch.setattr(shapes, "_run_once", lambda g, onnx: None)
    for name in ("torch_view", "paddle_opset11"):
        path = tmp_path / f"{name}.onnx"
        MODELS[name](path)
        with pytest.raises(ValueError, match="strict"):
            _export_and_verify(path, tmp_path / name)


def test_onnx_runtime_reads_what_propagation_cannot(tmp_path: Path) -> None:
    path = tmp_path / "opaque.onnx"
    paddle_model(path, 13, opaque=True)
    doc = _export_and_verify(path, tmp_path)
    assert any("ONNX Runtime run on zero inputs" in a for a in doc["assumptions"])


def test_without_the_run_the_hint_does_not_repeat_a_given_flag(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Planted: the ONNX Runtime run off. The Linear is left behind, and the reason
    asks for --input-shape, not for the --input-dims that was given."""
    monkeypatch.setattr(shapes, "_run_once", lambda g, onnx: None)
    path = tmp_path / "opaque.onnx"
    paddle_model(path, 13, opaque=True)
    with pytest.raises(ValueError, match="strict") as e:
        mpslayout.export(str(path), str(tmp_path / "o"), strict=True, input_dims=DIMS,
                         progress=False)
    msg = str(e.value)
    assert "--input-shape linear=C,H,W" in msg
    assert "pass --input-dims" not in msg
    assert "even with the given --input-dims" in msg
    # without --input-dims, that is the flag to suggest
    with pytest.raises(ValueError, match="pass --input-dims"):
        mpslayout.export(str(path), str(tmp_path / "o2"), strict=True, progress=False)


def test_torch_output_matches_the_export(tmp_path: Path) -> None:
    """The exported Linear, applied by hand to the conv's output image read in MPS's
    (H, W, C) order, gives PyTorch's answer: the flatten order was resolved right."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "view.onnx"
    m = torch_model(path, "view")
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), strict=True, input_dims=DIMS, progress=False)
    doc = json.loads((out / "manifest.json").read_text())
    fc = doc["layers"][1]["files"]
    w = np.fromfile(out / fc["weights"]["file"], np.float32).reshape(fc["weights"]["shape"])
    b = np.fromfile(out / fc["bias"]["file"], np.float32)
    x = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        img = torch.relu(m.c(x)).permute(0, 2, 3, 1).numpy()  # NHWC, as MPS holds it
        want = m(x).numpy()
    got = np.einsum("nhwc,ohwc->no", img, w) + b
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
