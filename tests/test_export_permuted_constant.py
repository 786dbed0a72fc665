"""A per-element op with a constant operand inside a permuted flatten: ``x.permute(0, 2, 3,
1) * 0.5``, ``- 1.0``, ``1.0 - x``, ``x / 4``, ``x ** 2``, ``2.0 / (x + 3)``, a per-channel
scale and shift (torch.onnx.export), and tf2onnx-style graphs where a converter left a
folded BatchNorm as a per-channel Mul/Add (or ``c - x``, ``c / x``) after its NCHW -> NHWC
Transpose.

The export folds the permutation into the Linear's columns through the op, records the
constant as the image sees it (a number, or one per image channel) with its operand
position, and the app applies it to the conv's image before the layer. Checked here
without verify: ONNX Runtime's conv output, the recorded ops applied to it by numpy,
then the exported weights and bias, must give ONNX Runtime's output of the original model;
then by verify (MPS against ONNX Runtime, MLX by MLX). A constant that does not land on
the image as one value per channel is not folded through (the layer's notes name the
node). Planted bugs: operand order swapped for Sub/Div, a per-channel constant on the
wrong channels, the fold allowed for a constant that does not map: each fails.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import mpslayout  # noqa: E402
from mpslayout.cli import main  # noqa: E402
from mpslayout.export.sources.onnx import permute  # noqa: E402
from mpslayout.verify import permuted as verify_permuted  # noqa: E402
from mpslayout.verify import verify  # noqa: E402

C, H, W, OUT = 6, 5, 4, 7
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"


class Net(torch.nn.Module):
    """conv -> permute(0, 2, 3, 1) (or (0, 3, 2, 1)) -> the op -> flatten -> Linear."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.kind = kind
        self.c = torch.nn.Conv2d(3, C, 3, padding=1)
        self.fc = torch.nn.Linear(C * H * W, OUT)
        self.scale = torch.nn.Parameter(torch.randn(C, generator=gen))
        self.shift = torch.nn.Parameter(torch.randn(C, generator=gen))
        with torch.no_grad():
            for p in (self.c.weight, self.c.bias, self.fc.weight, self.fc.bias):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: Any) -> Any:
        y = self.c(x)
        y = y.permute(0, 3, 2, 1) if self.kind == "wh_channel" else y.permute(0, 2, 3, 1)
        if self.kind == "mul":
            y = y * 0.5
        elif self.kind == "sub":
            y = y - 1.0
        elif self.kind == "rsub":
            y = 1.0 - y
        elif self.kind == "div":
            y = y / 4.0
        elif self.kind == "pow":
            y = y ** 2
        elif self.kind == "rdiv":
            y = 2.0 / (y + 3)
        elif self.kind in ("channel", "wh_channel"):
            y = torch.relu(y * self.scale + self.shift)
        return self.fc(y.flatten(1))


# the binary ops each kind puts in the chain (torch writes 2 / (x + 3) as Add, Reciprocal, Mul)
KINDS = {"mul": ["Mul"], "sub": ["Sub"], "rsub": ["Sub"], "div": ["Div"], "pow": ["Pow"],
         "rdiv": ["Add", "Mul"], "channel": ["Mul", "Add"], "wh_channel": ["Mul", "Add"]}


