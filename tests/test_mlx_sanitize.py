"""mm.sanitize / mm.save / mm.to_torch: a small PyTorch network (Conv1d, Conv2d with groups
and depthwise, BatchNorm, PReLU, ConvTranspose2d, Linear after flatten, LayerNorm,
Embedding, MultiheadAttention, a 2-layer bidirectional LSTM, a GRU) ported by hand to
mlx.nn with the same names: the MLX forward on the CPU equals PyTorch's. Planted bugs
(double transpose, flipped transposed conv, CHW columns, unsummed LSTM bias, GRU bhn in b)
make it fail; converting twice changes nothing; shapes refuse, never guess."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpslayout.mlx as mm
from mpslayout.mlx import rules
from mpslayout.mlx.arrays import to_numpy

# the module (the package's attribute `sanitize` is the function)
sanitize_mod = importlib.import_module("mpslayout.mlx.sanitize")

FLATTEN = {"fc": (6, 8, 8)}
TOL = 1e-4


def _torch_net() -> Any:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(3, 6, 3, padding=1)
            self.emb = nn.Embedding(20, 6)
            self.att = nn.MultiheadAttention(6, 2, batch_first=True)
            self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = nn.GRU(10, 4, batch_first=True)
            self.c2 = nn.Conv2d(4, 8, 3, padding=1, groups=2)
            self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
            self.bn = nn.BatchNorm2d(16)
            self.act = nn.PReLU(16)
            self.up = nn.ConvTranspose2d(16, 6, 4, stride=2, padding=1)
            self.fc = nn.Linear(6 * 8 * 8, 10)
            self.ln = nn.LayerNorm(10)

        def forward(self, seq: Any, tok: Any, img: Any) -> tuple[Any, Any]:
            s = self.c1(seq).transpose(1, 2) + self.emb(tok)
            s = self.att(s, s, s, need_weights=False)[0]
            s = self.gru(self.lstm(s)[0])[0]
            y = self.act(self.bn(self.dw(self.c2(img))))
            y = self.ln(self.fc(torch.flatten(self.up(y), 1)))
            return s, y

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.act.weight.uniform_(-0.5, 0.5)
    return net.eval()


def _mlx_net() -> Any:
    pytest.importorskip("mlx.core")
    import mlx.core as mx
    import mlx.nn as nn

    class BiLSTM(nn.Module):
        def __init__(self, i: int, h: int, layers: int) -> None:
            super().__init__()
            self.layers = [nn.LSTM(i if k == 0 else 2 * h, h) for k in range(layers)]
            self.reverse = [nn.LSTM(i if k == 0 else 2 * h, h) for k in range(layers)]

        def __call__(self, x: Any) -> Any:
            for f, b in zip(self.layers, self.reverse):
                x = mx.concatenate([f(x)[0], b(x[:, ::-1])[0][:, ::-1]], axis=-1)
            return x

    class Port(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(3, 6, 3, padding=1)
            self.emb = nn.Embedding(20, 6)
            self.att = nn.MultiHeadAttention(6, 2, bias=True)
            self.lstm = BiLSTM(6, 5, 2)
            self.gru = nn.GRU(10, 4)
            self.c2 = nn.Conv2d(4, 8, 3, padding=1, groups=2)
            self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
            self.bn = nn.BatchNorm(16)
            self.act = nn.PReLU(16)
            self.up = nn.ConvTranspose2d(16, 6, 4, stride=2, padding=1)
            self.fc = nn.Linear(6 * 8 * 8, 10)
            self.ln = nn.LayerNorm(10)

        def __call__(self, seq: Any, tok: Any, img: Any) -> tuple[Any, Any]:
            s = self.c1(seq) + self.emb(tok)  # NLC
            s = self.att(s, s, s)
            s = self.gru(self.lstm(s))
            y = self.act(self.bn(self.dw(self.c2(img))))  # NHWC
            y = self.ln(self.fc(self.up(y).reshape(y.shape[0], -1)))
            return s, y

    return Port()


def _inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    seq = rng.standard_normal((2, 3, 5)).astype(np.float32)
    tok = rng.integers(0, 20, (2, 5))
    img = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    return seq, tok, img


def _torch_out(net: Any) -> tuple[np.ndarray, np.ndarray]:
    import torch

    seq, tok, img = _inputs()
    with torch.no_grad():
        s, y = net(torch.from_numpy(seq), torch.from_numpy(tok), torch.from_numpy(img))
    return s.numpy(), y.numpy()


def _mlx_out(port: Any) -> tuple[np.ndarray, np.ndarray]:
    import mlx.core as mx

    seq, tok, img = _inputs()
    port.eval()
    s, y = port(mx.array(seq.transpose(0, 2, 1)), mx.array(tok),
                mx.array(img.transpose(0, 2, 3, 1)))
    return np.array(s), np.array(y)


def _error(sd: Any, source: str = "torch") -> float:
    net, port = _torch_net(), _mlx_net()
    port.load_weights(list(mm.sanitize(port, sd, source, flatten=FLATTEN).items()))
    (ts, ty), (ms, my) = _torch_out(net), _mlx_out(port)
    return max(float(np.abs(ts - ms).max()), float(np.abs(ty - my).max()))


def _state_dict() -> dict[str, Any]:
    return _torch_net().state_dict()


def test_port_equals_torch() -> None:
    assert _error(_state_dict()) < TOL


@pytest.mark.parametrize("ext", [".pt", ".safetensors", ".npz"])
def test_from_files(tmp_path: Path, ext: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("mlx.core")

    sd = _state_dict()
    path = tmp_path / f"w{ext}"
    if ext == ".pt":
        torch.save(sd, path)
    elif ext == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})
    else:
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    assert _error(str(path)) < TOL


# the true rules, kept before a test plants a bug in their place
CONV, CONVT, LINEAR = rules.conv_weights, rules.conv_transpose_weights, rules.linear_weights
LSTM, GRU = rules.lstm_params, rules.gru_params


def _bug_double_transpose(w: Any, **kw: Any) -> np.ndarray:
    return CONV(CONV(w, **kw), **kw)


def _bug_flip(w: Any, **kw: Any) -> np.ndarray:
    return np.ascontiguousarray(CONVT(w, **kw)[:, ::-1, ::-1])


def _bug_oihw_bytes(w: Any, **kw: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w)).reshape(CONVT(w).shape)


def _bug_chw_columns(w: Any, **kw: Any) -> np.ndarray:
    return LINEAR(w, layout=kw.get("layout", "OI"))


def _bug_unsummed(*args: Any, **kw: Any) -> dict[str, np.ndarray]:
    return LSTM(*args[:3], **kw)


def _bug_bhn_in_b(*args: Any, **kw: Any) -> dict[str, np.ndarray]:
    p = GRU(*args, **kw)
    h = p["bhn"].shape[0]
    p["b"] = p["b"].copy()
    p["b"][2 * h:] += p["bhn"]
    p["bhn"] = np.zeros_like(p["bhn"])
    return p


@pytest.mark.parametrize(("name", "bug"), [
    ("conv_weights", _bug_double_transpose), ("conv_transpose_weights", _bug_flip),
    ("conv_transpose_weights", _bug_oihw_bytes), ("linear_weights", _bug_chw_columns),
    ("lstm_params", _bug_unsummed), ("gru_params", _bug_bhn_in_b)])
def test_planted_bugs_fail(monkeypatch: pytest.MonkeyPatch, name: str, bug: Any) -> None:
    """Each bug this comparison exists to catch, planted in the rule sanitize calls."""
    sd = _state_dict()
    assert _error(sd) < TOL
    monkeypatch.setattr(sanitize_mod.rules, name, bug)
    try:
        err = _error(sd)
    except ValueError:  # a shape the MLX model refuses is caught too
        return
    assert err > 100 * TOL, (name, err)


def _bits(w: Any) -> dict[str, bytes]:
    return {k: to_numpy(v, k).tobytes() for k, v in w.items()}


def test_never_twice(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    mx = pytest.importorskip("mlx.core")

    port = _mlx_net()
    once = mm.sanitize(port, _state_dict(), "torch", flatten=FLATTEN)
    assert once.is_mlx
    twice = mm.sanitize(port, once, "torch", flatten=FLATTEN)  # marked: nothing converts
    assert _bits(twice) == _bits(once)
    path = tmp_path / "port.safetensors"
    mm.save(path, once, {"model": "test net"})
    meta = json.loads(mx.load(str(path), return_metadata=True)[1]["mpslayout"])
    assert (meta["format"], meta["version"], meta["model"]) == ("mlx", 1, "test net")
    assert meta["tensors"]["up.weight"] == {"kind": "conv_transpose", "source_layout": "IOHW",
                                            "layout": "mlx"}
    assert meta["tensors"]["fc.weight"]["source_layout"] == "OI/CHW"
    loaded = mx.load(str(path))
    assert {k: np.array(v).tobytes() for k, v in loaded.items()} == _bits(once)
    from_file = mm.sanitize(port, str(path), "torch", flatten=FLATTEN)
    assert _bits(from_file) == _bits(once)
    port.load_weights(str(path))  # MLX reads our file with nothing else
    net = _torch_net()
    (ts, ty), (ms, my) = _torch_out(net), _mlx_out(port)
    assert max(np.abs(ts - ms).max(), np.abs(ty - my).max()) < TOL
    as_mlx = mm.sanitize(port, {k: np.array(v) for k, v in once.items()}, "mlx")
    assert _bits(as_mlx) == _bits(once)


def test_refuses_mlx_layout_given_as_torch() -> None:
    port = _mlx_net()
    sd = {k: v.numpy() for k, v in _state_dict().items()}
    sd["c2.weight"] = np.ascontiguousarray(sd["c2.weight"].transpose(0, 2, 3, 1))  # (8,3,3,2)
    with pytest.raises(ValueError, match=r"c2\.weight.*\(8, 2, 3, 3\).*\(8, 3, 3, 2\)"):
        mm.sanitize(port, sd, "torch", flatten=FLATTEN)
    sd = {k: v.numpy() for k, v in _state_dict().items()}
    with pytest.raises(ValueError, match=r"fc\.weight"):  # Keras's (I, O) for a torch Linear
        mm.sanitize(port, {**sd, "fc.weight": sd["fc.weight"].T}, "torch")
    bad = r"up\.weight.*already in MLX's layout.*\(16, 6, 4, 4\).*\(6, 4, 4, 16\)"
    with pytest.raises(ValueError, match=bad):
        mm.sanitize(port, sd, "mlx", strict=False)


def test_square_weight_is_converted_by_kind() -> None:
    """[32, 3, 3, 3] reads the same in OIHW and MLX's OHWI: the kind and source decide."""
    nn = pytest.importorskip("mlx.nn")

    w = np.random.default_rng(0).standard_normal((32, 3, 3, 3)).astype(np.float32)
    got = mm.sanitize(nn.Conv2d(3, 32, 3, bias=False), {"weight": w}, "torch")
    assert to_numpy(got["weight"], "w").tobytes() == w.transpose(0, 2, 3, 1).tobytes()
    same = mm.sanitize(nn.Conv2d(3, 32, 3, bias=False), {"weight": w}, "mlx")
    assert to_numpy(same["weight"], "w").tobytes() == w.tobytes()


