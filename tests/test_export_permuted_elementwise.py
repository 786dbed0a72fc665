"""A per-element op inside a permuted flatten: ``x = conv(x); x = x.permute(0, 2, 3, 1);
x = torch.relu(x); x = x.flatten(1); fc(x)``, or ``permute -> reshape -> relu -> fc``, as
real exporters write them (torch.onnx.export with and without a dynamic batch, dynamo, and
Paddle-style graphs with Shape/Gather/Concat -> Reshape, MatMul + Add, Cast, Dropout).

An op that acts on each element alone commutes with the permutation, so the export folds
the permutation into the Linear's columns through it and the layer reads the conv's image,
the op applied to that image first. The weights are checked against PyTorch's by the
flatten formula, both targets are verified (MPS against ONNX Runtime, MLX by MLX), and an
export that skips the look-through, folds the columns without the permutation, or a verify
that forgets the op, fail, naming the layer.
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
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import mpslayout  # noqa: E402
from mpslayout.cli import main  # noqa: E402
from mpslayout.export.sources.onnx import layers as onnx_layers  # noqa: E402
from mpslayout.export.sources.onnx import permute  # noqa: E402
from mpslayout.verify import permuted as verify_permuted  # noqa: E402
from mpslayout.verify import verify  # noqa: E402

C, H, W, OUT = 8, 6, 5, 7
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"

F = torch.nn.functional
# the activation inside the chain: the op ONNX gets, and whether MPS has a kernel for it
ACTS: dict[str, tuple[Any, str, bool]] = {
    "relu": (torch.relu, "Relu", True),
    "sigmoid": (torch.sigmoid, "Sigmoid", True),
    "tanh": (torch.tanh, "Tanh", True),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), "LeakyRelu", True),
    "clamp": (lambda x: torch.clamp(x, -0.5, 0.75), "Clip", True),
    "hardsigmoid": (F.hardsigmoid, "HardSigmoid", True),
    "elu": (lambda x: F.elu(x, 0.7), "Elu", True),
    "softplus": (F.softplus, "Softplus", True),
    "selu": (F.selu, "Selu", False),
}
# where the chain puts it: the permutation, and the flat index torch gives element (c, h, w)
CHAINS = {
    # x.permute(0, 2, 3, 1) -> act -> flatten(1): (N, H, W, C)
    "nhwc_act_flatten": lambda c, h, w: (h * W + w) * C + c,
    # x.permute(0, 3, 2, 1).reshape(N, -1) -> act: (N, W, H, C)
    "permute_reshape_act": lambda c, h, w: (w * H + h) * C + c,
    # x.view(N, C, H*W).transpose(1, 2) -> act -> flatten(1): (N, H*W, C)
    "view_transpose_act": lambda c, h, w: (h * W + w) * C + c,
}


class Net(torch.nn.Module):
    def __init__(self, chain: str, act: str) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.chain, self.act = chain, ACTS[act][0]
        self.c = torch.nn.Conv2d(3, C, 3, padding=1)
        self.fc = torch.nn.Linear(C * H * W, OUT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: Any) -> Any:
        y = self.c(x)
        if self.chain == "nhwc_act_flatten":
            y = self.act(y.permute(0, 2, 3, 1)).flatten(1)
        elif self.chain == "permute_reshape_act":
            y = self.act(y.permute(0, 3, 2, 1).reshape(y.shape[0], -1))
        else:
            y = self.act(y.view(y.shape[0], C, H * W).transpose(1, 2)).flatten(1)
        return self.fc(y)


def _export_torch(tmp: Path, chain: str, act: str, dynamic: bool = False,
                  dynamo: bool = False) -> tuple[Path, Net]:
    m = Net(chain, act).eval()
    path = tmp / f"{chain}_{act}{'_dyn' if dynamic else ''}.onnx"
    kw: dict[str, Any] = {"input_names": ["x"], "output_names": ["y"]}
    if dynamo:
        kw["dynamic_shapes"] = ({0: torch.export.Dim("N", min=1, max=64)},) if dynamic \
            else None
    else:
        kw["opset_version"] = 13
        if dynamic:
            kw["dynamic_axes"] = {"x": {0: "N"}, "y": {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, H, W),), str(path), dynamo=dynamo, **kw)
    return path, m


def _expected_mps(index: Any, lin: np.ndarray) -> np.ndarray:
    """dst[o][h][w][c] = L[o][n], n the index torch's chain gives element (c, h, w)."""
    out = np.empty((OUT, H, W, C), np.float32)
    for c in range(C):
        for h in range(H):
            for w in range(W):
                out[:, h, w, c] = lin[:, index(c, h, w)]
    return out


