"""export --target mlx and verify of MLX exports: a PyTorch network exported to ONNX and as a
state_dict, written in MLX's layouts, loaded by a hand-written MLX port with the same names
(its forward equals PyTorch's), verified by MLX's own kernels against ONNX Runtime, and
each planted layout bug failing verify, naming its layer."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
mx = pytest.importorskip("mlx.core")
nn_mlx = pytest.importorskip("mlx.nn")

from mpslayout.export import export  # noqa: E402
from mpslayout.mlx import files  # noqa: E402
from mpslayout.verify import VerifyError  # noqa: E402
from mpslayout.verify.mlx_target import verify_mlx  # noqa: E402

tnn = torch.nn


class TorchNet(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = tnn.Conv2d(3, 8, 3, padding=1)
        self.bn = tnn.BatchNorm2d(8)
        self.dw = tnn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = tnn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.up = tnn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.fc = tnn.Linear(4 * 8 * 8, 16)
        self.lstm = tnn.LSTM(16, 12)
        self.gru = tnn.GRU(12, 6)

    def forward(self, x):
        x = self.bn(torch.relu(self.conv(x)))  # a BN after a ReLU stays a BN node
        x = self.up(self.grouped(self.dw(x)))
        x = self.fc(torch.flatten(x, 1))
        y, _ = self.lstm(x.unsqueeze(0).repeat(5, 1, 1))
        z, _ = self.gru(y)
        return z


class MlxNet(nn_mlx.Module):
    """The same network ported by hand to mlx.nn (channels last), with the same names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn_mlx.Conv2d(3, 8, 3, padding=1)
        self.bn = nn_mlx.BatchNorm(8)
        self.dw = nn_mlx.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn_mlx.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.up = nn_mlx.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.fc = nn_mlx.Linear(4 * 8 * 8, 16)
        self.lstm = nn_mlx.LSTM(16, 12)
        self.gru = nn_mlx.GRU(12, 6)

    def __call__(self, x):
        x = self.bn(nn_mlx.relu(self.conv(x)))
        x = self.up(self.grouped(self.dw(x)))
        x = self.fc(x.reshape(x.shape[0], -1))  # NHWC flattened: the HWC columns
        y, _ = self.lstm(mx.repeat(x[:, None], 5, axis=1))
        return self.gru(y)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    torch.manual_seed(0)
    m = TorchNet().eval()
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.running_var.uniform_(0.5, 2)
    folder = tmp_path_factory.mktemp("mlxnet")
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and GRU notes
        warnings.simplefilter("ignore")
        torch.onnx.export(m, x, str(folder / "net.onnx"), dynamo=False)
    torch.save(m.state_dict(), folder / "net.pt")
    return m, folder, x


@pytest.fixture(scope="module")
def onnx_export(net):
    _, folder, _ = net
    out = folder / "net.safetensors"
    export(folder / "net.onnx", out, target="mlx", progress=False)
    return out


def _rewrite(src, dst, change):
    """The export ``src`` with ``change(arrays)`` applied, metadata kept: a planted bug."""
    w = files.load(src)
    arrays = {k: np.array(v) for k, v in w.items()}
    change(arrays)
    files.save(dst, arrays, w.facts, tensors=w.tensors)
    return dst


def test_onnx_export_verifies(net, onnx_export):
    _, folder, _ = net
    report = verify_mlx(onnx_export, folder / "net.onnx")
    assert report.ok, report.table()
    kinds = {r.kind for r in report.rows}
    assert {"conv", "depthwise", "transposed", "fc", "batch_norm", "lstm", "gru"} <= kinds
    rec = [r for r in report.rows if r.kind in ("lstm", "gru")]
    assert all(r.chained is not None and r.chained.ok for r in rec)  # exercised


def _name(onnx_export, kind):
    facts = files.load(onnx_export).facts
    return next(x for x in facts["layers"] if x["rule"] == kind)


@pytest.mark.parametrize("bug", ["conv_oihw_bytes", "conv_double_transpose",
                                 "transposed_flipped", "transposed_oihw_bytes",
                                 "linear_chw_columns", "lstm_unsummed_bias",
                                 "gru_bhn_in_b"])
