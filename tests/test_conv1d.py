"""Conv1d everywhere: a 1-D convolution (3-D weight) is an MPS convolution of kernel height
1, weights ``(O, 1, K, I)``, the sequence along the width (docs/layouts.md section 1).

- torch.nn.Conv1d / ConvTranspose1d / depthwise and grouped Conv1d / BatchNorm1d exported by
  torch.onnx.export (fixed and dynamic length): export, then verify OK against ONNX Runtime;
  the weight files equal the formula ``w[o, 0, k, i] = W[o, i, k]`` written here with numpy;
- planted bugs (the kernel reversed along the sequence, the OIW bytes written where MPS
  reads OHWI) fail verify, naming the layer;
- the same modules in a state_dict (.pt) and a safetensors file export (with ``kinds`` for
  the transposed and depthwise ones) and verify against the same network's ONNX graph;
- the onnx package's own pytorch-converted test_Conv1d* models export and verify OK on
  their shipped input_0.pb.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mpslayout import cli  # noqa: E402
from mpslayout.export import export  # noqa: E402
from mpslayout.verify import verify  # noqa: E402

nn = torch.nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(5, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.dw = nn.Conv1d(8, 8, 5, stride=2, padding=2, groups=8)
        self.up = nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)
        self.c3 = nn.Conv1d(4, 8, 3, dilation=2, groups=2)

    def forward(self, x: Any) -> Any:
        y = torch.relu(self.bn(self.c1(x)))
        return self.c3(torch.relu(self.up(torch.relu(self.dw(y)))))


class Plain(nn.Module):
    """No groups (a state_dict does not store them): Conv1d, BatchNorm1d, ConvTranspose1d,
    depthwise Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(5, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.up = nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)
        self.dw = nn.Conv1d(4, 4, 5, padding=2, groups=4, bias=False)

    def forward(self, x: Any) -> Any:
        return self.dw(torch.relu(self.up(torch.relu(self.bn(self.c1(x))))))


def _trained(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in m.parameters():
        p.data.uniform_(-0.5, 0.5)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    return m.eval()


def _onnx(m: nn.Module, path: Path, *, dynamic: bool = False, fold: bool = True) -> Path:
    x = torch.randn(1, 5, 32)
    kw: dict[str, Any] = {"dynamo": False, "input_names": ["x"], "output_names": ["y"]}
    if dynamic:
        kw["dynamic_axes"] = {"x": {0: "n", 2: "len"}, "y": {0: "n", 2: "len"}}
    if not fold:
        kw.update(do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), **kw)
    return path