def test_unmatched_names_are_listed() -> None:
    port = _mlx_net()
    sd = {k: v.numpy() for k, v in _state_dict().items()}
    sd["extra.weight"] = np.zeros(3, np.float32)
    del sd["ln.bias"]
    with pytest.raises(ValueError, match=r"extra\.weight.*ln\.bias"):
        mm.sanitize(port, sd, "torch", flatten=FLATTEN)
    w = mm.sanitize(port, sd, "torch", flatten=FLATTEN, strict=False)
    assert w.unused == ["extra.weight"]
    assert w.missing == ["ln.bias"]
    assert w.ignored == ["bn.num_batches_tracked"]


def test_to_torch_round_trip() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("mlx.core")

    net = _torch_net()
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    port = _mlx_net()
    back = mm.to_torch(mm.sanitize(port, sd, "torch", flatten=FLATTEN), port, flatten=FLATTEN)
    for k, v in sd.items():
        if "bias_hh" in k or "bias_ih" in k or k.endswith("num_batches_tracked"):
            continue
        assert back[k].tobytes() == v.tobytes(), k
    # GRU: bias_hh keeps b_hh_n exactly; the sums give the same cell
    assert back["gru.bias_hh_l0"][8:].tobytes() == sd["gru.bias_hh_l0"][8:].tobytes()
    net2 = _torch_net()
    net2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=False)
    for a, b in zip(_torch_out(net), _torch_out(net2.eval())):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mapping_model_without_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    """{path: MLX type name} describes the port; numpy comes back when mlx is missing."""
    monkeypatch.setattr(sanitize_mod, "mlx_available", lambda: False)
    rng = np.random.default_rng(0)
    sd = {"conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
          "conv.bias": np.zeros(8, np.float32),
          "rnn.weight_ih_l0": rng.standard_normal((12, 3)).astype(np.float32),
          "rnn.weight_hh_l0": rng.standard_normal((12, 4)).astype(np.float32),
          "rnn.bias_ih_l0": np.ones(12, np.float32), "rnn.bias_hh_l0": np.ones(12, np.float32)}
    w = mm.sanitize({"conv": "Conv2d", "rnn": "GRU"}, sd, "torch", dtype=np.float16)
    assert sorted(w) == ["conv.bias", "conv.weight", "rnn.Wh", "rnn.Wx", "rnn.b", "rnn.bhn"]
    assert type(w["conv.weight"]) is np.ndarray
    assert w["conv.weight"].dtype == np.float16
    np.testing.assert_array_equal(w["rnn.b"], [2] * 8 + [1] * 4)
    with pytest.raises(ValueError, match="unknown MLX type"):
        mm.sanitize({"conv": "Convolution"}, sd)


