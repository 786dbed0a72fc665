"""A permute before flatten -> Linear (issue 17 item 2): ``x.permute(0, 3, 2, 1).flatten(1)``,
``x.permute(0, 3, 1, 2).reshape(N, -1)``, ``x.view(N, C, H*W).transpose(1, 2).flatten(1)``.
No MPS kernel produces the permuted tensor, so the export folds the permutation into the
Linear's weight columns and the layer reads the conv's output image. The weights are
checked against PyTorch by the flatten formula, the export is verified against ONNX
Runtime, and a file written the old way (the layer reading the transposed tensor) and one
with the permutation folded backwards both FAIL, naming the layer.
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

import mpslayout  # noqa: E402
from mpslayout.export.sources.onnx import layers as onnx_layers  # noqa: E402
from mpslayout.export.sources.onnx import permute  # noqa: E402
from mpslayout.verify import verify  # noqa: E402

C, H, W, OUT = 8, 6, 5, 7
MODES = ("permute_0321", "permute_0312_reshape", "view_transpose", "permute_nhwc")


class Net(torch.nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.mode = mode
        self.c = torch.nn.Conv2d(3, C, 3, padding=1)
        self.fc = torch.nn.Linear(C * H * W, OUT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: Any) -> Any:
        y = torch.relu(self.c(x))
        if self.mode == "permute_0321":
            y = y.permute(0, 3, 2, 1).flatten(1)
        elif self.mode == "permute_0312_reshape":
            y = y.permute(0, 3, 1, 2).reshape(y.shape[0], -1)
        elif self.mode == "view_transpose":
            y = y.view(y.shape[0], C, H * W).transpose(1, 2).flatten(1)
        else:
            y = y.permute(0, 2, 3, 1).flatten(1)
        return self.fc(y)


def _expected(mode: str, lin: np.ndarray) -> np.ndarray:
    """dst[o][h][w][c] = L[o][n], n the index torch's chain gives element (c, h, w)."""
    out = np.empty((OUT, H, W, C), np.float32)
    for c in range(C):
        for h in range(H):
            for w in range(W):
                if mode == "permute_0321":      # (N, W, H, C)
                    n = (w * H + h) * C + c
                elif mode == "permute_0312_reshape":  # (N, W, C, H)
                    n = (w * C + c) * H + h
                elif mode == "view_transpose":  # (N, H*W, C)
                    n = (h * W + w) * C + c
                else:                           # (N, H, W, C)
                    n = (h * W + w) * C + c
                out[:, h, w, c] = lin[:, n]
    return out


def _model(tmp: Path, mode: str, batch: int = 1) -> tuple[Path, Net]:
    m = Net(mode).eval()
    path = tmp / f"{mode}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(batch, 3, H, W),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=13)
    return path, m


def _fc(out: Path) -> tuple[dict[str, Any], np.ndarray]:
    doc = json.loads((out / "manifest.json").read_text())
    (fc,) = [e for e in doc["layers"] if e["kind"] == "fully_connected"]
    f = fc["files"]["weights"]
    return fc, np.fromfile(out / f["file"], f["dtype"]).reshape(f["shape"])


@pytest.mark.parametrize("mode", MODES)
def test_the_permutation_is_folded_and_verifies(mode: str, tmp_path: Path) -> None:
    path, m = _model(tmp_path, mode)
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), strict=True, progress=False)
    fc, w = _fc(out)
    conv_out = next(n.output[0] for n in onnx.load(str(path)).graph.node
                    if n.op_type == "Relu")
    assert fc["source"]["input"] == conv_out  # the image MPS holds, not the permuted one
    np.testing.assert_array_equal(w, _expected(mode, m.fc.weight.detach().numpy()))
    if mode != "permute_nhwc":  # the NHWC flatten is read as HWC, nothing folded
        assert fc["fully_connected"]["reads"] == conv_out
        assert "Transpose" in [x["op"] for x in fc["fully_connected"]["folded"]]
    rep = verify(out, path)
    assert rep.ok, [(r.name, r.error) for r in rep.rows]
    assert not rep.not_verified, rep.not_verified  # the permute is the layer's, checked


@pytest.mark.parametrize("mode", MODES[:3])
def test_an_export_reading_the_transposed_tensor_fails(mode: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """The old way: the layer reads the Transpose's output, which no MPS kernel produces
    (the fold turned off while exporting). verify must fail it, naming the layer."""
    path, _ = _model(tmp_path, mode)
    out = tmp_path / "old"
    with monkeypatch.context() as mp:
        mp.setattr(onnx_layers, "permuted_flatten", lambda g, a, *_: None)
        mpslayout.export(str(path), str(out), progress=False)
    rep = verify(out, path)
    assert not rep.ok
    bad = rep.first_divergence
    assert bad is not None
    assert bad.name == "/fc/Gemm"
    assert "no MPS kernel produces that tensor" in (bad.error or "")


def test_a_permutation_folded_backwards_fails(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the columns moved by the permutation instead of its inverse."""
    path, _ = _model(tmp_path, "permute_0312_reshape")
    out = tmp_path / "bad"
    real = permute.fold_columns

    def backwards(w: Any, p: Any, layout: str, where: str) -> Any:
        p = permute.Permuted(p.image, p.hwc, p.nodes, np.argsort(p.columns))
        return real(w, p, layout, where)

    with monkeypatch.context() as mp:
        mp.setattr(onnx_layers, "fold_columns", backwards)
        mpslayout.export(str(path), str(out), progress=False)
    rep = verify(out, path)
    assert not rep.ok
    assert rep.first_divergence is not None
    assert rep.first_divergence.name == "/fc/Gemm"


def test_batch_of_two_with_dynamic_batch(tmp_path: Path) -> None:
    """A symbolic batch (dynamic axis) folds the same way; verified at batch 2."""
    m = Net("permute_0321").eval()
    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, H, W),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=13,
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    out = tmp_path / "out"
    mpslayout.export(str(path), str(out), strict=True, progress=False)
    _, w = _fc(out)
    np.testing.assert_array_equal(w, _expected("permute_0321", m.fc.weight.detach().numpy()))
    assert verify(out, path, input_dims={"x": (2, 3, H, W)}).ok
