"""``mpslayout verify`` end to end, with ONNX Runtime as the judge.

Each model is built as ONNX in tmp_path (PyTorch's TorchScript exporter, ``dynamo=False``),
exported with ``mpslayout export`` and verified: float32 exports must agree to 1e-4, float16
exports within what float16 storage explains. Then deliberately broken exports (one
layer's .bin rewritten the way a hand-written exporter gets it wrong, with the manifest's
SHA-256 updated so that only the numbers differ) must fail and name that layer.

The models are small so that the suite runs in seconds: the style-transfer network has 2
residual blocks instead of the usual 5, and the VGG-style classifier's first Linear reads a
32x7x7 map instead of 512x7x7 (same flatten and reorder, fewer channels).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
nn = torch.nn

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from mpslayout import cli  # noqa: E402
from mpslayout.verify import VerifyError, verify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "examples" / "generator.onnx"


# ----------------------------------------------------------------------- the models


def _bn(c: int, rng: torch.Generator) -> nn.BatchNorm2d:
    """A batch norm with learned-looking statistics, so that folding it matters."""
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=rng) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=rng) * 0.1)
        bn.running_mean.copy_(torch.randn(c, generator=rng) * 0.1)
        bn.running_var.copy_(torch.rand(c, generator=rng) + 0.5)
    return bn


class StyleTransfer(nn.Module):
    """Johnson et al.'s transformer network, small: 9x9 conv, two strided convs, residual
    blocks (2 here, 5 in the paper), two transposed-conv upsamplers, a final 9x9 conv.
    Zero padding instead of reflection padding and batch norm instead of instance norm:
    MPSCNN kernels the reference has."""

    def __init__(self, rng: torch.Generator, blocks: int = 2) -> None:
        super().__init__()

        def conv(i: int, o: int, k: int, s: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(i, o, k, s, padding=k // 2), _bn(o, rng), nn.ReLU()]

        self.down = nn.Sequential(*conv(3, 8, 9), *conv(8, 16, 3, 2), *conv(16, 32, 3, 2))
        self.res = nn.ModuleList(
            nn.Sequential(*conv(32, 32, 3), nn.Conv2d(32, 32, 3, padding=1), _bn(32, rng))
            for _ in range(blocks))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, 2, padding=1, output_padding=1), _bn(16, rng),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 8, 3, 2, padding=1, output_padding=1), _bn(8, rng),
            nn.ReLU(),
            nn.Conv2d(8, 3, 9, padding=4), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        for block in self.res:
            y = y + block(y)
        return self.up(y)


class BasicBlock(nn.Module):
    def __init__(self, i: int, o: int, stride: int, rng: torch.Generator) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), _bn(o, rng),
                                  nn.ReLU(), nn.Conv2d(o, o, 3, 1, 1, bias=False), _bn(o, rng))
        self.short = (nn.Identity() if stride == 1 and i == o else
                      nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), _bn(o, rng)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class SmallResNet(nn.Module):
    """ResNet shape: stem conv + max pool, basic blocks (one downsampling), global average
    pool, Linear."""

    def __init__(self, rng: torch.Generator) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), _bn(8, rng), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(BasicBlock(8, 8, 1, rng), BasicBlock(8, 16, 2, rng))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class VGGish(nn.Module):
    """VGG's classifier head: conv/ReLU/max-pool stages down to a 7x7 map, flattened in
    PyTorch's C, H, W order into a Linear (32x7x7 here; VGG16 has 512x7x7)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _to_onnx(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17)
    return path


def _make(name: str, tmp: Path) -> Path:
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(1)
    if name == "generator":
        return GENERATOR
    if name == "style":
        return _to_onnx(StyleTransfer(rng), (1, 3, 32, 32), tmp / "style.onnx")
    if name == "resnet":
        return _to_onnx(SmallResNet(rng), (1, 3, 32, 32), tmp / "resnet.onnx")
    assert name == "vgg"
    return _to_onnx(VGGish(), (1, 3, 28, 28), tmp / "vgg.onnx")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    tmp = tmp_path_factory.mktemp("models")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = _make(name, tmp)
        return cache[name]
    return get


def _export(model: Path, out: Path, dtype: str = "float32") -> Path:
    assert cli.main(["export", str(model), "-o", str(out), "--dtype", dtype, "-q"]) == 0
    return out


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