def test_import_without_mlx() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['mlx'] = None; import mpslayout.mlx as mm; "
            "print(mm.conv_weights([[[[1.0]]]]).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ})
    assert out.stdout.strip() == "(1, 1, 1, 1)"


def test_files_without_mlx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save/load in plain numpy: the bytes, the header by the safetensors format's own
    reader when installed, the record; a marked file is never converted again."""
    monkeypatch.setattr(sanitize_mod, "mlx_available", lambda: False)
    rng = np.random.default_rng(3)
    w = {"conv.weight": rng.standard_normal((8, 3, 3, 2)).astype(np.float32),
         "conv.bias": rng.standard_normal(8).astype(np.float16),
         "emb.weight": rng.integers(0, 9, (4, 2)).astype(np.int32)}
    path = tmp_path / "w.safetensors"
    mm.save(path, w, {"note": "x"}, tensors={"conv.weight": {"kind": "conv",
                                                               "source_layout": "OIHW"}})
    back = mm.load(path)
    assert {k: v.tobytes() for k, v in back.items()} == {k: v.tobytes() for k, v in w.items()}
    assert back.tensors["conv.weight"] == {"kind": "conv", "source_layout": "OIHW",
                                           "layout": "mlx"}
    assert back.facts == {"note": "x"}
    assert not list(tmp_path.glob(".mpslayout-*"))  # no temporary file left behind
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert (8 + n) % 8 == 0
    assert header["conv.bias"]["dtype"] == "F16"
    st = pytest.importorskip("safetensors.numpy")
    ref = st.load_file(str(path))
    assert {k: v.tobytes() for k, v in ref.items()} == {k: v.tobytes() for k, v in w.items()}
    again = mm.sanitize({"conv": "Conv2d", "emb": "Embedding"}, str(path), "torch")
    assert {k: v.tobytes() for k, v in again.items()} == {k: v.tobytes() for k, v in w.items()}


def test_bfloat16_and_float16() -> None:
    """A bfloat16 torch state_dict moves bit for bit; dtype= casts in the same pass."""
    torch = pytest.importorskip("torch")
    mx = pytest.importorskip("mlx.core")
    pytest.importorskip("ml_dtypes")
    sd = _torch_net().to(torch.bfloat16).state_dict()
    port = _mlx_net()
    w = mm.sanitize(port, sd, "torch", flatten=FLATTEN)
    assert w["c2.weight"].dtype == mx.bfloat16
    bits = sd["c2.weight"].view(torch.int16).numpy().transpose(0, 2, 3, 1)
    assert to_numpy(w["c2.weight"], "w").view(np.int16).tobytes() == bits.tobytes()
    want = (sd["lstm.bias_ih_l0"].double() + sd["lstm.bias_hh_l0"].double()).to(torch.bfloat16)
    assert to_numpy(w["lstm.layers.0.bias"], "b").view(np.int16).tobytes() == \
        want.view(torch.int16).numpy().tobytes()
    port.load_weights(list(w.items()))
    half = mm.sanitize(port, _state_dict(), "torch", flatten=FLATTEN, dtype=np.float16)
    f32 = _state_dict()["up.weight"].numpy()
    assert to_numpy(half["up.weight"], "w").tobytes() == \
        f32.transpose(1, 2, 3, 0).astype(np.float16).tobytes()


def test_sequential_names() -> None:
    """PyTorch's nn.Sequential names ``features.0.weight``; MLX's keeps its modules in
    ``layers``: ``features.layers.0.weight``. sanitize and to_torch translate both ways."""
    torch = pytest.importorskip("torch")
    mx = pytest.importorskip("mlx.core")
    import mlx.nn as mnn

    tn = torch.nn
    torch.manual_seed(1)
    net = tn.Sequential(tn.Conv2d(3, 4, 3), tn.BatchNorm2d(4), tn.ReLU(),
                        tn.Sequential(tn.Conv2d(4, 2, 1), tn.Flatten(), tn.Linear(2 * 4 * 4, 3)))
    net.eval()
    port = mnn.Sequential(mnn.Conv2d(3, 4, 3), mnn.BatchNorm(4), mnn.ReLU(),
                          mnn.Sequential(mnn.Conv2d(4, 2, 1), lambda x: x.reshape(x.shape[0], -1),
                                         mnn.Linear(2 * 4 * 4, 3)))
    flat = {"layers.3.layers.2": (2, 4, 4)}
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    w = mm.sanitize(port, sd, "torch", flatten=flat)
    assert "layers.3.layers.2.weight" in w
    port.load_weights(list(w.items()))
    port.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = np.array(port(mx.array(x.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    back = mm.to_torch(w, port, flatten=flat)
    assert sorted(back) == sorted(k for k in sd if not k.endswith("num_batches_tracked"))
    assert all(back[k].tobytes() == sd[k].tobytes() for k in back)


def test_checkpoint_file(tmp_path: Path) -> None:
    """A training checkpoint keeps the weights under a key: {"epoch": 3, "model": sd}."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("mlx.core")
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model": _state_dict()}, path)
    assert _error(str(path)) < TOL
    torch.save({"epoch": 3}, path)
    with pytest.raises(TypeError, match="no tensors"):
        mm.sanitize(_mlx_net(), str(path))


def test_argument_errors() -> None:
    nn = pytest.importorskip("mlx.nn")
    conv = {"weight": np.zeros((4, 3, 3, 3), np.float32)}
    with pytest.raises(ValueError, match="source must be"):
        mm.sanitize(nn.Conv2d(3, 4, 3, bias=False), conv, "tf")
    with pytest.raises(ValueError, match="flatten names"):
        mm.sanitize(nn.Conv2d(3, 4, 3, bias=False), conv, flatten={"": (3, 3, 3)})
    with pytest.raises(ValueError, match="QuantizedLinear"):
        mm.sanitize(nn.QuantizedLinear(64, 8), {})
    with pytest.raises(ValueError, match=r"conv\.weight has shape \(4, 3, 3\)"):
        mm.sanitize({"conv": "Conv2d"}, {"conv.weight": np.zeros((4, 3, 3), np.float32)})
