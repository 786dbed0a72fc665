"""Keras layers with weights as ONNX nodes: weights become initializers in ONNX layouts
(OIHW, ConvTranspose's IOHW, Gemm's (K, O)), each node named after its Keras layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import PREACT, Base, Tensor, Untranslatable, _pair, _weights


class WeightedLayers(Base):
    """Translations ``t_CLASS`` of Keras layer classes (see the module docstring)."""

    def conv(self, op: Any, x: Tensor, oihw: np.ndarray, bias: np.ndarray | None,
             groups: int, shape: tuple[Any, ...], name: str) -> Tensor:
        """An ONNX Conv of ``x`` (OIHW weights) with the Keras layer's strides, dilation
        and padding, then its fused activation."""
        self.check_image(op, x)
        k, s, d = tuple(oihw.shape[2:]), _pair(op.strides), _pair(op.dilation_rate)
        inputs = [x.name, self.b.init(name + "/kernel", oihw)]
        if bias is not None:
            inputs.append(self.b.init(name + "/bias", bias))
        y = self.b.node("Conv", inputs, name + PREACT, name=name, kernel_shape=list(k),
                        strides=list(s), dilations=list(d), group=groups,
                        **self.conv_pads(op, x, k, s, d))
        return self.finish(y, op, shape, name, "nchw", op.activation)

    def t_Conv2D(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str) -> Tensor:
        w = _weights(op)
        return self.conv(op, ins[0], w["kernel"].transpose(3, 2, 0, 1), w.get("bias"),
                         int(getattr(op, "groups", 1)), shape, name)

    def t_DepthwiseConv2D(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                          name: str) -> Tensor:
        w = _weights(op)
        kern = w.get("kernel", w.get("depthwise_kernel"))
        kh, kw, c, m = kern.shape  # output channel c*m + j reads kern[:, :, c, j]
        return self.conv(op, ins[0], kern.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw),
                         w.get("bias"), int(c), shape, name)

    def t_Conv2DTranspose(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                          name: str) -> Tensor:
        from ..export.sources.keras.graph import transposed_pads

        x = ins[0]
        self.check_image(op, x)
        w = _weights(op)
        kh, kw, _, _ = w["kernel"].shape
        s, d = _pair(op.strides), _pair(op.dilation_rate)
        opad = getattr(op, "output_padding", None)
        opad = (None, None) if opad is None else _pair(opad)
        pads, extra = [0, 0, 0, 0], [0, 0]
        for i, kk in enumerate((kh, kw)):
            begin, end = transposed_pads(op.padding, kk, s[i], d[i], opad[i])
            if end < 0:  # output padding beyond the kernel: ONNX's output_padding
                extra[i], end = -end, 0
            pads[i], pads[i + 2] = begin, end
        inputs = [x.name, self.b.init(name + "/kernel", w["kernel"].transpose(3, 2, 0, 1))]
        if "bias" in w:
            inputs.append(self.b.init(name + "/bias", w["bias"]))
        y = self.b.node("ConvTranspose", inputs, name + PREACT, name=name,
                        kernel_shape=[kh, kw], strides=list(s), dilations=list(d),
                        pads=pads, output_padding=extra)
        return self.finish(y, op, shape, name, "nchw", op.activation)

    def t_Dense(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str) -> Tensor:
        x = ins[0]
        w = _weights(op)
        kern, bias = w["kernel"], w.get("bias")
        if x.layout == "nchw":  # a Dense on every pixel: a 1x1 convolution
            inputs = [x.name, self.b.init(name + "/kernel", kern.T[:, :, None, None].copy())]
            if bias is not None:
                inputs.append(self.b.init(name + "/bias", bias))
            y = self.b.node("Conv", inputs, name + PREACT, name=name, kernel_shape=[1, 1])
            return self.finish(y, op, shape, name, "nchw", op.activation)
        if x.layout == "flat_chw" and x.hwc is not None:  # rows in the graph's C, H, W order
            h, ww, c = x.hwc
            kern = kern.reshape(h, ww, c, -1).transpose(2, 0, 1, 3).reshape(kern.shape)
        if len(x.shape) == 2:
            inputs = [x.name, self.b.init(name + "/kernel", kern)]
            if bias is not None:
                inputs.append(self.b.init(name + "/bias", bias))
            y = self.b.node("Gemm", inputs, name + PREACT, name=name)
        else:  # a sequence (N, T, C): MatMul, then the bias
            y = self.b.node("MatMul", [x.name, self.b.init(name + "/kernel", kern)],
                            name + PREACT + ("/matmul" if bias is not None else ""), name=name)
            if bias is not None:
                y = self.b.node("Add", [y, self.b.init(name + "/bias", bias)], name + PREACT)
        return self.finish(y, op, shape, name, "keras", op.activation)

    def t_BatchNormalization(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                             name: str) -> Tensor:
        x = ins[0]
        axis = op.axis if isinstance(op.axis, int) else op.axis[0]
        if axis % len(x.shape) != len(x.shape) - 1 or x.layout == "flat_chw" or \
                (x.layout == "keras" and len(x.shape) != 2):
            raise Untranslatable(f"a batch normalization of axis {op.axis}")
        w = _weights(op)
        c = w["moving_mean"].shape[0]
        vec = [w.get("gamma", np.ones(c, np.float32)), w.get("beta", np.zeros(c, np.float32)),
               w["moving_mean"], w["moving_variance"]]
        inputs = [x.name] + [self.b.init(f"{name}/{r}", v)
                             for r, v in zip(("gamma", "beta", "mean", "variance"), vec)]
        y = self.b.node("BatchNormalization", inputs, name, name=name,
                        epsilon=float(op.epsilon))
        return Tensor(y, shape, x.layout)

    def t_PReLU(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str) -> Tensor:
        x = ins[0]
        alpha = _weights(op)["alpha"]
        if x.layout == "nchw":
            alpha = alpha.transpose(2, 0, 1) if alpha.ndim == 3 else alpha
        elif x.layout != "keras":
            raise Untranslatable("a PReLU of a flattened image")
        y = self.b.node("PRelu", [x.name, self.b.init(name + "/alpha", alpha)], name, name=name)
        return Tensor(y, shape, x.layout)