# ----------------------------------------------------------------------- agreement


@pytest.mark.parametrize("name", ["generator", "style", "resnet", "vgg"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_verifies(models: Callable[[str], Path], tmp_path: Path, name: str,
                         dtype: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = models(name)
    out = _export(model, tmp_path / "out", dtype)
    report = verify(out, model)
    assert report.ok, report.table()
    assert report.storage == dtype
    layers = [r for r in report.rows if r.layer]
    assert len(layers) == len(_manifest(out)["layers"]) == report.layers_checked
    assert all(r.isolated is not None and r.chained is not None for r in report.rows)
    if dtype == "float32":  # 1e-4, and in fact much closer
        assert all(r.chained.max_abs < 1e-4 for r in report.rows)  # type: ignore[union-attr]
    assert not report.not_verified
    assert cli.main(["verify", str(out), "--model", str(model)]) == 0
    assert "OK:" in capsys.readouterr().out


def test_models_cover_the_kernels(models: Callable[[str], Path], tmp_path: Path) -> None:
    """The end-to-end models exercise every exported layer kind and the weightless ops."""
    kinds, ops = set(), set()
    for name in ("generator", "style", "resnet", "vgg"):
        model = models(name)
        report = verify(_export(model, tmp_path / name), model)
        kinds |= {r.kind for r in report.rows if r.layer}
        ops |= {r.op for r in report.rows if not r.layer}
    assert kinds == {"convolution", "depthwise", "transposed", "fully_connected", "subpixel",
                     "batch_normalization"}
    assert {"Relu", "Tanh", "Add", "MaxPool", "GlobalAveragePool"} <= ops


# ----------------------------------------------------------------------- broken exports


def _initializer(model: Path, name: str) -> np.ndarray:
    for t in onnx.load(str(model)).graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def _rewrite(out: Path, layer: str, weights: np.ndarray) -> None:
    """Replace a layer's weights file, keeping its size, and update the manifest's SHA-256
    so that the numbers are the only thing that differs."""
    doc = _manifest(out)
    entry = next(x for x in doc["layers"] if x["name"] == layer)
    info = entry["files"]["weights"]
    data = np.ascontiguousarray(weights, dtype="<f4" if info["dtype"] == "float32" else "<f2")
    assert data.nbytes == info["bytes"]
    (out / info["file"]).write_bytes(data.tobytes())
    info["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))


def _no_permute(w: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    """A convolution written as OIHW, the framework's bytes, not OHWI."""
    return w


def _no_reorder(w: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    """A Linear after a flatten written as [O][N]: columns in C, H, W order, not H, W, C."""
    return w


def _no_flip(w: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    """A transposed convolution with in/out swapped (IOHW -> OHWI) but not rotated."""
    return w.transpose(1, 2, 3, 0)


BROKEN = [
    ("generator", "conv1", _no_permute),
    ("generator", "fc1", _no_reorder),
    ("generator", "up", _no_flip),
    ("style", None, _no_permute),  # a residual block's 3x3 convolution
    ("style", "ConvTranspose", _no_flip),  # the first upsampler
    ("vgg", "Gemm", _no_reorder),  # the Linear reading the 32x7x7 map
]


def _pick(doc: dict[str, Any], which: str | None, fix: Callable[..., np.ndarray]) -> dict:
    layers = doc["layers"]
    if which is None:  # the 5th convolution: inside the first residual block
        return [x for x in layers if x["source"]["op"] == "Conv"][4]
    exact = [x for x in layers if x["name"] == which]
    return exact[0] if exact else next(x for x in layers if x["source"]["op"] == which)


@pytest.mark.parametrize(("name", "which", "fix"), BROKEN,
                         ids=[f"{n}-{f.__name__[1:]}" for n, _, f in BROKEN])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_broken_export_fails_and_names_the_layer(models: Callable[[str], Path],
                                                 tmp_path: Path, name: str, which: str | None,
                                                 fix: Callable[..., np.ndarray], dtype: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = models(name)
    out = _export(model, tmp_path / "out", dtype)
    entry = _pick(_manifest(out), which, fix)
    w = _initializer(model, entry["source"]["weights"])
    broken = fix(w, entry)
    assert broken.size == w.size
    _rewrite(out, entry["name"], broken.reshape(entry["files"]["weights"]["shape"]))
    report = verify(out, model)
    assert not report.ok
    first = report.first_divergence
    assert first is not None
    assert first.name == entry["name"], report.table()
    assert first.isolated is not None
    assert not first.isolated.ok
    # only that layer is wrong on its own: every other isolated check passes
    assert [r.name for r in report.rows if r.isolated and not r.isolated.ok] == [entry["name"]]
    assert cli.main(["verify", str(out), "--model", str(model)]) == 1
    text = capsys.readouterr().out
    assert f"first divergence at layer {entry['name']!r}" in text
    assert any(line.startswith(">>") and entry["name"] in line for line in text.splitlines())


# ----------------------------------------------------------------------- the command


def test_command_line_json_and_input(models: Callable[[str], Path], tmp_path: Path) -> None:
    out = _export(models("generator"), tmp_path / "out")
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32))
    run = subprocess.run([sys.executable, "-m", "mpslayout", "verify", str(out), "--model",
                          str(GENERATOR), "--input", str(x), "--json"],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["ok"] is True
    assert doc["first_divergence"] is None
    assert doc["input"].startswith(str(x))
    assert [r["name"] for r in doc["rows"] if r["layer"]] == [
        "conv1", "fc1", "fc2", "up", "dw", "bn", "pw", "head"]
    for r in doc["rows"]:
        assert r["isolated"]["error_over_tolerance"] <= 1


def test_seeded_input_is_reproducible(tmp_path: Path) -> None:
    out = _export(GENERATOR, tmp_path / "out")
    a, b = verify(out, GENERATOR, seed=3), verify(out, GENERATOR, seed=3)
    assert [r.as_dict() for r in a.rows] == [r.as_dict() for r in b.rows]
    assert verify(out, GENERATOR, seed=4).rows[0].as_dict() != a.rows[0].as_dict()


def test_tampered_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _export(GENERATOR, tmp_path / "out")
    path = out / "conv1.weights.bin"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="SHA-256"):
        verify(out, GENERATOR)
    assert cli.main(["verify", str(out), "--model", str(GENERATOR)]) == 1
    assert "SHA-256" in capsys.readouterr().err


def test_wrong_model_or_input_is_an_error(models: Callable[[str], Path],
                                          tmp_path: Path) -> None:
    out = _export(GENERATOR, tmp_path / "out")
    report = verify(out, models("vgg"))  # another model: no layer matches
    assert not report.ok
    assert report.rows[0].error is not None
    assert "no node" in report.rows[0].error
    with pytest.raises(VerifyError, match="shape"):
        verify(out, GENERATOR, input=np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(VerifyError, match="manifest"):
        verify(tmp_path, GENERATOR)


def test_float32_storage_of_a_float16_export(tmp_path: Path) -> None:
    """float16 weights read into float32 images: only the weight rounding is explained."""
    out = _export(GENERATOR, tmp_path / "out", "float16")
    report = verify(out, GENERATOR, storage="float32")
    assert report.ok, report.table()
    assert report.storage == "float32"
    assert report.weights_dtype == "float16"


def test_partial_export_lists_what_was_not_verified(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli.main(["export", str(GENERATOR), "-o", str(out), "--only", "conv1", "up",
                     "-q"]) == 0
    report = verify(out, GENERATOR)
    assert report.ok, report.table()
    assert [r.name for r in report.rows if r.layer] == ["conv1", "up"]
    assert {x["name"] for x in report.not_verified} >= {"fc1", "fc2", "dw", "bn"}


class Mixed(nn.Module):
    """What the big models leave out: a Linear reshaped to a non-square 2x3 image (MPS
    reshape of HWC-ordered rows), PixelShuffle after a convolution (a sub-pixel
    convolution), depthwise, concatenations (slice-aligned and not), LeakyReLU, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 8 * 2 * 3)
        self.c1 = nn.Conv2d(8, 4, 3, padding=1)
        self.c2 = nn.Conv2d(8, 3, 1)
        self.ps = nn.Conv2d(8, 2 * 4, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.fc(x).view(-1, 8, 2, 3)
        a = torch.cat([self.c1(y), self.c1(y)], 1)  # channel offsets 0 and 4
        b = torch.cat([self.c2(y), a], 1)  # offset 3: MPS cannot write it
        z = torch.sigmoid(nn.functional.pixel_shuffle(self.ps(a), 2))
        return nn.functional.leaky_relu(self.dw(a), 0.2), z, b


def test_reshape_subpixel_concat_and_neurons(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _to_onnx(Mixed(), (1, 12), tmp_path / "mixed.onnx")
    for dtype in ("float32", "float16"):
        out = _export(model, tmp_path / dtype, dtype)
        report = verify(out, model)
        assert report.ok, report.table()
        kinds = {r.name: r.kind for r in report.rows}
        assert kinds["/fc/Gemm"] == "fully_connected"
        assert kinds["/ps/Conv"] == "subpixel"
        assert {"Concat", "LeakyRelu", "Sigmoid"} <= {r.op for r in report.rows}
        (skipped,) = report.not_verified  # the concatenation at channel offset 3
        assert skipped["op"] == "Concat"
        assert "multiple of 4" in skipped["reason"]


def test_state_dict_export_takes_padding_from_the_model(tmp_path: Path) -> None:
    """A state_dict says nothing of padding: the verifier takes it from the model's nodes
    (and says so), and still checks the weights."""
    torch.manual_seed(0)
    net = VGGish().eval()
    model = _to_onnx(net, (1, 3, 28, 28), tmp_path / "vgg.onnx")
    torch.save(net.state_dict(), tmp_path / "vgg.pt")
    out = tmp_path / "out"
    assert cli.main(["export", str(tmp_path / "vgg.pt"), "-o", str(out), "--input-shape",
                     "classifier.0=32,7,7", "-q"]) == 0
    report = verify(out, model)
    assert report.ok, report.table()
    assert [r.name for r in report.rows if r.layer] == [
        "features.0", "features.3", "classifier.0", "classifier.3"]
    assert report.rows[0].notes == ["the manifest has no offset: taken from the model's pads"]


@st.composite
def _single_layer(draw: st.DrawFn) -> tuple[str, dict[str, Any], int, int, int, int]:
    op = draw(st.sampled_from(["Conv", "ConvTranspose", "MaxPool", "AveragePool"]))
    g = 1 if op.endswith("Pool") else draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dy, dx = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sy, sx = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = [draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw)]
    attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": [sy, sx], "pads": pads}
    if op != "AveragePool":
        attrs["dilations"] = [dy, dx]
    if op != "MaxPool" and not op.endswith("Pool"):
        attrs["group"] = g
    if op == "ConvTranspose":
        attrs["output_padding"] = [draw(st.integers(0, sy - 1)), draw(st.integers(0, sx - 1))]
    if op.endswith("Pool"):
        attrs["ceil_mode"] = draw(st.integers(0, 1))
    h = draw(st.integers(dy * (kh - 1) + 1, 9))
    w = draw(st.integers(dx * (kw - 1) + 1, 9))
    return op, attrs, g, draw(st.integers(1, 3)), h, w


@given(_single_layer(), st.integers(1, 3))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
def test_single_layers_with_asymmetric_padding(tmp_path: Path, layer: tuple, og: int) -> None:
    """Conv, ConvTranspose and pooling with asymmetric pads, strides, dilation and groups,
    built with onnx.helper (PyTorch pads symmetrically): export and verify agree."""
    from onnx import TensorProto, helper

    op, attrs, g, ig, h, w = layer
    rng = np.random.default_rng(h * 10 + w)
    cin = g * ig
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cin, 1, 1)).astype(np.float32),
                                     "w0")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["x0"], name="pre", kernel_shape=[1, 1])]
    ins = ["x0"]
    if op.startswith("Conv"):
        kh, kw = attrs["kernel_shape"]
        shape = (g * og, ig, kh, kw) if op == "Conv" else (cin, og, kh, kw)
        inits += [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "w"),
                  numpy_helper.from_array(rng.standard_normal(g * og).astype(np.float32), "b")]
        ins += ["w", "b"]
    nodes.append(helper.make_node(op, ins, ["y"], name="layer", **attrs))
    graph = helper.make_graph(
        nodes, "single", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError:
        return  # a combination ONNX itself rejects (an output size below 1)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example: tmp_path is shared
    path = folder / "single.onnx"
    onnx.save(model, str(path))
    out = folder / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MPS wants 4 channels per group: a warning only
        _export(path, out)
    report = verify(out, path)
    assert report.ok, report.table()
    assert not report.not_verified
    assert len(report.rows) == 2