def _torch_model(tmp: Path, kind: str, dynamic: bool = False) -> Path:
    path = tmp / f"{kind}{'_dyn' if dynamic else ''}.onnx"
    kw: dict[str, Any] = {"input_names": ["x"], "output_names": ["y"], "opset_version": 13}
    if dynamic:
        kw["dynamic_axes"] = {"x": {0: "N"}, "y": {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net(kind).eval(), (torch.randn(2, 3, H, W),), str(path),
                          dynamo=False, **kw)
    return path


# ------------------------------------------------------------ tf2onnx-style graphs

def _tf2onnx(tmp: Path, tail: str) -> Path:
    """Conv -> Transpose(0, 2, 3, 1) -> TAIL -> Reshape(N, -1) -> MatMul + Add, the batch
    symbolic, as tf2onnx writes a Keras Conv2D -> BatchNorm -> Flatten -> Dense it moved to
    NCHW: ``bn``: Mul by a (C,) scale, Add of a (1, 1, 1, C) shift; ``rsub_rdiv``: a
    per-channel ``c - x`` then a scalar ``c / (x + 10)`` (constants first); ``hw``: a
    (1, H, W, 1) Mul, one value per pixel, which does not map onto the image's channels."""
    rng = np.random.default_rng(7)
    inits = {"conv.w": (rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32),
             "conv.b": (rng.standard_normal(C) * 0.3).astype(np.float32),
             "fc.w": (rng.standard_normal((C * H * W, OUT)) * 0.3).astype(np.float32),
             "fc.b": (rng.standard_normal(OUT) * 0.3).astype(np.float32),
             "flat_shape": np.array([-1, C * H * W], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], pads=[1, 1, 1, 1],
                              name="conv"),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc")]
    if tail == "bn":
        inits["bn.scale"] = (rng.standard_normal(C) + 1.5).astype(np.float32)
        inits["bn.shift"] = rng.standard_normal((1, 1, 1, C)).astype(np.float32)
        nodes += [helper.make_node("Mul", ["t", "bn.scale"], ["m"], name="bn/mul"),
                  helper.make_node("Add", ["m", "bn.shift"], ["z"], name="bn/add")]
    elif tail == "rsub_rdiv":
        inits["minuend"] = rng.standard_normal(C).astype(np.float32)
        inits["ten"] = np.array(10.0, np.float32)
        inits["two"] = np.array([2.0], np.float32)
        nodes += [helper.make_node("Sub", ["minuend", "t"], ["s"], name="rsub"),
                  helper.make_node("Add", ["s", "ten"], ["s10"], name="plus10"),
                  helper.make_node("Div", ["two", "s10"], ["z"], name="rdiv")]
    else:
        inits["pixel"] = rng.standard_normal((1, H, W, 1)).astype(np.float32)
        nodes += [helper.make_node("Mul", ["t", "pixel"], ["z"], name="per_pixel")]
    nodes += [helper.make_node("Reshape", ["z", "flat_shape"], ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", "fc.w"], ["mm"], name="dense"),
              helper.make_node("Add", ["mm", "fc.b"], ["y"], name="dense/bias")]
    graph = helper.make_graph(
        nodes, "tf2onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["N", 3, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    path = tmp / f"tf2onnx_{tail}.onnx"
    onnx.save(model, str(path))
    return path


# ------------------------------------------------- the app's computation, by numpy

_NUMPY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
          "Pow": np.power}


def _ort(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime's conv output (the image) and ``y`` of the original model."""
    model = onnx.load(str(path))
    conv = next(n.output[0] for n in model.graph.node if n.op_type == "Conv")
    model.graph.output.append(helper.make_tensor_value_info(conv, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    img, y = sess.run([conv, "y"], {"x": x})
    return img, y


def _apply(folded: list[dict[str, Any]], img: np.ndarray) -> np.ndarray:
    """The recorded per-element ops applied to NCHW ``img`` as the app applies them."""
    for f in folded:
        if not f.get("elementwise"):
            continue
        if f["op"] == "Reciprocal":
            img = np.float32(1) / img
        elif f["op"] == "Relu":
            img = np.maximum(img, np.float32(0))
        else:
            c = np.asarray(f["constant"], np.float32)
            c = c.reshape(1, -1, 1, 1) if c.ndim else c
            a, b = (c, img) if f["constant_input"] == 0 else (img, c)
            img = _NUMPY[f["op"]](a, b).astype(np.float32)
    return img


def _check_app(path: Path, out: Path, target: str) -> dict[str, Any]:
    """The exported Linear applied to the conv's image after the recorded ops gives ONNX
    Runtime's output; returns the layer's record."""
    x = np.random.default_rng(11).standard_normal((2, 3, H, W)).astype(np.float32)
    img, want = _ort(path, x)
    if target == "mps":
        doc = json.loads((out / "manifest.json").read_text())
        (fc,) = [e for e in doc["layers"] if e["kind"] == "fully_connected"]

        def load(key: str) -> np.ndarray:
            f = fc["files"][key]
            return np.fromfile(out / f["file"], f["dtype"]).reshape(f["shape"])

        w = load("weights").reshape(OUT, -1)  # [O][H][W][C]
        b = load("bias")
        folded = fc["fully_connected"]["folded"]
        assert not [e for e in doc["layers"] if e["kind"] in ("arithmetic", "tensor")]
    else:
        from mpslayout.mlx import files

        weights = files.load(out)
        (fc,) = [e for e in weights.facts["layers"] if e["rule"] == "fc"]
        w = np.asarray(weights[fc["tensors"]["weight"]])  # (O, H*W*C), channels last
        b = np.asarray(weights[fc["tensors"]["bias"]])
        folded = fc["geometry"]["fully_connected"]["folded"]
    nhwc = np.moveaxis(_apply(folded, img), 1, -1).reshape(len(x), -1).astype(np.float64)
    got = nhwc @ w.T.astype(np.float64) + b
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return fc


def _binary_records(fc: dict[str, Any], target: str) -> list[dict[str, Any]]:
    geo = fc if target == "mps" else fc["geometry"]
    return [f for f in geo["fully_connected"]["folded"] if "constant" in f]


# ------------------------------------------------------------------------ folded

@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_export_folded_and_verified(kind: str, tmp_path: Path) -> None:
    path = _torch_model(tmp_path, kind)
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), strict=True, progress=False)
    fc = _check_app(path, out, "mps")
    recs = _binary_records(fc, "mps")
    assert [f["op"] for f in recs] == KINDS[kind]
    assert fc["source"]["input"] == fc["fully_connected"]["reads"]
    if kind == "rsub":
        assert recs[0]["constant_input"] == 0
        assert recs[0]["constant"] == 1.0
    if kind in ("channel", "wh_channel"):
        m = Net(kind)
        np.testing.assert_array_equal(recs[0]["constant"], m.scale.detach().numpy())
        np.testing.assert_array_equal(recs[1]["constant"], m.shift.detach().numpy())
        # the per-channel constants are the layer's source tensors: none is dropped
        assert {"scale", "shift"} <= set(fc["source"]["tensors"])
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads((out / "manifest.json").read_text()),
                        json.loads(SCHEMA.read_text()), cls=jsonschema.Draft202012Validator)
    rep = verify(out, path)
    assert rep.ok, [(r.name, r.error) for r in rep.rows]
    for op in KINDS[kind]:  # each op judged on its own row, run on the conv's image
        rows = [r for r in rep.rows if r.op == op]
        assert rows
        assert all(r.tensor.startswith(fc["fully_connected"]["reads"]) for r in rows), rows
    assert not rep.not_verified, rep.not_verified


@pytest.mark.parametrize("kind", ["rsub", "channel"])
def test_mlx_target(kind: str, tmp_path: Path) -> None:
    path = _torch_model(tmp_path, kind, dynamic=kind == "rsub")
    out = tmp_path / "w.safetensors"
    argv = ["export", str(path), "-o", str(out), "--target", "mlx", "--strict", "-q"]
    if kind == "rsub":
        argv += ["--input-dims", f"x=2,3,{H},{W}"]
    assert main(argv) == 0
    fc = _check_app(path, out, "mlx")
    assert [f["op"] for f in _binary_records(fc, "mlx")] == KINDS[kind]
    pytest.importorskip("mlx.core")
    assert main(["verify", str(out), "--model", str(path)]) == 0


def test_dynamic_batch_by_the_command_line(tmp_path: Path) -> None:
    path = _torch_model(tmp_path, "sub", dynamic=True)
    out = tmp_path / "out"
    assert main(["export", str(path), "-o", str(out), "--strict", "-q"]) == 0
    _check_app(path, out, "mps")
    assert main(["verify", str(out), "--model", str(path), "--input-dims",
                 f"x=3,3,{H},{W}"]) == 0


@pytest.mark.parametrize("tail", ["bn", "rsub_rdiv"])
def test_tf2onnx_style(tail: str, tmp_path: Path) -> None:
    path = _tf2onnx(tmp_path, tail)
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), strict=True, progress=False)
    fc = _check_app(path, out, "mps")
    recs = _binary_records(fc, "mps")
    model = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    if tail == "bn":
        assert [(f["node"], f["constant_input"]) for f in recs] == [("bn/mul", 1),
                                                                   ("bn/add", 1)]
        np.testing.assert_array_equal(recs[0]["constant"], model["bn.scale"])
        np.testing.assert_array_equal(recs[1]["constant"], model["bn.shift"].ravel())
    else:
        assert [(f["node"], f["constant_input"]) for f in recs] == [
            ("rsub", 0), ("plus10", 1), ("rdiv", 0)]
        np.testing.assert_array_equal(recs[0]["constant"], model["minuend"])
        assert recs[2]["constant"] == 2.0
    rep = verify(out, path, input_dims={"x": (2, 3, H, W)})
    assert rep.ok, [(r.name, r.error) for r in rep.rows]
    assert not rep.not_verified, rep.not_verified
    pytest.importorskip("mlx.core")
    from mpslayout.verify.mlx_target import verify_mlx

    mlx_out = tmp_path / "w.safetensors"
    mpslayout.export(str(path), str(mlx_out), target="mlx", strict=True, progress=False)
    _check_app(path, mlx_out, "mlx")
    rep = verify_mlx(mlx_out, path, input_dims={"x": (2, 3, H, W)})
    assert rep.ok, [(r.name, r.error) for r in rep.rows]


