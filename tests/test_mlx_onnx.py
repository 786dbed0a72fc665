"""mm.sanitize(source="onnx") for recurrent layers: an ONNX LSTM / GRU
(linear_before_reset=1) / RNN node, forward and bidirectional, run by ONNX Runtime, equals
mlx.nn's cells loaded with the node's W, R, B (the reverse module reads direction 1).
Skips without mlx, onnx or onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpslayout.mlx as mm

pytest.importorskip("mlx.core")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _run_onnx(op: str, w: np.ndarray, r: np.ndarray, b: np.ndarray, x: np.ndarray,
              direction: str) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    h = r.shape[-1]
    attrs: dict[str, Any] = {"hidden_size": h, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]  # (L, dirs, N, H)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_onnx_recurrent(op: str, direction: str) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    rng = np.random.default_rng(5)
    g, h, i, dirs = GATES[op], 4, 3, 2 if direction == "bidirectional" else 1
    w = rng.standard_normal((dirs, g * h, i)).astype(np.float32) * 0.5
    r = rng.standard_normal((dirs, g * h, h)).astype(np.float32) * 0.5
    b = rng.standard_normal((dirs, 2 * g * h)).astype(np.float32) * 0.5
    x = rng.standard_normal((5, 2, i)).astype(np.float32)  # (L, N, I)
    want = _run_onnx(op, w, r, b, x, direction)

    port = nn.Module()
    port.rnn = nn.Module()
    port.rnn.forward = getattr(nn, op)(i, h)
    if dirs == 2:
        port.rnn.reverse = getattr(nn, op)(i, h)
    weights = mm.sanitize(port, {"rnn.W": w, "rnn.R": r, "rnn.B": b}, "onnx")
    port.load_weights(list(weights.items()))
    xm = mx.array(x.transpose(1, 0, 2))  # (N, L, I)

    def run(m: Any, seq: Any) -> np.ndarray:
        y = m(seq)
        return np.array(y[0] if op == "LSTM" else y)

    got = [run(port.rnn.forward, xm)]
    if dirs == 2:
        got.append(run(port.rnn.reverse, xm[:, ::-1])[:, ::-1])
    for d, y in enumerate(got):
        np.testing.assert_allclose(y, want[:, d].transpose(1, 0, 2), rtol=1e-5, atol=1e-5)