def _fc(out: Path) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    doc = json.loads((out / "manifest.json").read_text())
    (fc,) = [e for e in doc["layers"] if e["kind"] == "fully_connected"]
    f = fc["files"]["weights"]
    return fc, np.fromfile(out / f["file"], f["dtype"]).reshape(f["shape"]), doc


def _conv_output(path: Path) -> str:
    model = onnx.load(str(path))
    return next(n.output[0] for n in model.graph.node if n.op_type == "Conv")


def _check_mps(path: Path, out: Path, index: Any, lin: np.ndarray, op: str, kernel: bool,
               **verify_kw: Any) -> None:
    fc, w, doc = _fc(out)
    image = _conv_output(path)
    assert fc["source"]["input"] == image  # the image MPS holds, not the permuted tensor
    assert fc["fully_connected"]["reads"] == image
    folded = fc["fully_connected"]["folded"]
    assert [x["op"] for x in folded if x.get("elementwise") and x["op"] != "Cast"] == [op]
    assert "Transpose" in [x["op"] for x in folded]
    np.testing.assert_array_equal(w, _expected_mps(index, lin))
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()),
                        cls=jsonschema.Draft202012Validator)
    rep = verify(out, path, **verify_kw)
    assert rep.ok, [(r.name, r.error) for r in rep.rows]
    act_rows = [r for r in rep.rows if r.op == op]
    if kernel:  # the op is judged on its own row, run on the conv's image
        assert len(act_rows) == 1, rep.rows
        assert act_rows[0].tensor.startswith(image), act_rows[0].tensor
        assert not rep.not_verified, rep.not_verified
    else:  # no MPS kernel: the oracle's image passes on, said so
        assert not act_rows
        (left,) = rep.not_verified
        assert left["op"] == op, left
        assert f"run on image {image!r}" in left["reason"], left


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("act", list(ACTS))
def test_folded_through_the_op_and_verified(chain: str, act: str, tmp_path: Path) -> None:
    path, m = _export_torch(tmp_path, chain, act)
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), strict=True, progress=False)
    _, op, kernel = ACTS[act]
    _check_mps(path, out, CHAINS[chain], m.fc.weight.detach().numpy(), op, kernel)


@pytest.mark.parametrize("chain", list(CHAINS))
def test_dynamic_batch_by_the_command_line(chain: str, tmp_path: Path) -> None:
    """A symbolic batch (dynamic_axes): exported with --strict and verified at batch 3 by
    ``mpslayout verify``, both through the command line. ``reshape(x.shape[0], -1)`` and
    ``view(x.shape[0], ...)`` compute their shape from the symbolic batch (Shape -> Gather
    -> Concat), which the fold evaluates on the chain's own shapes: no --input-dims."""
    path, m = _export_torch(tmp_path, chain, "relu", dynamic=True)
    out = tmp_path / "out"
    assert main(["export", str(path), "-o", str(out), "--strict", "-q"]) == 0
    _check_mps(path, out, CHAINS[chain], m.fc.weight.detach().numpy(), "Relu", True,
               input_dims={"x": (3, 3, H, W)})
    assert main(["verify", str(out), "--model", str(path), "--input-dims",
                 f"x=3,3,{H},{W}"]) == 0


@pytest.mark.parametrize("dynamic", [False, True])
def test_dynamo_export(dynamic: bool, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    path, m = _export_torch(tmp_path, "nhwc_act_flatten", "sigmoid", dynamic=dynamic,
                            dynamo=True)
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), strict=True, progress=False,
                     input_dims={"x": (2, 3, H, W)} if dynamic else None)
    _check_mps(path, out, CHAINS["nhwc_act_flatten"], m.fc.weight.detach().numpy(),
               "Sigmoid", True, input_dims={"x": (2, 3, H, W)} if dynamic else None)


# --------------------------------------------------------------- Paddle-style graphs