def test_planted_bugs_fail_naming_the_layer(net, onnx_export, tmp_path, bug):
    m, folder, _ = net
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    rec = _name(onnx_export, {"conv": "conv", "transposed": "transposed", "linear": "fc",
                              "lstm": "lstm", "gru": "gru"}[bug.split("_")[0]])
    t = rec["tensors"]

    def change(a):
        if bug == "conv_oihw_bytes":  # PyTorch's bytes read as (O, kH, kW, I)
            a[t["weight"]] = sd["conv.weight"].reshape(a[t["weight"]].shape)
        elif bug == "conv_double_transpose":  # MLX's layout transposed once more
            w = a[t["weight"]]
            a[t["weight"]] = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape)
        elif bug == "transposed_flipped":  # MPS's 180-degree flip, which MLX does itself
            a[t["weight"]] = np.ascontiguousarray(a[t["weight"]][:, ::-1, ::-1, :])
        elif bug == "transposed_oihw_bytes":
            a[t["weight"]] = sd["up.weight"].reshape(a[t["weight"]].shape)
        elif bug == "linear_chw_columns":  # the CHW columns of PyTorch's flatten
            a[t["weight"]] = sd["fc.weight"]
        elif bug == "lstm_unsummed_bias":  # b_ih alone (encodec's convert.py sums them)
            a[f"{rec['module']}.bias"] = sd["lstm.bias_ih_l0"]
        elif bug == "gru_bhn_in_b":  # bhn folded into b, bhn zero
            a[f"{rec['module']}.b"] = sd["gru.bias_ih_l0"] + sd["gru.bias_hh_l0"]
            a[f"{rec['module']}.bhn"] = np.zeros_like(a[f"{rec['module']}.bhn"])

    bad = _rewrite(onnx_export, tmp_path / "bad.safetensors", change)
    report = verify_mlx(bad, folder / "net.onnx")
    assert not report.ok
    assert report.first_divergence.name == rec["name"], report.table()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_weights_verify_and_still_catch_bugs(net, tmp_path, dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    _, folder, _ = net
    out = tmp_path / "half.safetensors"
    export(folder / "net.onnx", out, target="mlx", dtype=dtype, progress=False)
    header, _ = files.read_header(out)
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == \
        {"F16" if dtype == "float16" else "BF16"}
    assert verify_mlx(out, folder / "net.onnx").ok
    rec = _name(out, "fc")

    def swap_rows(a):
        w = a[rec["tensors"]["weight"]]
        a[rec["tensors"]["weight"]] = np.ascontiguousarray(w[::-1])
    bad = _rewrite(out, tmp_path / "bad.safetensors", swap_rows)
    assert verify_mlx(bad, folder / "net.onnx").first_divergence.name == rec["name"]


def test_state_dict_export_loads_into_an_mlx_port(net, tmp_path):
    """The MLX port loads the file with nothing else, and computes what PyTorch does."""
    m, folder, x = net
    out = tmp_path / "net.safetensors"
    doc = export(folder / "net.pt", out, target="mlx", progress=False,
                 input_shapes={"fc": (4, 8, 8)}, kinds={"up": "conv_transpose"})
    assert not doc["unsupported"], doc["unsupported"]
    port = MlxNet()
    port.load_weights(str(out), strict=True)
    port.eval()
    got = np.asarray(port(mx.array(x.numpy().transpose(0, 2, 3, 1))))
    want = m(x).detach().numpy()  # (T, B, H): the port's is (B, T, H)
    np.testing.assert_allclose(got, want.transpose(1, 0, 2), rtol=1e-4, atol=1e-5)
    import mpslayout.mlx as mm

    again = mm.sanitize(port, str(out), source="torch")  # marked MLX: converted nothing
    written = files.load(out)
    assert set(again) == set(written)
    for k, v in written.items():
        np.testing.assert_array_equal(np.asarray(again[k]), np.asarray(v))


def test_without_mlx_verify_names_the_extra(net, onnx_export, monkeypatch):
    _, folder, _ = net
    monkeypatch.setitem(sys.modules, "mlx", None)
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    with pytest.raises(VerifyError, match=r"mpslayout\[mlx\]"):
        verify_mlx(onnx_export, folder / "net.onnx")


def test_an_mps_folder_or_foreign_file_is_refused(net, tmp_path):
    _, folder, _ = net
    files.save(tmp_path / "plain.safetensors", {"w": np.zeros(3, np.float32)})
    with pytest.raises(VerifyError, match="not written by mpslayout export --target mlx"):
        verify_mlx(tmp_path / "plain.safetensors", folder / "net.onnx")


def test_export_writes_nothing_on_failure(net, tmp_path, monkeypatch):
    from mpslayout.export.targets.mlx import convert

    _, folder, _ = net

    def broken(*a, **k):
        raise RuntimeError("planted")
    monkeypatch.setattr(convert.rules, "linear_weights", broken)
    with pytest.raises(ValueError, match="planted"):
        export(folder / "net.onnx", tmp_path / "x.safetensors", target="mlx", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("bits", "group_size"), [(4, 64), (8, 32)])
def test_affine_quantized_linear(net, onnx_export, tmp_path, bits, group_size):
    """--quantize affine: the Linear's arrays are mx.quantize's of its MLX weight, load
    into nn.QuantizedLinear, verify passes, and CHW columns quantized still fail."""
    m, folder, _ = net
    out = tmp_path / "q.safetensors"
    export(folder / "net.onnx", out, target="mlx", quantize="affine", bits=bits,
           group_size=group_size, progress=False)
    q = files.load(out)
    rec = _name(out, "fc")["tensors"]
    plain = files.load(onnx_export)[_name(onnx_export, "fc")["tensors"]["weight"]]
    wq, scales, biases = mx.quantize(mx.array(np.asarray(plain)), group_size=group_size,
                                     bits=bits)
    for key, want in (("weight", wq), ("scales", scales), ("biases", biases)):
        np.testing.assert_array_equal(np.asarray(q[rec[key]]), np.asarray(want))
    layer = nn_mlx.QuantizedLinear(plain.shape[1], plain.shape[0], bias=True,
                                   group_size=group_size, bits=bits)
    layer.load_weights([(k, mx.array(np.asarray(q[rec[k]])))
                        for k in ("weight", "scales", "biases", "bias")], strict=True)
    assert verify_mlx(out, folder / "net.onnx").ok

    def chw(a):
        wq2, s2, b2 = mx.quantize(mx.array(m.fc.weight.detach().numpy()),
                                  group_size=group_size, bits=bits)
        a[rec["weight"]], a[rec["scales"]], a[rec["biases"]] = (
            np.asarray(wq2), np.asarray(s2), np.asarray(b2))
    bad = _rewrite(out, tmp_path / "bad.safetensors", chw)
    assert verify_mlx(bad, folder / "net.onnx").first_divergence.name == _name(out, "fc")["name"]


@pytest.mark.parametrize("target", ["mlx", "mps"])
def test_an_mlx_file_is_never_exported_again(net, tmp_path, target):
    """Never twice: the export's own output (MLX layout, said in its metadata) is refused
    as a source, where a state_dict reader would permute every weight once more."""
    _, folder, _ = net
    first = tmp_path / "first.safetensors"
    export(folder / "net.onnx", first, target="mlx", progress=False)
    out = tmp_path / ("again.safetensors" if target == "mlx" else "again_mps")
    with pytest.raises(ValueError, match="already in MLX's layouts"):
        export(first, out, target=target, progress=False)
    assert not out.exists()


def test_command_line(net, tmp_path, capsys):
    """export --target mlx and verify FILE.safetensors from the command line: exit 0 on the
    export, 1 on a planted bug, the summary and the report printed."""
    from mpslayout.cli import main

    _, folder, _ = net
    out = tmp_path / "cli.safetensors"
    assert main(["export", str(folder / "net.onnx"), "--target", "mlx", "-o", str(out),
                 "--dtype", "float16"]) == 0
    assert "in MLX's layouts" in capsys.readouterr().out
    assert main(["verify", str(out), "--model", str(folder / "net.onnx")]) == 0
    assert "OK:" in capsys.readouterr().out
    rec = _name(out, "transposed")

    def flip(a):
        a[rec["tensors"]["weight"]] = np.ascontiguousarray(a[rec["tensors"]["weight"]][:, ::-1])
    bad = _rewrite(out, tmp_path / "bad.safetensors", flip)
    assert main(["verify", str(bad), "--model", str(folder / "net.onnx"), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "failed"
    assert doc["first_divergence"] == rec["name"]
