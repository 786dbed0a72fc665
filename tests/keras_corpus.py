"""Keras models saved by Keras itself (.keras and legacy .h5), built once per test session:
seed 003's graph (Conv2D, BatchNormalization, depthwise with multipliers 1 and 2,
Conv2DTranspose "same" and "valid" with output_padding, Flatten, Dense, Dense then
Reshape, Conv2D, a per-pixel Dense) and keras.applications architectures with random
weights at small inputs. KERAS_BACKEND defaults to torch (a user's choice is kept)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

CORPUS = ["seed003", "mobilenet_v2", "mobilenet_v3_small"]


def _seed003():
    L = keras.layers
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((9, 9, 3), name="image"),
        L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv"),
        L.BatchNormalization(name="bn"),
        L.DepthwiseConv2D(3, padding="same", name="dw"),
        L.DepthwiseConv2D(3, padding="valid", depth_multiplier=2, name="dw2"),
        L.Conv2DTranspose(4, 3, strides=2, padding="same", name="up"),
        L.Conv2DTranspose(4, 4, strides=2, padding="valid", output_padding=1, name="up2"),
        L.Flatten(name="flatten"),
        L.Dense(16, name="fc"),
        L.Dense(96, name="seed"),
        L.Reshape((4, 4, 6), name="reshape"),
        L.Conv2D(2, 2, padding="same", name="out"),
        L.Dense(3, name="pix"),
    ], name="seed003")


def _zoo():
    """Every translated layer kind at least once, in one small functional model."""
    L = keras.layers
    x0 = keras.Input((12, 12, 3), name="pixels")
    x = L.Rescaling(1 / 2.0, offset=-0.5, name="rescale")(x0)
    a = L.Conv2D(8, 3, padding="same", dilation_rate=2, activation="tanh", name="dil")(x)
    b = L.Conv2D(8, 3, padding="same", groups=1, activation="sigmoid", name="sig")(x)
    c = L.Conv2D(8, 1, groups=2, activation="hard_sigmoid", name="grouped")(L.Concatenate(
        name="cat")([a, b]))
    x = L.Add(name="add")([a, c])
    x = L.Subtract(name="sub")([x, b])
    x = L.Multiply(name="mul")([x, a])
    x = L.Average(name="avg")([x, c])
    x = L.Maximum(name="max")([x, b])
    x = L.Minimum(name="min")([x, a])
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = L.LeakyReLU(negative_slope=0.1, name="leaky")(x)
    x = L.ELU(alpha=0.5, name="elu")(x)
    x = L.ReLU(max_value=6.0, name="relu6")(x)
    x = L.Activation("silu", name="silu")(x)
    x = L.Activation("softplus", name="softplus")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(x)
    x = L.AveragePooling2D(2, strides=1, padding="same", name="avgpool")(x)
    x = L.ZeroPadding2D(((1, 0), (2, 1)), name="pad")(x)
    x = L.Cropping2D(((0, 1), (1, 1)), name="crop")(x)
    n = L.UpSampling2D(2, interpolation="nearest", name="up_nearest")(x)
    x = L.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(x)
    x = L.Add(name="add2")([x, n])
    x = L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6", name="dws")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="elu", name="tr")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Softmax(name="softmax")(x)
    y = L.Dense(5, activation="hard_swish", name="pixel_dense")(x)
    f = L.Flatten(name="flat")(y)
    r = L.Reshape((-1, 10), name="seq")(f)
    r = L.Dense(6, activation="relu", name="seq_dense")(r)
    r = L.Flatten(name="flat2")(r)
    d = L.Dense(32, name="fc")(f)
    d = L.Dropout(0.5, name="drop")(d)
    d = L.Flatten(name="flat3")(L.Reshape((1, 1, 32), name="vector_image")(d))
    d = L.Concatenate(name="cat2")([d, r])
    d = L.Dense(10, activation="softmax", name="head")(d)
    return keras.Model(x0, d, name="zoo")


def build(name: str):
    """A fresh Keras model of the corpus (random weights, seeded)."""
    A = keras.applications
    keras.utils.set_random_seed(0)
    if name == "seed003":
        m = _seed003()
        for layer in m.layers:  # BN statistics that are not the identity
            if isinstance(layer, keras.layers.BatchNormalization):
                c = layer.moving_mean.shape[0]
                layer.moving_mean.assign(keras.random.normal((c,), seed=1) * 0.1)
                layer.moving_variance.assign(keras.random.uniform((c,), 0.5, 1.5, seed=2))
        return m
    if name == "zoo":
        return _zoo()
    if name == "mobilenet_v2":
        return A.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)
    if name == "mobilenet_v3_small":
        return A.MobileNetV3Small(weights=None, input_shape=(96, 96, 3))
    if name == "efficientnet_b0":
        return A.EfficientNetB0(weights=None, input_shape=(64, 64, 3))
    raise ValueError(name)


_CACHE: dict[str, tuple[object, dict[str, Path]]] = {}


def saved(name: str, folder: Path):
    """(model, {"keras": path, "h5": path}) of a corpus model, built and saved once."""
    if name not in _CACHE:
        import warnings

        m = build(name)
        paths = {"keras": folder / f"{name}.keras", "h5": folder / f"{name}.h5"}
        m.save(paths["keras"])
        with warnings.catch_warnings():  # Keras warns that .h5 is legacy: that is the point
            warnings.simplefilter("ignore")
            m.save(paths["h5"])
        _CACHE[name] = (m, paths)
    return _CACHE[name]
