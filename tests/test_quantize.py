"""8-bit weights: quantize_weights / dequantize_weights / quantize.from_onnx against their
slow twins (loops from docs/layouts.md section 10) and against ONNX's own dequantization
(DequantizeLinear run in ONNX Runtime)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import dims
from test_twins import PROPERTY

import mpslayout
from mpslayout import quantize, slow_quant

F32 = np.float32


@st.composite
def float_weights(draw: st.DrawFn) -> np.ndarray:
    shape = (draw(dims(max_value=8)), draw(dims(max_value=3)), draw(dims(max_value=3)),
             draw(dims(max_value=8)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    w = (rng.standard_normal(shape) * scale).astype(F32)
    if draw(st.booleans()):
        w[0] = w.flat[0]  # a constant channel: hi == lo
    return w


@PROPERTY
@given(float_weights())
def test_linear_matches_twin_and_stays_within_half_a_step(w: np.ndarray) -> None:
    q, ranges = mpslayout.quantize_weights(w)
    q_slow, r_slow = slow_quant.quantize_linear(w)
    np.testing.assert_array_equal(q, q_slow)
    np.testing.assert_array_equal(ranges, r_slow)
    assert q.dtype == np.uint8
    assert ranges.dtype == F32
    deq = mpslayout.dequantize_weights(q, ranges=ranges)
    np.testing.assert_array_equal(deq, slow_quant.dequantize_weights(q, ranges))
    span = (ranges[:, 1].astype(np.float64) - ranges[:, 0]).reshape(-1, 1, 1, 1)
    mag = np.abs(ranges).max(axis=1).reshape(-1, 1, 1, 1)
    err = np.abs(deq.astype(np.float64) - w)
    assert np.all(err <= span / 510 + 4 * np.finfo(F32).eps * mag)


@PROPERTY
@given(float_weights())
def test_lut_is_exact_for_few_values_and_nearest_otherwise(w: np.ndarray) -> None:
    q, lut = mpslayout.quantize_weights(w, mode="lut")
    deq = mpslayout.dequantize_weights(q, lut=lut)
    assert lut.shape == (256,)
    if np.unique(w).size <= 256:
        np.testing.assert_array_equal(deq, w)
    else:  # the nearest table entry
        nearest = np.abs(w.reshape(-1, 1).astype(np.float64) - lut).min(axis=1)
        np.testing.assert_allclose(np.abs(deq.astype(np.float64) - w.ravel().reshape(w.shape)),
                                   nearest.reshape(w.shape), rtol=0, atol=0)


@PROPERTY
@given(st.sampled_from([np.uint8, np.int8]), st.booleans(), st.integers(0, 2**32 - 1))
def test_from_onnx_maps_8bit_sources_without_requantizing(dt: Any, per_channel: bool,
                                                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dt)
    q = rng.integers(info.min, info.max + 1, size=(5, 2, 2, 3)).astype(dt)
    n = 5 if per_channel else 1
    scale = rng.uniform(1e-4, 1.0, n).astype(F32)
    zp = rng.integers(info.min, info.max + 1, n).astype(dt)
    u, ranges, exact = quantize.from_onnx(q, scale, zp, axis=0 if per_channel else None)
    u_slow, r_slow = slow_quant.from_onnx(q, scale, zp)
    assert exact
    np.testing.assert_array_equal(u, u_slow)
    np.testing.assert_array_equal(ranges, r_slow)
    # MPS's float32 formula gives the source's (q - zp)*scale up to float32 rounding of the
    # range: within 4 ulp of the range's magnitude
    src = (q.astype(np.float64) - zp.reshape(-1, 1, 1, 1)) * scale.reshape(-1, 1, 1, 1)
    deq = mpslayout.dequantize_weights(u, ranges=ranges).astype(np.float64)
    mag = np.abs(ranges).max(axis=1).reshape(-1, 1, 1, 1)
    assert np.all(np.abs(deq - src) <= 4 * np.finfo(F32).eps * mag)


def test_from_onnx_against_onnxruntime_dequantize_linear() -> None:
    """ONNX Runtime's DequantizeLinear (per axis 0, int8) and MPS's reading of the mapped
    bytes and ranges agree to float32 rounding; a range off by one step does not."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    q = rng.integers(-128, 128, size=(4, 6)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, 4).astype(F32)
    zp = rng.integers(-10, 10, 4).astype(np.int8)
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0)
    graph = helper.make_graph([node], "dq", [], [helper.make_tensor_value_info(
        "w", TensorProto.FLOAT, None)], [numpy_helper.from_array(q, "q"),
                                         numpy_helper.from_array(scale, "s"),
                                         numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {})[0]
    u, ranges, _ = quantize.from_onnx(q, scale, zp, axis=0)
    got = mpslayout.dequantize_weights(u, ranges=ranges)
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-7 * 20)
    off = ranges.copy()
    off[:, 0] += (off[:, 1] - off[:, 0]) / 255  # min one step too high
    bad = mpslayout.dequantize_weights(u, ranges=off)
    assert np.abs(bad - want).max() > 0.5 * scale.min()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"mode": "log"}, ValueError, "mode"),
    ({"axis": 4}, ValueError, "axis"),
    ({"axis": 1.0}, TypeError, "axis"),
])
def test_quantize_rejections(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        mpslayout.quantize_weights(np.zeros((2, 1, 1, 2), F32), **kwargs)


def test_quantize_rejects_bad_weights() -> None:
    with pytest.raises(TypeError, match="w has dtype"):
        mpslayout.quantize_weights(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="NaN"):
        mpslayout.quantize_weights(np.array([[np.nan]], F32))
    with pytest.raises(ValueError, match="ranges must be"):
        mpslayout.dequantize_weights(np.zeros((2, 2), np.uint8), ranges=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="exactly one"):
        mpslayout.dequantize_weights(np.zeros((2, 2), np.uint8))