def _export(model: Path, out: Path, **kw: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MPS's multiple-of-4 channel advice
        return export(str(model), str(out), **kw)


def _weights(out: Path, name: str) -> np.ndarray:
    doc = json.loads((out / "manifest.json").read_text())
    e = next(x for x in doc["layers"] if x["name"] == name)
    f = e["files"]["weights"]
    return np.fromfile(out / f["file"], dtype="<f4").reshape(f["shape"])


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
def test_torch_conv1d_onnx_exports_and_verifies(tmp_path: Path, dynamic: bool) -> None:
    m = _trained(Net())
    path = _onnx(m, tmp_path / "m.onnx", dynamic=dynamic)
    dims = {"input_dims": {"x": (1, 5, 32)}} if dynamic else {}
    doc = _export(path, tmp_path / "out", **dims)
    kinds = {x["name"]: x["kind"] for x in doc["layers"]}
    assert sorted(kinds.values()) == ["convolution", "convolution", "depthwise",
                                      "transposed"], kinds
    for e in doc["layers"]:
        assert e["kernel"]["height"] == 1
        assert e["files"]["weights"]["shape"][1] == 1  # (O, 1, K, I) / (C, 1, K)
    c1 = next(x for x in doc["layers"] if x["kind"] == "convolution")
    assert c1["strides"] == {"x": 1, "y": 1}
    assert c1["padding"]["left"] == 1
    assert c1["padding"]["top"] == 0
    assert c1["offset"] == {"x": 0, "y": 0}
    report = verify(tmp_path / "out", path)
    assert report.ok, report.table()
    assert report.layers_checked == 4


def test_conv1d_weight_bytes_are_the_formula(tmp_path: Path) -> None:
    """(O, I, K) -> (O, 1, K, I), ConvTranspose1d (I, O, K) -> flipped (O, 1, K, I),
    written here by index, not with mpslayout's converters."""
    m = _trained(Plain())
    path = _onnx(m, tmp_path / "m.onnx", fold=False)
    _export(path, tmp_path / "out")
    w = m.c1.weight.detach().numpy()
    o, i, k = w.shape
    want = np.zeros((o, 1, k, i), np.float32)
    for a in range(o):
        for b in range(i):
            for t in range(k):
                want[a, 0, t, b] = w[a, b, t]
    names = {n.input[1]: n.name for n in onnx.load(str(path)).graph.node if len(n.input) > 1}
    np.testing.assert_array_equal(_weights(tmp_path / "out", names["c1.weight"]), want)
    wt = m.up.weight.detach().numpy()  # (I, O, K): MPS reads it flipped, O first
    ci, co, k = wt.shape
    want = np.zeros((co, 1, k, ci), np.float32)
    for a in range(co):
        for b in range(ci):
            for t in range(k):
                want[a, 0, t, b] = wt[b, a, k - 1 - t]
    np.testing.assert_array_equal(_weights(tmp_path / "out", names["up.weight"]), want)


# ----------------------------------------------------------------------- planted bugs


def _reverse(w: np.ndarray) -> np.ndarray:
    """The kernel reversed along the sequence."""
    return w[:, :, ::-1] if w.ndim == 3 else w[:, :, ::-1, :]


def _oiw_bytes(w: np.ndarray) -> np.ndarray:
    """PyTorch's (O, I, K) bytes where MPS reads (O, 1, K, I)."""
    o, _, k, i = w.shape
    return np.ascontiguousarray(w.reshape(o, k, i).transpose(0, 2, 1)).reshape(w.shape)


def _rewrite(out: Path, layer: str, fix: Callable[[np.ndarray], np.ndarray]) -> None:
    doc = json.loads((out / "manifest.json").read_text())
    info = next(x for x in doc["layers"] if x["name"] == layer)["files"]["weights"]
    w = np.fromfile(out / info["file"], dtype="<f4").reshape(info["shape"])
    data = np.ascontiguousarray(fix(w), dtype="<f4")
    assert data.shape == w.shape
    assert not np.array_equal(data, w)
    (out / info["file"]).write_bytes(data.tobytes())
    info["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))


BUGS = [("convolution", 0, _reverse), ("convolution", 0, _oiw_bytes),
        ("depthwise", 0, _reverse), ("transposed", 0, _reverse),
        ("transposed", 0, _oiw_bytes), ("convolution", 1, _reverse)]


@pytest.mark.parametrize(("kind", "k", "fix"), BUGS,
                         ids=[f"{kd}{k}-{f.__name__[1:]}" for kd, k, f in BUGS])
def test_planted_conv1d_bug_fails_naming_the_layer(tmp_path: Path, kind: str, k: int,
                                                   fix: Callable[[np.ndarray], np.ndarray],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _onnx(_trained(Net()), tmp_path / "m.onnx")
    doc = _export(path, tmp_path / "out")
    layer = [x["name"] for x in doc["layers"] if x["kind"] == kind][k]
    _rewrite(tmp_path / "out", layer, fix)
    report = verify(tmp_path / "out", path)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.name == layer, report.table()
    assert cli.main(["verify", str(tmp_path / "out"), "--model", str(path)]) == 1
    assert f"first divergence at layer {layer!r}" in capsys.readouterr().out


def test_conv1d_with_1d_pools(tmp_path: Path) -> None:
    """MaxPool1d and a global average pool between Conv1d layers run as MPS pools on the
    1 x L image (nothing left unverified), and a bug after them still names its layer."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                      nn.Conv1d(8, 8, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                      nn.Linear(8, 3)).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 4, 32),), str(path), dynamo=False,
                          input_names=["x"])
    doc = _export(path, tmp_path / "out")
    report = verify(tmp_path / "out", path)
    assert report.ok, report.table()
    assert not report.not_verified, report.not_verified
    ops = {r.op for r in report.rows}
    assert {"MaxPool", "GlobalAveragePool"} <= ops
    second = [e["name"] for e in doc["layers"] if e["kind"] == "convolution"][1]
    _rewrite(tmp_path / "out", second, _reverse)
    report = verify(tmp_path / "out", path)
    assert report.first_divergence is not None
    assert report.first_divergence.name == second, report.table()


# ----------------------------------------------------------------------- state_dicts


KINDS = {"up": "conv_transpose", "dw": "depthwise"}


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_conv1d_state_dict_exports_and_verifies(tmp_path: Path, fmt: str) -> None:
    m = _trained(Plain())
    sd = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
    if fmt == "pt":
        path = tmp_path / "m.pt"
        torch.save(sd, str(path))
    else:
        st = pytest.importorskip("safetensors.torch")
        path = tmp_path / "m.safetensors"
        st.save_file(sd, str(path))
    doc = _export(path, tmp_path / "out", kinds=KINDS)
    kinds = {x["name"]: x["kind"] for x in doc["layers"]}
    assert kinds == {"c1": "convolution", "bn": "batch_normalization", "up": "transposed",
                     "dw": "depthwise"}
    assert doc["options"]["kinds"] == KINDS
    assert any("'up'" in a and "conv_transpose" in a for a in doc["assumptions"])
    assert not doc["skipped"]
    assert not doc["unsupported"]
    report = verify(tmp_path / "out", _onnx(m, tmp_path / "m.onnx", fold=False))
    assert report.ok, report.table()
    assert report.layers_checked == 4
    # the planted bug: the transposed kernel reversed
    _rewrite(tmp_path / "out", "up", _reverse)
    report = verify(tmp_path / "out", tmp_path / "m.onnx")
    assert report.first_divergence is not None
    assert report.first_divergence.name == "up"


def test_conv_transpose_state_dict_names_the_kind_and_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --kind, a ConvTranspose2d's bias fits its weight's second axis: the listing
    says so and gives the flag; --strict fails naming the tensors; --kind exports it."""
    m = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1))
    path = tmp_path / "m.pt"
    torch.save(m.state_dict(), str(path))
    with pytest.raises(ValueError, match="no layer mpslayout can export"):
        _export(path, tmp_path / "a")
    rc = cli.main(["export", str(path), "-o", str(tmp_path / "b"), "--strict"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "0.weight" in err
    assert "ConvTranspose2d" in err
    assert "--kind 0=conv_transpose" in err, err
    doc = _export(path, tmp_path / "c", kinds={"0": "conv_transpose"}, strict=True)
    (e,) = doc["layers"]
    assert e["kind"] == "transposed"
    assert e["files"]["weights"]["shape"] == [8, 4, 4, 16]
    w = m[0].weight.detach().numpy()
    want = np.flip(w, (2, 3)).transpose(1, 2, 3, 0)  # (I, O, kH, kW) -> flipped OHWI
    np.testing.assert_array_equal(_weights(tmp_path / "c", "0"), want)


def test_kind_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.pt"
    torch.save(_trained(Plain()).state_dict(), str(path))
    with pytest.raises(ValueError, match="kinds\\['nope'\\] name no layer"):
        _export(path, tmp_path / "a", kinds={"nope": "conv"})
    with pytest.raises(ValueError, match="3-D"):
        _export(path, tmp_path / "b", kinds={"c1": "linear"})
    with pytest.raises(ValueError, match="the kinds are conv, conv_transpose"):
        _export(path, tmp_path / "c", kinds={"c1": "deconv"})
    with pytest.raises(SystemExit):
        cli.main(["export", str(path), "-o", str(tmp_path / "d"), "--kind", "c1"])
    assert "NAME=KIND" in capsys.readouterr().err
    onnx_path = _onnx(_trained(Plain()), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="graph says each layer's kind"):
        _export(onnx_path, tmp_path / "e", kinds={"c1": "conv"})


# ------------------------------------------------------------- the onnx package's own


def _conformance_dirs() -> list[str]:
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data",
                        "pytorch-converted")
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, d) for d in os.listdir(root)
                  if d.startswith("test_Conv1d"))


@pytest.mark.parametrize("case", _conformance_dirs() or ["missing"],
                         ids=lambda c: os.path.basename(c))
def test_onnx_pytorch_converted_conv1d(tmp_path: Path, case: str) -> None:
    if case == "missing":
        pytest.skip("this onnx wheel ships no pytorch-converted test data")
    from onnx import numpy_helper

    def read(name: str) -> np.ndarray:
        t = onnx.TensorProto()
        t.ParseFromString(Path(case, "test_data_set_0", name).read_bytes())
        return numpy_helper.to_array(t)

    x = read("input_0.pb")
    np.save(tmp_path / "x.npy", x)
    doc = _export(Path(case, "model.onnx"), tmp_path / "out", strict=True)
    assert [e["kind"] for e in doc["layers"]] in (["convolution"], ["depthwise"])
    report = verify(tmp_path / "out", Path(case, "model.onnx"), input=str(tmp_path / "x.npy"))
    assert report.ok, report.table()
    assert report.layers_checked == 1
    # the shipped output is what the layer computes: ONNX Runtime agrees with it
    import onnxruntime as ort

    sess = ort.InferenceSession(str(Path(case, "model.onnx")),
                                providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(y, read("output_0.pb"), rtol=1e-4, atol=1e-5)
