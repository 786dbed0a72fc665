"""Keras convolutions beyond Conv2D as ONNX nodes, named as the export names their layers:
Conv1D on a ``(N, L, C)`` sequence as ``Transpose -> Conv`` (1-D, weight ``(O, I, K)``)
``-> Transpose`` back; SeparableConv1D/2D as the depthwise ``Conv`` ``NAME/depthwise``
(group = channels) and the pointwise 1x1 ``Conv`` ``NAME`` with the bias and activation.
Keras itself computes the depthwise half's value for verify (``keras.ops.depthwise_conv``
with the layer's own kernel, strides, padding and dilation: ``Translation.derived``), so
each of the two exported layers is judged against Keras.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import PREACT, Base, Tensor, Untranslatable, _pads_same, _pair, _weights


def _one(v: Any) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


class ConvolutionLayers(Base):
    """Translations ``t_CLASS`` of Keras layer classes (see the module docstring)."""

    def _pads_1d(self, op: Any, length: Any, k: int, s: int, d: int) -> dict[str, Any]:
        if op.padding == "valid":
            return {"pads": [0, 0]}
        if op.padding == "causal":
            return {"pads": [(k - 1) * d, 0]}
        p = _pads_same(length, k, s, d)
        return {"auto_pad": "SAME_UPPER"} if p is None else {"pads": [p[0], p[1]]}

    def _sequence(self, op: Any, x: Tensor) -> str:
        """``x`` (N, L, C) as (N, C, L)."""
        if x.layout != "keras" or len(x.shape) != 3 or \
                getattr(op, "data_format", "channels_last") != "channels_last":
            raise Untranslatable("only channels_last (N, L, C) sequences are translated")
        t = self.b.node("Transpose", [x.name], f"{op.name}/ncw", perm=[0, 2, 1])
        self.out.derived[t] = ((x.name,), lambda a: a.transpose(0, 2, 1))  # Keras' moved
        return t

    def _back(self, y: str, op: Any, shape: tuple[Any, ...], name: str) -> Tensor:
        z = self.b.node("Transpose", [y], name + PREACT, name=f"{name}/nlc", perm=[0, 2, 1])
        return self.finish(z, op, shape, name, "keras", op.activation)

    def t_Conv1D(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                 ) -> Tensor:
        x = ins[0]
        ncw = self._sequence(op, x)
        w = _weights(op)
        k = w["kernel"].shape[0]
        s, d = _one(op.strides), _one(op.dilation_rate)
        inputs = [ncw, self.b.init(name + "/kernel", w["kernel"].transpose(2, 1, 0))]
        if "bias" in w:
            inputs.append(self.b.init(name + "/bias", w["bias"]))
        y = self.b.node("Conv", inputs, f"{name}/conv", name=name, kernel_shape=[k],
                        strides=[s], dilations=[d], group=int(getattr(op, "groups", 1)),
                        **self._pads_1d(op, x.shape[1], k, s, d))
        return self._back(y, op, shape, name)

    def _keras_depthwise(self, op: Any, x: Tensor, mid: str, dk: np.ndarray) -> None:
        """Keras' value of the depthwise half ``mid`` (NCHW, or NCW for a sequence), from
        Keras' value of the layer's input ``x`` (NCHW image, or (N, L, C))."""
        image = x.layout == "nchw"

        def run(a: np.ndarray) -> np.ndarray:
            import keras

            nhwc = a.transpose(0, 2, 3, 1) if image else a
            y = keras.ops.convert_to_numpy(keras.ops.depthwise_conv(
                nhwc, dk, strides=op.strides, padding=op.padding,
                dilation_rate=op.dilation_rate, data_format="channels_last"))
            y = np.asarray(y, np.float32)
            return y.transpose(0, 3, 1, 2) if image else y.transpose(0, 2, 1)

        self.out.derived[mid] = ((x.name,), run)

    def _separable(self, op: Any, x: str, w: dict[str, np.ndarray], name: str,
                   spatial: dict[str, Any]) -> str:
        """The depthwise Conv ``NAME/depthwise`` then the pointwise Conv ``NAME``."""
        dk = w["depthwise_kernel"]
        *ks, c, m = dk.shape
        n = len(ks)  # output channel c*m + j reads dk[..., c, j]
        dw = dk.transpose(n, n + 1, *range(n)).reshape(c * m, 1, *ks)
        mid = self.b.node("Conv", [x, self.b.init(name + "/depthwise_kernel", dw)],
                          f"{name}/depthwise", name=f"{name}/depthwise", kernel_shape=ks,
                          group=c, **spatial)
        pk = w["pointwise_kernel"]  # (*1, c*m, o)
        pw = pk.reshape(c * m, -1).T.reshape(-1, c * m, *([1] * len(ks)))
        inputs = [mid, self.b.init(name + "/pointwise_kernel", np.ascontiguousarray(pw))]
        if "bias" in w:
            inputs.append(self.b.init(name + "/bias", w["bias"]))
        return self.b.node("Conv", inputs, f"{name}/pointwise", name=name,
                           kernel_shape=[1] * len(ks))

    def t_SeparableConv2D(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                          name: str) -> Tensor:
        x = ins[0]
        self.check_image(op, x)
        w = _weights(op)
        k = tuple(w["depthwise_kernel"].shape[:2])
        s, d = _pair(op.strides), _pair(op.dilation_rate)
        y = self._separable(op, x.name, w, name, {"strides": list(s), "dilations": list(d),
                                                   **self.conv_pads(op, x, k, s, d)})
        self._keras_depthwise(op, x, f"{name}/depthwise", w["depthwise_kernel"])
        return self.finish(y, op, shape, name, "nchw", op.activation)

    def t_SeparableConv1D(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                          name: str) -> Tensor:
        x = ins[0]
        ncw = self._sequence(op, x)
        w = _weights(op)
        k = w["depthwise_kernel"].shape[0]
        s, d = _one(op.strides), _one(op.dilation_rate)
        y = self._separable(op, ncw, w, name, {"strides": [s], "dilations": [d],
                                               **self._pads_1d(op, x.shape[1], k, s, d)})
        self._keras_depthwise(op, x, f"{name}/depthwise", w["depthwise_kernel"])
        return self._back(y, op, shape, name)
