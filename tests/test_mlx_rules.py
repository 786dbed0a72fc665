"""mpslayout.mlx rules: bit-equal to their loop twins (mpslayout.mlx.slow, written from
MLX's formulas) and to numpy one-liners on random bits in odd memory layouts, for float32,
float16 and bfloat16 (with ml_dtypes); the inverses round-trip byte for byte; and, with
mlx installed, MLX's own ops on the converted weights equal PyTorch's / Keras's layers."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays, dims
from test_twins import PROPERTY, assert_bit_equal

import mpslayout.mlx as mm
from mpslayout.mlx import slow

try:
    import ml_dtypes

    BF16: list[Any] = [np.dtype(ml_dtypes.bfloat16)]
except ImportError:
    BF16 = []

F32 = np.dtype(np.float32)
DTYPES = [F32, np.dtype(np.float16), *BF16]
# (input dtype, dtype= argument): keep, or the engine's fused casts
CASTS = [(F32, None), (np.dtype(np.float16), None), (F32, np.float16),
         (np.dtype(np.float16), np.float32), *[(F32, b) for b in BF16],
         *[(b, None) for b in BF16]]
SMALL = dims(max_value=5)


def _np(layout: str) -> Any:
    """The numpy one-liner of each conv layout (from the rules' docstrings, written again)."""
    if layout.startswith("OI"):
        return lambda w: np.moveaxis(w, 1, -1)
    return lambda w: np.moveaxis(w, -1, 0)


def _cast(a: np.ndarray, dtype: Any) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(a if dtype is None else a.astype(dtype))


@st.composite
def conv_cases(draw: st.DrawFn) -> tuple[np.ndarray, str, Any]:
    layout = draw(st.sampled_from(["OIW", "OIHW", "OIDHW", "WIO", "HWIO", "DHWIO"]))
    dt, dtype = draw(st.sampled_from(CASTS))
    shape = [draw(SMALL) for _ in layout]
    return draw(arrays(shape, dt)), layout, dtype


@PROPERTY
@given(conv_cases(), st.booleans(), st.sampled_from([None, 1, 2, 3]))
def test_conv_weights(case: tuple[np.ndarray, str, Any], use_out: bool,
                      threads: int | None) -> None:
    w, layout, dtype = case
    want = slow.conv_weights(w, layout=layout, dtype=dtype)
    out = np.full_like(want, 7) if use_out else None
    got = mm.conv_weights(w, layout=layout, dtype=dtype, out=out, threads=threads)
    assert got is out or out is None
    assert_bit_equal(got, want)
    if dtype is None:
        assert_bit_equal(got, np.ascontiguousarray(_np(layout)(w)))
        if layout.startswith("OI"):  # the inverse: every byte back
            assert_bit_equal(mm.conv_weights_to_torch(got), np.ascontiguousarray(w))
            assert_bit_equal(slow.conv_weights_to_torch(got), np.ascontiguousarray(w))


@PROPERTY
@given(st.sampled_from(["IOW", "IOHW", "IODHW", "WOI", "HWOI", "DHWOI"]), st.data())
def test_conv_transpose_weights(layout: str, data: st.DataObject) -> None:
    dt, dtype = data.draw(st.sampled_from(CASTS))
    w = data.draw(arrays([data.draw(SMALL) for _ in layout], dt))
    got = mm.conv_transpose_weights(w, layout=layout, dtype=dtype)
    assert_bit_equal(got, slow.conv_transpose_weights(w, layout=layout, dtype=dtype))
    if dtype is None:
        axes = np.moveaxis(w, 0, -1) if layout.startswith("IO") else np.moveaxis(w, -2, 0)
        assert_bit_equal(got, np.ascontiguousarray(axes))
        if layout.startswith("IO"):
            assert_bit_equal(mm.conv_transpose_weights_to_torch(got), np.ascontiguousarray(w))


@PROPERTY
@given(st.sampled_from(["WCM", "HWCM"]), st.data())
def test_depthwise_weights(layout: str, data: st.DataObject) -> None:
    dt, dtype = data.draw(st.sampled_from(CASTS))
    k = data.draw(arrays([data.draw(SMALL) for _ in layout], dt))
    got = mm.depthwise_weights(k, layout=layout, dtype=dtype)
    assert_bit_equal(got, slow.depthwise_weights(k, layout=layout, dtype=dtype))
    *ks, c, m = k.shape
    want = k.reshape(*ks, c * m, 1)
    want = want.transpose(2, 0, 1, 3) if layout == "HWCM" else want.transpose(1, 0, 2)
    assert_bit_equal(got, _cast(want, dtype))


@PROPERTY
@given(st.data())
def test_linear_weights(data: st.DataObject) -> None:
    dt, dtype = data.draw(st.sampled_from(CASTS))
    layout = data.draw(st.sampled_from(["OI", "IO"]))
    flatten = data.draw(st.sampled_from(["CHW", "HWC"]))
    shape = data.draw(st.none() | st.lists(SMALL, min_size=1, max_size=3).map(tuple))
    o = data.draw(SMALL)
    n = int(np.prod(shape)) if shape else data.draw(SMALL)
    w = data.draw(arrays((o, n) if layout == "OI" else (n, o), dt))
    kw = {"layout": layout, "input_shape": shape, "flatten": flatten}
    got = mm.linear_weights(w, dtype=dtype, **kw)
    assert_bit_equal(got, slow.linear_weights(w, dtype=dtype, **kw))
    oi = w if layout == "OI" else w.T
    if shape is not None and flatten == "CHW" and len(shape) > 1:
        perm = (0, *range(2, len(shape) + 1), 1)
        want = oi.reshape(o, *shape).transpose(perm).reshape(o, n)
    else:
        want = oi
    assert_bit_equal(got, _cast(want, dtype))
    if dtype is None and layout == "OI" and flatten == "CHW":
        assert_bit_equal(mm.linear_weights_to_torch(got, input_shape=shape),
                         np.ascontiguousarray(w))


GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@st.composite
def cells(draw: st.DrawFn) -> tuple[str, str, list[Any], dict[str, Any]]:
    cell = draw(st.sampled_from(sorted(GATES)))
    layout = draw(st.sampled_from(["torch", "onnx", "keras"]))
    g, h, i = GATES[cell], draw(SMALL), draw(SMALL)
    dt, dtype = draw(st.sampled_from(CASTS))
    dt = F32 if dt.name == "bfloat16" and dtype is None else dt  # bias sums need + on dt
    kw: dict[str, Any] = {"layout": layout, "dtype": dtype}
    if layout == "onnx":
        dirs = draw(st.sampled_from([1, 2]))
        kw["direction"] = draw(st.integers(0, dirs - 1))
        args = [draw(arrays((dirs, g * h, i), dt)), draw(arrays((dirs, g * h, h), dt)),
                draw(st.none() | arrays((dirs, 2 * g * h), dt))]
        if cell == "gru":
            kw["linear_before_reset"] = True
    elif layout == "keras":
        b_shape = (2, g * h) if cell == "gru" else (g * h,)
        args = [draw(arrays((i, g * h), dt)), draw(arrays((h, g * h), dt)),
                draw(arrays(b_shape, dt))]
    else:
        args = [draw(arrays((g * h, i), dt)), draw(arrays((g * h, h), dt)),
                draw(arrays((g * h,), dt)), draw(arrays((g * h,), dt))]
    return cell, layout, args, kw


@PROPERTY
@given(cells())
def test_recurrent_params(case: tuple[str, str, list[Any], dict[str, Any]]) -> None:
    cell, _, args, kw = case
    with np.errstate(all="ignore"):
        got = getattr(mm, f"{cell}_params")(*args, **kw)
        want = getattr(slow, f"{cell}_params")(*args, **kw)
    assert list(got) == list(want)
    for k in want:
        if k in ("bias", "b") and len(args) > 2 and args[2] is not None:  # a sum: NaN payloads
            assert got[k].dtype == want[k].dtype                         # may differ
            np.testing.assert_array_equal(got[k], want[k])
        else:
            assert_bit_equal(got[k], want[k])


def test_recurrent_by_hand() -> None:
    """Gate blocks land where MLX's formulas read them; biases add; GRU bhn is b_hh_n."""
    h, n_in = 2, 3
    w = np.arange(3 * h * n_in, dtype=np.float32).reshape(1, 3 * h, n_in)  # ONNX z r h
    r = 100 + np.arange(3 * h * h, dtype=np.float32).reshape(1, 3 * h, h)
    b = np.arange(6 * h, dtype=np.float32).reshape(1, 6 * h)
    p = mm.gru_params(w, r, b, layout="onnx", linear_before_reset=True)
    np.testing.assert_array_equal(p["Wx"][:h], w[0, h:2 * h])  # MLX r = ONNX block 1
    np.testing.assert_array_equal(p["Wx"][h:2 * h], w[0, :h])
    np.testing.assert_array_equal(p["b"], [2 + 8, 3 + 9, 0 + 6, 1 + 7, 4, 5])
    np.testing.assert_array_equal(p["bhn"], [10, 11])
    t = mm.lstm_params(np.zeros((8, 1)), np.zeros((8, 2)), np.ones(8), np.full(8, 2.0))
    np.testing.assert_array_equal(t["bias"], np.full(8, 3.0))


def test_round_trips() -> None:
    rng = np.random.default_rng(1)
    wi, wh = rng.standard_normal((12, 3)), rng.standard_normal((12, 4))
    bi, bh = rng.standard_normal(12), rng.standard_normal(12)
    back = mm.gru_params_to_torch(mm.gru_params(wi, wh, bi, bh))
    assert back["weight_ih"].tobytes() == wi.tobytes()
    assert back["bias_hh"][8:].tobytes() == bh[8:].tobytes()  # bhn exactly
    np.testing.assert_array_equal(back["bias_hh"][:8], 0)
    lstm = mm.lstm_params_to_torch(mm.lstm_params(rng.standard_normal((8, 3)), wh[:8, :2]))
    assert "bias_ih" not in lstm


@pytest.mark.parametrize(("call", "kwargs", "match"), [
    (mm.conv_weights, {"w": np.zeros((2, 3, 4)), "layout": "OIHW"}, "w has shape"),
    (mm.conv_weights, {"w": np.zeros((2, 3, 4, 5)), "layout": "OHWI"}, "layout"),
    (mm.conv_transpose_weights, {"w": np.zeros((4, 2, 3, 3)), "groups": 2}, "groups=1"),
    (mm.depthwise_weights, {"k": np.zeros((3, 3, 4))}, "k has shape"),
    (mm.linear_weights, {"w": np.zeros((4, 10)), "input_shape": (2, 2, 2)}, "input_shape"),
    (mm.lstm_params, {"W_ih": np.zeros((8, 3)), "W_hh": np.zeros((6, 2))}, "R has shape"),
    (mm.gru_params, {"W_ih": np.zeros((1, 6, 3)), "W_hh": np.zeros((1, 6, 2)),
                     "layout": "onnx"}, "linear_before_reset"),
    (mm.gru_params, {"W_ih": np.zeros((3, 6)), "W_hh": np.zeros((2, 6)),
                     "b_ih": np.zeros(6), "layout": "keras"}, "reset_after=False"),
    (mm.rnn_params, {"W_ih": np.zeros((2, 3)), "W_hh": np.zeros((2, 2)), "direction": 1},
     "direction"),
])
def test_errors(call: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(**kwargs)


# ------------------------------------------------------------------ MLX's own ops


def _mx() -> Any:
    return pytest.importorskip("mlx.core")


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


@pytest.mark.parametrize(("rank", "groups", "cin", "cout"), [
    (1, 1, 3, 5), (2, 1, 3, 8), (2, 2, 4, 6), (2, 4, 4, 8), (3, 1, 2, 3)])
def test_conv_vs_torch(rank: int, groups: int, cin: int, cout: int) -> None:
    mx = _mx()
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(rank * 10 + groups)
    k = (3, 2, 3)[:rank]
    w = rng.standard_normal((cout, cin // groups, *k)).astype(np.float32)
    x = rng.standard_normal((2, cin, *(7, 6, 5)[:rank])).astype(np.float32)
    f = getattr(torch.nn.functional, f"conv{rank}d")
    want = f(torch.from_numpy(x), torch.from_numpy(w), padding=1, groups=groups).numpy()
    mw = mm.conv_weights(w, layout="OI" + "DHW"[3 - rank:])
    g = getattr(mx, f"conv{rank}d")
    kw = {"groups": groups} if rank < 3 else {}
    got = np.array(g(mx.array(_nhwc(x)), mx.array(mw), padding=1, **kw))
    np.testing.assert_allclose(got, _nhwc(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 2])
def test_conv_transpose_vs_torch(rank: int) -> None:
    mx = _mx()
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(rank)
    w = rng.standard_normal((4, 3, *(3, 4)[:rank])).astype(np.float32)  # (I, O, *K)
    x = rng.standard_normal((2, 4, *(5, 6)[:rank])).astype(np.float32)
    f = getattr(torch.nn.functional, f"conv_transpose{rank}d")
    want = f(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1).numpy()
    mw = mm.conv_transpose_weights(w, layout="IO" + "HW"[2 - rank:])
    g = getattr(mx, f"conv_transpose{rank}d")
    got = np.array(g(mx.array(_nhwc(x)), mx.array(mw), stride=2, padding=1))
    np.testing.assert_allclose(got, _nhwc(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cell", "layers", "bidir"), [
    ("LSTM", 1, False), ("LSTM", 2, True), ("GRU", 2, True), ("RNN", 2, True)])
def test_recurrent_vs_torch(cell: str, layers: int, bidir: bool) -> None:
    mx = _mx()
    nn = pytest.importorskip("mlx.nn")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t = getattr(torch.nn, cell)(3, 4, num_layers=layers, bidirectional=bidir, batch_first=True)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    want = t(torch.from_numpy(x))[0].detach().numpy()
    sd = {k: v.detach().numpy() for k, v in t.state_dict().items()}
    fn = {"LSTM": mm.lstm_params, "GRU": mm.gru_params, "RNN": mm.rnn_params}[cell]
    h = mx.array(x)
    for k in range(layers):
        outs = []
        for suf, flip in (("", False), ("_reverse", True))[: 1 + bidir]:
            m = getattr(nn, cell)(h.shape[-1], 4)
            p = fn(*(sd[f"{n}_l{k}{suf}"] for n in ("weight_ih", "weight_hh", "bias_ih",
                                                      "bias_hh")))
            m.load_weights([(n, mx.array(v)) for n, v in p.items()])
            inp = h[:, ::-1] if flip else h
            y = m(inp)
            y = y[0] if cell == "LSTM" else y
            outs.append(y[:, ::-1] if flip else y)
        h = mx.concatenate(outs, axis=-1)
    np.testing.assert_allclose(np.array(h), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "SimpleRNN"])
def test_recurrent_vs_keras(cell: str) -> None:
    mx = _mx()
    nn = pytest.importorskip("mlx.nn")
    pytest.importorskip("torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype(np.float32)
    layer = getattr(keras.layers, cell)(4, return_sequences=True)
    want = np.asarray(layer(x).detach().cpu().numpy())
    kern, rec, bias = (np.asarray(v.numpy()) for v in layer.weights)
    fn = {"LSTM": mm.lstm_params, "GRU": mm.gru_params, "SimpleRNN": mm.rnn_params}[cell]
    m = getattr(nn, cell.replace("Simple", ""))(3, 4)
    m.load_weights([(n, mx.array(v)) for n, v in fn(kern, rec, bias, layout="keras").items()])
    np.testing.assert_allclose(np.array(m(mx.array(x))[0] if cell == "LSTM" else
                                        m(mx.array(x))), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "depthwise", "transpose"])
def test_keras_convs(kind: str) -> None:
    mx = _mx()
    pytest.importorskip("torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    x = np.random.default_rng(3).standard_normal((1, 6, 7, 3)).astype(np.float32)
    if kind == "conv":
        layer = keras.layers.Conv2D(5, (3, 2), use_bias=False)
    elif kind == "depthwise":
        layer = keras.layers.DepthwiseConv2D((3, 2), depth_multiplier=2, use_bias=False)
    else:
        layer = keras.layers.Conv2DTranspose(5, (3, 2), strides=2, use_bias=False)
    want = np.asarray(layer(x).detach().cpu().numpy())
    k = np.asarray(layer.weights[0].numpy())
    xm = mx.array(x)
    if kind == "conv":
        got = mx.conv2d(xm, mx.array(mm.conv_weights(k, layout="HWIO")))
    elif kind == "depthwise":
        got = mx.conv2d(xm, mx.array(mm.depthwise_weights(k)), groups=3)
    else:
        got = mx.conv_transpose2d(xm, mx.array(mm.conv_transpose_weights(k, layout="HWOI")),
                                  stride=2)
    np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-5)