def _paddle(tmp: Path, tail: str) -> tuple[Path, np.ndarray]:
    """Conv -> Transpose(0, 2, 3, 1) -> ... -> MatMul(W[in, out]) + Add, the batch symbolic,
    as Paddle2ONNX writes a Linear: ``relu_reshape``: Relu, then a Reshape to (N, -1) whose
    shape Shape -> Gather -> Unsqueeze -> Concat computes; ``leaky_cast_dropout``:
    LeakyRelu -> Identity -> Flatten -> Cast(float) -> Dropout. Returns the path and the
    FC's (in, out) weight."""
    rng = np.random.default_rng(5)
    wc = (rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32)
    bc = (rng.standard_normal(C) * 0.3).astype(np.float32)
    wf = (rng.standard_normal((C * H * W, OUT)) * 0.3).astype(np.float32)
    bf = (rng.standard_normal(OUT) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], pads=[1, 1, 1, 1],
                              name="conv"),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1], name="transpose")]
    inits = {"conv.w": wc, "conv.b": bc, "fc.w": wf, "fc.b": bf}
    if tail == "relu_reshape":
        inits.update({"zero": np.array([0], np.int64), "minus1": np.array([-1], np.int64)})
        nodes += [helper.make_node("Relu", ["t"], ["r"], name="relu"),
                  helper.make_node("Shape", ["r"], ["s"], name="shape"),
                  helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="gather"),
                  helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0,
                                   name="concat"),
                  helper.make_node("Reshape", ["r", "target"], ["flat"], name="reshape")]
    else:
        nodes += [helper.make_node("LeakyRelu", ["t"], ["r"], alpha=0.1, name="leaky"),
                  helper.make_node("Identity", ["r"], ["i"], name="identity"),
                  helper.make_node("Flatten", ["i"], ["f"], axis=1, name="flatten"),
                  helper.make_node("Cast", ["f"], ["fc32"], to=TensorProto.FLOAT,
                                   name="cast"),
                  helper.make_node("Dropout", ["fc32"], ["flat"], name="dropout")]
    nodes += [helper.make_node("MatMul", ["flat", "fc.w"], ["mm"], name="fc"),
              helper.make_node("Add", ["mm", "fc.b"], ["y"], name="fc_bias")]
    graph = helper.make_graph(
        nodes, "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                        ["N", 3, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    path = tmp / f"paddle_{tail}.onnx"
    onnx.save(model, str(path))
    return path, wf


@pytest.mark.parametrize(("tail", "op"), [("relu_reshape", "Relu"),
                                          ("leaky_cast_dropout", "LeakyRelu")])
def test_paddle_style(tail: str, op: str, tmp_path: Path) -> None:
    path, wf = _paddle(tmp_path, tail)
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), strict=True, progress=False)
    fc, _, _ = _fc(out)
    folded = [x["op"] for x in fc["fully_connected"]["folded"]]
    if tail == "leaky_cast_dropout":
        assert folded == ["Transpose", "LeakyRelu", "Identity", "Flatten", "Cast", "Dropout"]
    _check_mps(path, out, CHAINS["nhwc_act_flatten"], wf.T, op, True,
               input_dims={"x": (2, 3, H, W)})
    pytest.importorskip("mlx.core")
    from mpslayout.mlx import files
    from mpslayout.verify.mlx_target import verify_mlx

    mlx_out = tmp_path / "w.safetensors"
    mpslayout.export(str(path), str(mlx_out), target="mlx", strict=True, progress=False)
    (rec,) = [x for x in files.load(mlx_out).facts["layers"] if x["rule"] == "fc"]
    np.testing.assert_array_equal(
        np.asarray(files.load(mlx_out)[rec["tensors"]["weight"]]),
        _expected_mlx(CHAINS["nhwc_act_flatten"], wf.T))
    rep = verify_mlx(mlx_out, path, input_dims={"x": (2, 3, H, W)})
    assert rep.ok, [(r.name, r.error) for r in rep.rows]


# ------------------------------------------------------------------------ MLX target


def _expected_mlx(index: Any, lin: np.ndarray) -> np.ndarray:
    """An MLX Linear reads the image channels last: column (h * W + w) * C + c."""
    out = np.empty((OUT, H * W * C), np.float32)
    for c in range(C):
        for h in range(H):
            for w in range(W):
                out[:, (h * W + w) * C + c] = lin[:, index(c, h, w)]
    return out


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("act", ["relu", "tanh", "clamp", "selu"])
def test_mlx_target(chain: str, act: str, tmp_path: Path) -> None:
    from mpslayout.mlx import files

    path, m = _export_torch(tmp_path, chain, act, dynamic=act == "relu")
    out = tmp_path / "w.safetensors"
    argv = ["export", str(path), "-o", str(out), "--target", "mlx", "--strict", "-q"]
    if act == "relu":
        argv += ["--input-dims", f"x=2,3,{H},{W}"]
    assert main(argv) == 0
    w = files.load(out)
    (fc,) = [x for x in w.facts["layers"] if x["rule"] == "fc"]
    assert fc["source"]["input"] == _conv_output(path)
    elementwise = [x["op"] for x in fc["geometry"]["fully_connected"]["folded"]
                   if x.get("elementwise")]
    assert elementwise == [ACTS[act][1]]
    np.testing.assert_array_equal(np.asarray(w[fc["tensors"]["weight"]]),
                                  _expected_mlx(CHAINS[chain], m.fc.weight.detach().numpy()))
    pytest.importorskip("mlx.core")
    from mpslayout.verify.mlx_target import verify_mlx

    rep = verify_mlx(out, path)
    assert rep.ok, [(r.name, r.error) for r in rep.rows]
    assert main(["verify", str(out), "--model", str(path)]) == 0