def test_a_constant_not_per_channel_is_not_folded(tmp_path: Path) -> None:
    """A (1, H, W, 1) Mul after the Transpose is one value per pixel: no per-channel
    kernel applies it to the image, so the chain stops there; the layer reads the Mul's
    output as before, its notes name the node, and verify still passes the export."""
    path = _tf2onnx(tmp_path, "hw")
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), progress=False, input_dims={"x": (2, 3, H, W)})
    doc = json.loads((out / "manifest.json").read_text())
    (fc,) = [e for e in doc["layers"] if e["kind"] == "fully_connected"]
    assert "reads" not in fc["fully_connected"]
    assert fc["source"]["input"] == "z"
    (note,) = [n for n in fc["notes"] if n.startswith("not folded through")]
    assert "Mul 'per_pixel'" in note
    assert "'pixel'" in note
    assert "per image channel" in note
    assert [e["source"]["node"] for e in doc["layers"] if e["kind"] == "arithmetic"] == \
        ["per_pixel"]  # its own layer, as without the fold
    rep = verify(out, path, input_dims={"x": (2, 3, H, W)})
    assert rep.ok, [(r.name, r.error) for r in rep.rows]


def test_verify_follows_every_op_the_export_folds_through() -> None:
    assert permute.BINARY <= verify_permuted.BINARY


