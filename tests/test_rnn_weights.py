"""lstm_weights / gru_weights / rnn_weights: bit-equal to their slow twins (loops written
from docs/layouts.md) on random bits in odd memory layouts, and right against the
frameworks themselves: a PyTorch / Keras / ONNX Runtime cell run on the same input equals
the MPS formula (mpslayout.reference.rnn) fed with the converted gates."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import F64, arrays, dims, mps_dtypes
from test_twins import PROPERTY, assert_bit_equal

import mpslayout
from mpslayout import slow_rnn
from mpslayout.reference import rnn as ref

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _bias_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32
    assert want.dtype == np.float32
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # NaN == NaN here; payloads may differ


@st.composite
def cells(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    cell = draw(st.sampled_from(sorted(GATES)))
    layout = draw(st.sampled_from(["ONNX", "PyTorch", "Keras"]))
    g, h, i = GATES[cell], draw(dims(max_value=7)), draw(dims(max_value=7))
    dt, dtype = draw(mps_dtypes())
    if dt.name == "uint8":
        dt, dtype = np.dtype(np.float32), None
    dirs = draw(st.sampled_from([0, 1, 2])) if layout == "ONNX" else 0
    direction = draw(st.integers(0, dirs - 1)) if dirs else 0
    lead = (dirs,) if dirs else ()
    conv = layout == "Keras" and cell == "lstm" and draw(st.booleans())
    if layout == "Keras":
        kk = (draw(dims(max_value=3)), draw(dims(max_value=3))) if conv else ()
        w_shape, r_shape = (*kk, i, g * h), (*kk, h, g * h)
        b_shape = draw(st.sampled_from([(g * h,), (2, g * h)]))
    else:
        w_shape, r_shape = (*lead, g * h, i), (*lead, g * h, h)
        b_shape = (*lead, 2 * g * h) if layout == "ONNX" else (2, g * h)
    args = [draw(arrays(w_shape, dt)), draw(arrays(r_shape, dt))]
    bias_dt = draw(st.sampled_from([dt, np.dtype(np.float32), F64]))
    args.append(draw(st.none() | arrays(b_shape, bias_dt)))
    kwargs: dict[str, Any] = {"layout": layout, "direction": direction, "dtype": dtype}
    if cell == "gru":
        kwargs["linear_before_reset"] = draw(st.booleans())
    if cell == "lstm" and layout == "ONNX" and draw(st.booleans()):
        args.append(draw(arrays((*lead, 3 * h), dt)))
    return cell, tuple(args), kwargs


@PROPERTY
@given(cells())
def test_matches_slow_twin(case: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
    cell, args, kwargs = case
    before = [np.array(a, copy=True) for a in args if a is not None]
    with np.errstate(all="ignore"):
        want = getattr(slow_rnn, f"{cell}_weights")(*args, **kwargs)
        got = getattr(mpslayout, f"{cell}_weights")(*args, **kwargs)
    assert list(got) == list(want)
    for key, w in want.items():
        if key.endswith(".bias"):
            _bias_equal(got[key], w)
        else:
            assert_bit_equal(got[key], w)
    after = [np.asarray(a) for a in args if a is not None]
    assert all(b.tobytes() == np.ascontiguousarray(a).tobytes() for a, b in zip(after, before))


# ------------------------------------------------------------------ hand-made values


def test_onnx_lstm_by_hand() -> None:
    """Rows of gate k land in the MPS property of its letter; biases add; P is i, o, f."""
    h, n_in = 2, 3
    w = np.arange(4 * h * n_in, dtype=np.float32).reshape(1, 4 * h, n_in)
    r = 100 + np.arange(4 * h * h, dtype=np.float32).reshape(1, 4 * h, h)
    b = np.arange(8 * h, dtype=np.float32).reshape(1, 8 * h)
    p = 1000 + np.arange(3 * h, dtype=np.float32).reshape(1, 3 * h)
    got = mpslayout.lstm_weights(w, r, b, p)
    # ONNX order i, o, f, c: the forget gate is block 2
    np.testing.assert_array_equal(got["forgetGateInputWeights"].reshape(h, n_in), w[0, 4:6])
    np.testing.assert_array_equal(got["cellGateRecurrentWeights"].reshape(h, h), r[0, 6:8])
    np.testing.assert_array_equal(got["outputGateInputWeights.bias"], [2 + 10, 3 + 11])
    np.testing.assert_array_equal(got["outputGateMemoryWeights"], [1002, 1003])
    np.testing.assert_array_equal(got["forgetGateMemoryWeights"], [1004, 1005])
    assert "cellGateMemoryWeights" not in got
    assert got["inputGateInputWeights"].shape == (h, 1, 1, n_in)


def test_bias_sum_rounds_once() -> None:
    """float32 inputs whose float32 sum would round twice if done in pieces: the result is
    the correctly rounded float64 sum."""
    wb = np.array([1.0, 2.0**-24, 1e30], np.float64)
    rb = np.array([2.0**-25, 2.0**-24, -1e30], np.float64)
    w = np.zeros((3, 1)), np.zeros((3, 3))
    got = mpslayout.rnn_weights(*w, np.stack([wb, rb]), layout="PyTorch")["inputWeights.bias"]
    np.testing.assert_array_equal(got, (wb + rb).astype(np.float32))


@pytest.mark.parametrize(("call", "kwargs", "error", "match"), [
    ("lstm", {"layout": "TF"}, ValueError, "layout"),
    ("lstm", {"direction": 2}, ValueError, "direction"),
    ("lstm", {"direction": True}, TypeError, "direction"),
    ("gru", {"W": np.zeros((5, 2))}, ValueError, "W has shape"),
    ("gru", {"R": np.zeros((6, 3))}, ValueError, "R has shape"),
    ("gru", {"B": np.zeros(7)}, ValueError, "B must be"),
    ("gru", {"B": np.array(["a"] * 12)}, TypeError, "B"),
    ("lstm", {"layout": "PyTorch", "P": np.zeros(6)}, ValueError, "P"),
    ("lstm", {"P": np.zeros(5)}, ValueError, "P must be"),
])
def test_rejections_name_the_argument(call: str, kwargs: dict[str, Any], error: type,
                                      match: str) -> None:
    g, h = GATES[call], 2
    args: dict[str, Any] = {"W": np.zeros((g * h, 3)), "R": np.zeros((g * h, h)),
                            "B": np.zeros(2 * g * h)}
    args.update({k: v for k, v in kwargs.items() if k in ("W", "R", "B", "P")})
    rest = {k: v for k, v in kwargs.items() if k not in args}
    if rest.get("layout") == "PyTorch":
        args["B"] = None
    with pytest.raises(error, match=match):
        getattr(mpslayout, f"{call}_weights")(**args, **rest)


# ------------------------------------------------------------------ against the frameworks


def _seq(t: int, b: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, b, n)).astype(np.float32)


def _torch_state(mod: Any, suffix: str) -> dict[str, np.ndarray]:
    sd = {k: v.detach().numpy() for k, v in mod.state_dict().items()}
    return {"W": sd[f"weight_ih_l0{suffix}"], "R": sd[f"weight_hh_l0{suffix}"],
            "B": np.stack([sd[f"bias_ih_l0{suffix}"], sd[f"bias_hh_l0{suffix}"]])}


def test_pytorch_bidirectional_lstm_gate_order() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    h, n_in = 5, 3
    lstm = torch.nn.LSTM(n_in, h, bidirectional=True)
    x = _seq(6, 2, n_in)
    with torch.no_grad():
        want = lstm(torch.from_numpy(x))[0].numpy()
    fwd = mpslayout.lstm_weights(**_torch_state(lstm, ""), layout="PyTorch")
    bwd = mpslayout.lstm_weights(**_torch_state(lstm, "_reverse"), layout="PyTorch")
    got = np.concatenate([ref.lstm(x, fwd, h)[0], ref.lstm(x, bwd, h, reverse=True)[0]], -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pytorch_rnn_gate_order() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    cell = torch.nn.RNN(3, 4)
    x = _seq(5, 2, 3)
    with torch.no_grad():
        want = cell(torch.from_numpy(x))[0].numpy()
    gates = mpslayout.rnn_weights(**_torch_state(cell, ""), layout="PyTorch")
    np.testing.assert_allclose(ref.single_gate(x, gates, 4)[0], want, rtol=1e-5, atol=1e-6)


def test_pytorch_gru_is_not_the_mps_cell_but_close_with_reset_one() -> None:
    """PyTorch's GRU applies r after the recurrent matrix (ONNX linear_before_reset=1):
    MPS cannot compute it. With the reset gate forced to 1 (its bias huge) the two agree,
    which pins the gate order; with ordinary weights they differ."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    h, n_in = 4, 3
    gru = torch.nn.GRU(n_in, h)
    x = _seq(5, 2, n_in)
    with torch.no_grad():
        gru.bias_ih_l0[:h] = 60.0  # r = sigmoid(60) == 1 in float32 (rows r, z, n)
        want = gru(torch.from_numpy(x))[0].numpy()
        gates = mpslayout.gru_weights(**_torch_state(gru, ""), layout="PyTorch")
        gru.bias_ih_l0[:h] = 0.0
        differs = gru(torch.from_numpy(x))[0].numpy()
    # the recurrent n-bias sits inside r * (...): with r == 1 summing it is exact
    np.testing.assert_allclose(ref.gru(x, gates, h)[0], want, rtol=1e-5, atol=1e-6)
    gates = mpslayout.gru_weights(**_torch_state(gru, ""), layout="PyTorch")
    assert np.abs(ref.gru(x, gates, h)[0] - differs).max() > 1e-3