def test_mlx_verify_applies_the_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted in the file: the fold recorded without marking the op elementwise, so the
    Linear is run on the conv's image without the relu: MLX's verify fails it."""
    pytest.importorskip("mlx.core")
    from mpslayout.verify.mlx_target import verify_mlx

    path, _ = _export_torch(tmp_path, "nhwc_act_flatten", "relu")
    out = tmp_path / "w.safetensors"
    real = permute.Permuted.record

    def unmarked(self: Any, g: Any) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "elementwise"} for r in real(self, g)]

    monkeypatch.setattr(permute.Permuted, "record", unmarked)
    mpslayout.export(str(path), str(out), target="mlx", progress=False)
    rep = verify_mlx(out, path)
    assert not rep.ok
    assert rep.first_divergence is not None
    assert rep.first_divergence.name == "/fc/Gemm"


# ---------------------------------------------------------------- what is not folded


class Branch(torch.nn.Module):
    """The relu's output is read twice (the Linear's flatten and a second head), or the op
    in the chain has an axis (softmax): neither is folded."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.c = torch.nn.Conv2d(3, C, 3, padding=1)
        self.fc = torch.nn.Linear(C * H * W, OUT)

    def forward(self, x: Any) -> Any:
        y = self.c(x).permute(0, 2, 3, 1)
        if self.kind == "softmax":
            return self.fc(torch.softmax(y, dim=-1).flatten(1))
        r = torch.relu(y)
        return self.fc(r.flatten(1)), r.sum(dim=(1, 2))


@pytest.mark.parametrize("kind", ["two_readers", "softmax"])
def test_not_folded(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Branch(kind).eval(), (torch.randn(1, 3, H, W),), str(path),
                          dynamo=False, opset_version=13)
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), progress=False)
    fc, _, _ = _fc(out)
    assert "reads" not in fc["fully_connected"]  # the permuted tensor is seen elsewhere


# ------------------------------------------------------------------ planted bugs


def test_skipping_the_look_through_fails(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The export as it was: the chain stops at the relu, nothing is folded, and the layer
    reads a tensor made by a Transpose. verify fails it, naming the layer and the op."""
    path, _ = _export_torch(tmp_path, "nhwc_act_flatten", "relu")
    out = tmp_path / "old"
    monkeypatch.setattr(permute, "ELEMENTWISE", frozenset())
    mpslayout.export(str(path), str(out), progress=False)
    rep = verify(out, path)
    assert not rep.ok
    bad = rep.first_divergence
    assert bad is not None
    assert bad.name == "/fc/Gemm"
    assert "no MPS kernel produces that tensor" in (bad.error or "")
    assert "through Relu" in (bad.error or "")


@pytest.mark.parametrize("target", ["mps", "mlx"])
def test_columns_folded_without_the_permutation_fail(target: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """Planted: the layer reads the image, but its columns keep the permuted order."""
    if target == "mlx":
        pytest.importorskip("mlx.core")
    path, _ = _export_torch(tmp_path, "permute_reshape_act", "tanh")
    out = tmp_path / ("w.safetensors" if target == "mlx" else "bad")
    monkeypatch.setattr(onnx_layers, "fold_columns", lambda w, p, layout, where: w)
    mpslayout.export(str(path), str(out), target=target, progress=False)
    if target == "mlx":
        from mpslayout.verify.mlx_target import verify_mlx

        rep = verify_mlx(out, path)
    else:
        rep = verify(out, path)
    assert not rep.ok
    assert rep.first_divergence is not None
    assert rep.first_divergence.name == "/fc/Gemm"


def test_verify_without_the_op_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted in verify: the relu not run on the image before the layer. The layer's
    result then differs from ONNX Runtime's, so the check depends on the op."""
    path, _ = _export_torch(tmp_path, "nhwc_act_flatten", "relu")
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), progress=False)
    real = verify_permuted.fc_chains

    def no_pre(g: Any, segments: Any, values: Any) -> set[int]:
        folded = real(g, segments, values)
        for seg in segments.values():
            seg.pre = []
        return folded

    monkeypatch.setattr("mpslayout.verify.walk.fc_chains", no_pre)
    rep = verify(out, path)
    assert not rep.ok
    assert rep.first_divergence is not None
    assert rep.first_divergence.name == "/fc/Gemm"


def test_verify_follows_every_op_the_export_folds_through() -> None:
    """verify keeps its own list (it checks the export, not copies it): an op the export
    looked through that verify's chain stopped at would fail a correct export."""
    assert permute.ELEMENTWISE <= verify_permuted.ELEMENTWISE