# ------------------------------------------------------------------ planted bugs

def _verify_both(path: Path, tmp: Path, **kw: Any) -> tuple[Any, Any]:
    out = tmp / "out"
    mpslayout.export(str(path), str(out), progress=False, **kw)
    rep = verify(out, path, **kw)
    mlx_rep = None
    try:
        import mlx.core  # noqa: F401
    except ImportError:
        return rep, None
    from mpslayout.verify.mlx_target import verify_mlx

    mlx_out = tmp / "w.safetensors"
    mpslayout.export(str(path), str(mlx_out), target="mlx", progress=False, **kw)
    mlx_rep = verify_mlx(mlx_out, path, **kw)
    return rep, mlx_rep


def _fails_at_the_layer(rep: Any, name: str, says: str | None = None) -> None:
    assert not rep.ok
    bad = rep.first_divergence
    assert bad is not None
    assert bad.name == name, bad
    if says is not None:
        assert says in (bad.error or ""), bad.error


@pytest.mark.parametrize("kind", ["rsub", "div"])
def test_operand_order_swapped_fails(kind: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the record says the constant is the other operand (x - c for c - x)."""
    path = _torch_model(tmp_path, kind)
    real = permute.Permuted.record

    def swapped(self: Any, g: Any) -> list[dict[str, Any]]:
        return [{**r, "constant_input": 1 - r["constant_input"]} if "constant" in r else r
                for r in real(self, g)]

    monkeypatch.setattr(permute.Permuted, "record", swapped)
    rep, mlx_rep = _verify_both(path, tmp_path)
    _fails_at_the_layer(rep, "/fc/Gemm", "but the model's node computes")
    if mlx_rep is not None:
        _fails_at_the_layer(mlx_rep, "/fc/Gemm")
    with pytest.raises(AssertionError):
        _check_app(path, tmp_path / "out", "mps")


@pytest.mark.parametrize("source", ["torch", "tf2onnx"])
def test_per_channel_constant_on_the_wrong_channels_fails(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the per-channel constant recorded against the wrong image channels."""
    path = _torch_model(tmp_path, "channel") if source == "torch" else \
        _tf2onnx(tmp_path, "bn")
    real = permute._image_constant

    def rolled(x: Any, c: Any, image: Any) -> Any:
        v = real(x, c, image)
        return list(np.roll(v, 1)) if isinstance(v, list) else v

    monkeypatch.setattr(permute, "_image_constant", rolled)
    kw = {} if source == "torch" else {"input_dims": {"x": (2, 3, H, W)}}
    rep, mlx_rep = _verify_both(path, tmp_path, **kw)
    _fails_at_the_layer(rep, "/fc/Gemm" if source == "torch" else "dense",
                        "moved back onto the image is")
    if mlx_rep is not None:
        _fails_at_the_layer(mlx_rep, "/fc/Gemm" if source == "torch" else "dense")
    with pytest.raises(AssertionError):
        _check_app(path, tmp_path / "out", "mps")


def test_fold_through_a_constant_that_does_not_map_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the export folds through the (1, H, W, 1) Mul, recording the values it
    has at the first pixel as if they were per channel. verify finds the chain stops
    there, so the layer does not read the image the manifest names."""
    path = _tf2onnx(tmp_path, "hw")

    def lax(x: Any, c: Any, image: Any) -> Any:
        on_image = np.empty(int(np.prod(image)))
        on_image[x.ravel()] = np.broadcast_to(c, x.shape).ravel()
        return [float(e) for e in on_image.reshape(image)[0, :, 0, 0]]

    monkeypatch.setattr(permute, "_image_constant", lax)
    rep, mlx_rep = _verify_both(path, tmp_path, input_dims={"x": (2, 3, H, W)})
    _fails_at_the_layer(rep, "dense", "the chain stops at Mul 'per_pixel'")
    if mlx_rep is not None:
        _fails_at_the_layer(mlx_rep, "dense")
    with pytest.raises(AssertionError):
        _check_app(path, tmp_path / "out", "mps")


def test_a_record_without_its_constant_fails(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the op recorded as elementwise but without its constant (as a unary op
    is): the app could not apply it; verify says so, naming the node."""
    path = _torch_model(tmp_path, "mul")
    real = permute.Permuted.record

    def bare(self: Any, g: Any) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in ("constant", "constant_input")}
                for r in real(self, g)]

    monkeypatch.setattr(permute.Permuted, "record", bare)
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), progress=False)
    _fails_at_the_layer(verify(out, path), "/fc/Gemm", "does not record its constant")
