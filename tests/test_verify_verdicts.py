"""verify's verdicts: what it says when the input does not reach every weight, when ONNX
Runtime cannot run the model (old opsets; --expect), when an export holds raw tensors
(run by their op's meaning), and when nothing is checkable (exit status 3). Each check
also sees its planted bug fail."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
nn = torch.nn


from mpslayout import cli  # noqa: E402
from mpslayout.verify import verify  # noqa: E402

PYTORCH_CONVERTED = Path(os.path.dirname(onnx.__file__)) / "backend/test/data/pytorch-converted"


def _to_onnx(model: nn.Module, x: torch.Tensor, path: Path, **kw: object) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], **kw)
    return path


def _export(model: Path, out: Path, *extra: str) -> Path:
    assert cli.main(["export", str(model), "-o", str(out), "-q", "--force", *extra]) == 0
    return out


def _rewrite(out: Path, layer: str, role: str,
             fix: Callable[[np.ndarray], np.ndarray]) -> None:
    """Plant a bug: one file of one layer rewritten, its SHA-256 updated so only the
    numbers differ."""
    doc = json.loads((out / "manifest.json").read_text())
    entry = next(x for x in doc["layers"] if x["name"] == layer)
    info = entry["files"][role]
    dt = np.dtype({"float32": "<f4", "float16": "<f2", "uint8": "u1"}[info["dtype"]])
    a = np.fromfile(out / info["file"], dtype=dt).reshape(info["shape"])
    data = np.ascontiguousarray(fix(a.copy()), dtype=dt)
    assert data.shape == a.shape
    assert not np.array_equal(data, a)
    (out / info["file"]).write_bytes(data.tobytes())
    info["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))


# ------------------------------------------------------------ taps the input never reaches


class _LateDepthwise(nn.Module):
    """An OCR-style trunk: four stride-2 convolutions, then a 5x5 depthwise layer that at
    a 32-pixel-high input sees a 2-pixel-high map."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for width in (8, 8, 8, 8):
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU()]
            c = width
        self.trunk = nn.Sequential(*layers)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.trunk(x))


def _late_depthwise(tmp_path: Path) -> tuple[Path, Path, str]:
    torch.manual_seed(0)
    path = _to_onnx(_LateDepthwise(), torch.randn(1, 3, 32, 64), tmp_path / "late.onnx",
                    dynamic_axes={"x": {2: "h", 3: "w"}})
    out = _export(path, tmp_path / "late")
    doc = json.loads((out / "manifest.json").read_text())
    dw = next(x["name"] for x in doc["layers"] if x["kind"] == "depthwise")
    return path, out, dw


def test_taps_outside_a_small_input_are_untested_not_a_divergence(tmp_path: Path,
                                                                  capsys) -> None:
    path, out, dw = _late_depthwise(tmp_path)
    x = ["--input-dims", "x=1,3,32,64"]
    assert cli.main(["verify", str(out), "--model", str(path), *x]) == 0
    text = capsys.readouterr().out
    assert "OK:" in text, text
    assert "untested" in text, text
    assert "x=1,3,48,64" in text, text
    assert cli.main(["verify", str(out), "--model", str(path), "--json", *x]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "ok"
    assert doc["exit_status"] == 0
    [u] = doc["untested"]
    assert u["layer"] == dw
    assert u["untested_taps"] == {"rows": [0, 4], "columns": []}
    assert u["smallest_input"] == "x=1,3,48,64"
    # at the size it names, every tap is read: nothing untested
    report = verify(out, path, input_dims={"x": (1, 3, 48, 64)})
    assert report.ok, report.table()
    assert not report.untested, report.table()


def test_untested_taps_hide_a_bug_the_named_input_finds(tmp_path: Path) -> None:
    """A wrong weight in a tap row the small input never reads passes there (that is what
    "untested" means), and fails at the smallest input the report names; a wrong weight in
    a row that is read fails at the small input too."""
    path, out, dw = _late_depthwise(tmp_path)

    def row0(w: np.ndarray) -> np.ndarray:  # (O, kH, kW, 1): kernel row 0 doubled
        w[:, 0] = 2 * w[:, 0] + 0.5
        return w

    _rewrite(out, dw, "weights", row0)
    small = verify(out, path, input_dims={"x": (1, 3, 32, 64)})
    assert small.ok, small.table()
    assert small.untested, small.table()
    named = verify(out, path, input_dims={"x": (1, 3, 48, 64)})
    assert not named.ok, named.table()
    assert named.first_divergence.name == dw, named.table()

    def row1(w: np.ndarray) -> np.ndarray:  # a read row: rows 1 and 3 swapped
        return w[:, [0, 3, 2, 1, 4]]

    _rewrite(out, dw, "weights", row1)
    bad = verify(out, path, input_dims={"x": (1, 3, 32, 64)})
    assert not bad.ok, bad.table()
    assert bad.first_divergence.name == dw, bad.table()


# ------------------------------------------------------------ float16 sums with a constant


class _Shift(nn.Module):
    """The affine end of a LayerNorm on a (N, T, C) sequence: x * scale + shift."""

    def __init__(self, c: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.scale = nn.Parameter(torch.rand(c, generator=g) + 0.5)
        self.shift = nn.Parameter(torch.rand(c, generator=g) * 0.4 - 1.0)  # about -0.8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def test_float16_sum_with_a_constant_is_charged_by_its_terms(tmp_path: Path) -> None:
    """y = a + c with a about -c (y ~ 0.002, a ~ 0.8): the float16 constant's rounding is
    up to u16*|c|, far above u16*|y|. A correct float16 export passes; the shift written in
    reverse channel order fails, naming its raw tensor."""
    c, t = 16, 24
    m = _Shift(c)
    path = _to_onnx(m, torch.randn(1, t, c), tmp_path / "shift.onnx", opset_version=13)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        s, b = m.scale.numpy(), m.shift.numpy()
    a = -b + 0.002 * rng.standard_normal((1, t, c))  # x*scale lands next to -shift
    x = (a / s).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = _export(path, tmp_path / "f16", "--dtype", "float16")
    report = verify(out, path, input=x)
    assert report.ok, report.table()
    doc = json.loads((out / "manifest.json").read_text())
    shift = next(e["name"] for e in doc["layers"] if e["source"]["op"] == "Add")
    assert next(r for r in report.rows if r.name == shift).layer
    _rewrite(out, shift, "tensor", lambda v: v[::-1])
    bad = verify(out, path, input=x)
    assert not bad.ok, bad.table()
    assert bad.first_divergence.name == shift, bad.table()