def test_pytorch_gru_files_hold_the_reset_after_cell() -> None:
    """With linear_before_reset=True the output gate's recurrent bias is kept: the
    framework's own cell (reference.rnn.gru_reset_after) run from the converted gates equals
    PyTorch's GRU, forward and reverse."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(4)
    h, n_in = 5, 3
    gru = torch.nn.GRU(n_in, h, bidirectional=True)
    x = _seq(6, 2, n_in, 8)
    with torch.no_grad():
        want = gru(torch.from_numpy(x))[0].numpy()
    for d, suffix in enumerate(("", "_reverse")):
        gates = mpslayout.gru_weights(**_torch_state(gru, suffix), layout="PyTorch",
                                      linear_before_reset=True)
        sd = gru.state_dict()
        np.testing.assert_array_equal(gates["outputGateRecurrentBias"],
                                      sd[f"bias_hh_l0{suffix}"].numpy()[2 * h:])
        got = ref.gru_reset_after(x, gates, h, reverse=bool(d))[0]
        np.testing.assert_allclose(got, want[..., d * h:(d + 1) * h], rtol=1e-5, atol=1e-6)
    plain = mpslayout.gru_weights(**_torch_state(gru, ""), layout="PyTorch")
    assert "outputGateRecurrentBias" not in plain
    with pytest.raises(TypeError, match="linear_before_reset"):
        mpslayout.gru_weights(**_torch_state(gru, ""), layout="PyTorch",
                              linear_before_reset=1)  # type: ignore[arg-type]


def _onnx_cell(op: str, attrs: dict[str, Any], inputs: dict[str, np.ndarray],
               x: np.ndarray) -> np.ndarray:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    names = ["X", *inputs]
    node = helper.make_node(op, names, ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "cell", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def test_onnx_lstm_with_peepholes_reverse() -> None:
    h, n_in = 3, 2
    rng = np.random.default_rng(3)
    ins = {"W": rng.standard_normal((1, 4 * h, n_in)).astype(np.float32),
           "R": rng.standard_normal((1, 4 * h, h)).astype(np.float32),
           "B": rng.standard_normal((1, 8 * h)).astype(np.float32)}
    x = _seq(4, 2, n_in, 4)
    p = rng.standard_normal((1, 3 * h)).astype(np.float32)
    want = _onnx_cell_p(ins, p, x, h)
    gates = mpslayout.lstm_weights(ins["W"], ins["R"], ins["B"], p)
    got = ref.lstm(x, gates, h, reverse=True)[0]
    np.testing.assert_allclose(got, want[:, 0], rtol=1e-5, atol=1e-6)


def _onnx_cell_p(ins: dict[str, np.ndarray], p: np.ndarray, x: np.ndarray, h: int
                 ) -> np.ndarray:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "", "", "P"], ["Y"],
                            hidden_size=h, direction="reverse")
    inits = [numpy_helper.from_array(v, k) for k, v in {**ins, "P": p}.items()]
    graph = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def test_onnx_gru_linear_before_reset_0_is_exact() -> None:
    h, n_in = 4, 3
    rng = np.random.default_rng(5)
    ins = {"W": rng.standard_normal((2, 3 * h, n_in)).astype(np.float32),
           "R": rng.standard_normal((2, 3 * h, h)).astype(np.float32),
           "B": rng.standard_normal((2, 6 * h)).astype(np.float32)}
    x = _seq(5, 2, n_in, 6)
    want = _onnx_cell("GRU", {"hidden_size": h, "direction": "bidirectional"}, ins, x)
    for d in (0, 1):
        gates = mpslayout.gru_weights(ins["W"], ins["R"], ins["B"], direction=d)
        got = ref.gru(x, gates, h, reverse=bool(d))[0]
        np.testing.assert_allclose(got, want[:, d], rtol=1e-5, atol=1e-6)


def test_keras_lstm_and_gru_gate_order() -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")  # the torch backend is what CI installs
    keras = pytest.importorskip("keras")
    h, n_in = 4, 3
    x = _seq(5, 2, n_in, 7)
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))  # Keras is batch-major
    with warnings.catch_warnings():  # keras' torch backend: numpy 2 __array__ deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        results = _keras_runs(keras, xb, h)
    for (k, rk, b, want), fn, conv in zip(results, (ref.lstm, ref.gru),
                                          (mpslayout.lstm_weights, mpslayout.gru_weights)):
        got = fn(x, conv(k, rk, b, layout="Keras"), h)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _keras_runs(keras: Any, xb: np.ndarray, h: int) -> list[tuple[np.ndarray, ...]]:
    """(kernel, recurrent_kernel, bias, output (T, B, H)) of a Keras LSTM and GRU."""
    out = []
    for layer in (keras.layers.LSTM(h, return_sequences=True),
                  keras.layers.GRU(h, return_sequences=True, reset_after=False)):
        layer.build(xb.shape)
        k, rk, b = (keras.ops.convert_to_numpy(v) for v in layer.weights)
        b = b + np.linspace(-1, 1, b.size, dtype=np.float32)  # a bias that is not 0/1
        layer.weights[2].assign(b)
        y = keras.ops.convert_to_numpy(layer(xb)).transpose(1, 0, 2)
        out.append((k, rk, b, y))
    return out


def test_gate_order_table_of_the_docs_is_the_one_the_twins_use() -> None:
    """docs/layouts.md section 9's gate-order table, read from the page, against the slow
    twins' orders (which the fast converters equal bit for bit)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "layouts.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 4 and cells[0].split(" ")[0] in ("ONNX", "PyTorch", "Keras"):
            rows[cells[0].split(" ")[0]] = cells[1], cells[2]
    assert set(rows) == {"ONNX", "PyTorch", "Keras"}
    lstm_names = {"i": "inputGate", "f": "forgetGate", "c": "cellGate", "g(=c)": "cellGate",
                  "o": "outputGate"}
    gru_names = {"z": "inputGate", "r": "recurrentGate", "h": "outputGate",
                 "n(=h)": "outputGate"}
    for fw, (lstm, gru) in rows.items():
        assert [lstm_names[g.strip()] for g in lstm.split(",")] == slow_rnn._LSTM[fw]
        assert [gru_names[g.strip()] for g in gru.split(",")] == slow_rnn._GRU[fw]
