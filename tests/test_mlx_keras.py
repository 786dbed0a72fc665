"""mm.sanitize(source="keras"): a small Keras model (Conv2D, DepthwiseConv2D with multiplier
2, BatchNormalization, PReLU, Conv2DTranspose, Dense after Flatten, LayerNormalization,
Embedding, LSTM, a Bidirectional GRU, SimpleRNN) ported by hand to mlx.nn with the layer
names as module paths, loaded from ``{weight.path: array}``: MLX's forward on the CPU
equals Keras's (torch backend). Skips without mlx, torch or keras."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import mpslayout.mlx as mm

pytest.importorskip("mlx.core")
pytest.importorskip("torch")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


def _keras_model() -> Any:
    L = keras.layers
    keras.utils.set_random_seed(0)
    img = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(img)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.PReLU(shared_axes=[1, 2], name="act")(x)
    x = L.Conv2DTranspose(3, 2, strides=2, name="up")(x)
    x = L.Dense(5, name="fc")(L.Flatten()(x))
    x = L.LayerNormalization(name="ln")(x)
    tok = keras.Input((5,), dtype="int32")
    s = L.Embedding(20, 3, name="emb")(tok)
    s = L.LSTM(4, return_sequences=True, name="lstm")(s)
    s = L.Bidirectional(L.GRU(3, return_sequences=True), name="bi")(s)
    s = L.SimpleRNN(2, return_sequences=True, name="rnn")(s)
    model = keras.Model([img, tok], [x, s])
    rng = np.random.default_rng(0)
    for w in model.weights:  # statistics and slopes that are not the defaults
        if w.path.endswith(("moving_mean", "alpha", "beta")):
            w.assign(rng.uniform(-0.5, 0.5, w.shape).astype(np.float32))
        elif w.path.endswith("moving_variance"):
            w.assign(rng.uniform(0.5, 2, w.shape).astype(np.float32))
    return model


def _port() -> Any:
    import mlx.core as mx
    import mlx.nn as nn

    class Bi(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.forward = nn.GRU(4, 3)
            self.reverse = nn.GRU(4, 3)

        def __call__(self, x: Any) -> Any:
            return mx.concatenate([self.forward(x), self.reverse(x[:, ::-1])[:, ::-1]], -1)

    class Port(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
            self.bn = nn.BatchNorm(8, eps=1e-3)
            self.act = nn.PReLU(8)
            self.up = nn.ConvTranspose2d(8, 3, 2, stride=2)
            self.fc = nn.Linear(12 * 12 * 3, 5)
            self.ln = nn.LayerNorm(5, eps=1e-3)
            self.emb = nn.Embedding(20, 3)
            self.lstm = nn.LSTM(3, 4)
            self.bi = Bi()
            self.rnn = nn.RNN(6, 2)

        def __call__(self, img: Any, tok: Any) -> tuple[Any, Any]:
            x = self.up(self.act(self.bn(self.dw(self.conv(img)))))
            x = self.ln(self.fc(x.reshape(x.shape[0], -1)))  # Keras Flatten of NHWC: as is
            s = self.rnn(self.bi(self.lstm(self.emb(tok))[0]))
            return x, s

    return Port()


def test_keras_port_equals_keras() -> None:
    import mlx.core as mx

    model = _keras_model()
    rng = np.random.default_rng(1)
    img = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    tok = rng.integers(0, 20, (2, 5)).astype(np.int32)
    want = [np.asarray(o.detach().cpu().numpy()) for o in model([img, tok], training=False)]
    sd = {w.path: np.asarray(w.numpy()) for w in model.weights}
    port = _port()
    weights = mm.sanitize(port, sd, "keras")
    port.load_weights(list(weights.items()))
    port.eval()
    got = port(mx.array(img), mx.array(tok))
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.array(g), w, rtol=1e-4, atol=1e-4)
    assert weights.tensors["dw.weight"]["source_layout"] == "HWCM"


def test_keras_gru_reset_after_false_is_refused() -> None:
    import mlx.nn as nn

    layer = keras.layers.GRU(3, reset_after=False)
    layer.build((None, 5, 4))
    sd = {f"gru.{w.path.split('/')[-1]}": np.asarray(w.numpy()) for w in layer.weights}
    port = nn.Module()
    port.gru = nn.GRU(4, 3)
    with pytest.raises(ValueError, match="reset_after=False"):
        mm.sanitize(port, sd, "keras")


def test_mapping_model_keras_depthwise() -> None:
    """Without an MLX model, {"type": "Conv2d", "groups": C} tells a Keras 3 depthwise
    kernel (*K, C, M) from an ordinary one."""
    k = np.random.default_rng(4).standard_normal((3, 3, 4, 2)).astype(np.float32)
    w = mm.sanitize({"dw": {"type": "Conv2d", "groups": 4}}, {"dw/kernel": k}, "keras")
    got = np.array(w["dw.weight"])
    assert got.tobytes() == k.reshape(3, 3, 8, 1).transpose(2, 0, 1, 3).tobytes()
