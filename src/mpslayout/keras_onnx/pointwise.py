"""Keras layers that act on each value (activations, dropout, merges) and keras.ops
arithmetic, as ONNX nodes that keep their input's layout."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import _MERGE_OPS, Base, Tensor, Untranslatable, act_name


class PointwiseLayers(Base):
    """Translations ``t_CLASS`` of Keras layer classes (see the module docstring)."""

    def keras_op(self, cls: str, node: Any, shape: tuple[Any, ...], name: str) -> Tensor:
        """An arithmetic keras.ops call on tensors and scalars."""
        onnx_op = {"Add": "Add", "Subtract": "Sub", "Multiply": "Mul", "Divide": "Div",
                   "TrueDivide": "Div", "Maximum": "Max", "Minimum": "Min"}.get(cls)
        args = list(node.arguments.args)
        if onnx_op is None or node.arguments.kwargs or len(args) != 2:
            raise Untranslatable(f"no ONNX translation of keras.ops {cls}")
        tensors = [self.values.get(id(a)) for a in args]
        known = [t for t in tensors if t is not None]
        if len(known) == 2 and (known[0].layout, known[0].hwc) != (known[1].layout,
                                                                   known[1].hwc):
            known = [self.keras_view(t, name) for t in known]
            tensors = known
        names = []
        for a, t in zip(args, tensors):
            if t is not None:
                names.append(t.name)
            elif np.ndim(a) == 0 and isinstance(a, (int, float, np.number)):
                names.append(self.b.init(f"{name}/constant", np.array(a, np.float32)))
            else:
                raise Untranslatable(f"keras.ops {cls} of a non-scalar constant")
        y = self.b.node(onnx_op, names, name, name=name)
        return Tensor(y, shape, known[0].layout, known[0].hwc)

    def simple(self, op: str, x: Tensor, shape: tuple[Any, ...], name: str,
               **attrs: Any) -> Tensor:
        return Tensor(self.b.node(op, [x.name], name, name=name, **attrs), shape, x.layout,
                      x.hwc)

    def pointwise(self, x: Tensor, act: str, shape: tuple[Any, ...], name: str) -> Tensor:
        self.activation(x.name, act, name, name)
        return Tensor(name, shape, x.layout, x.hwc)

    def t_Activation(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                     name: str) -> Tensor:
        act = op.activation
        act = act_name(act)
        if act == "softmax" and ins[0].layout != "nchw" and len(shape) != 2:
            raise Untranslatable("a softmax of a sequence")
        return self.pointwise(ins[0], act, shape, name)

    def t_ReLU(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str) -> Tensor:
        x = ins[0]
        mx = None if op.max_value is None else float(op.max_value)
        slope, th = float(op.negative_slope), float(op.threshold)
        if th != 0:
            raise Untranslatable(f"a ReLU with threshold {th}")
        if slope == 0 and mx == 6.0:
            return self.pointwise(x, "relu6", shape, name)
        y = self.b.node("LeakyRelu" if slope else "Relu", [x.name],
                        name if mx is None else self.b.unique(name + "/relu"), name=name,
                        **({"alpha": slope} if slope else {}))
        if mx is not None:
            y = self.b.node("Min", [y, self.b.init(name + "/max", np.array(mx, np.float32))],
                            name, name=name + "/max")
        return Tensor(y, shape, x.layout, x.hwc)

    def t_LeakyReLU(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                    name: str) -> Tensor:
        slope = getattr(op, "negative_slope", getattr(op, "alpha", 0.3))
        return self.simple("LeakyRelu", ins[0], shape, name, alpha=float(slope))

    def t_ELU(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str) -> Tensor:
        return self.simple("Elu", ins[0], shape, name, alpha=float(op.alpha))

    def t_Softmax(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                  ) -> Tensor:
        x = ins[0]
        axis = op.axis if isinstance(op.axis, int) else None
        if axis is None or axis % len(shape) != len(shape) - 1 or x.layout == "flat_chw":
            raise Untranslatable(f"a softmax along axis {op.axis}")
        return self.simple("Softmax", x, shape, name, axis=1 if x.layout == "nchw" else -1)

    def identity(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                 ) -> Tensor:
        return self.simple("Identity", ins[0], shape, name)

    t_Dropout = t_SpatialDropout2D = t_GaussianNoise = t_GaussianDropout = identity

    t_AlphaDropout = t_Identity = t_ActivityRegularization = identity

    def merge(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str) -> Tensor:
        layouts = {(t.layout, t.hwc) for t in ins}
        if len(layouts) != 1:
            ins = [self.keras_view(t, name) for t in ins]
        y = self.b.node(_MERGE_OPS[type(op).__name__], [t.name for t in ins], name, name=name)
        return Tensor(y, shape, ins[0].layout, ins[0].hwc)

    t_Add = t_Subtract = t_Multiply = t_Maximum = t_Minimum = t_Average = merge

    def t_Rescaling(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                    ) -> Tensor:
        x = ins[0]
        scale = np.asarray(op.scale, np.float32)
        offset = np.asarray(op.offset, np.float32)
        if scale.ndim or offset.ndim:
            raise Untranslatable("a per-channel rescaling")
        y = self.b.node("Mul", [x.name, self.b.init(name + "/scale", scale)],
                        self.b.unique(name + "/scaled"), name=name)
        y = self.b.node("Add", [y, self.b.init(name + "/offset", offset)], name,
                        name=name + "/offset")
        return Tensor(y, shape, x.layout, x.hwc)

    def t_Normalization(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                        name: str) -> Tensor:
        """Keras: (x - mean) / max(sqrt(variance), epsilon), per channel."""
        import keras

        x = ins[0]
        if getattr(op, "invert", False) or x.layout == "flat_chw":
            raise Untranslatable("an inverted normalization, or one of a flattened image")
        mean = np.asarray(keras.ops.convert_to_numpy(op.mean), np.float32)
        var = np.asarray(keras.ops.convert_to_numpy(op.variance), np.float32)
        denom = np.maximum(np.sqrt(var), np.float32(keras.backend.epsilon()))
        if x.layout == "nchw":
            if mean.ndim != 4:
                raise Untranslatable(f"a normalization over axis {op.axis}")
            mean, denom = mean.transpose(0, 3, 1, 2), denom.transpose(0, 3, 1, 2)
        y = self.b.node("Sub", [x.name, self.b.init(name + "/mean", mean)],
                        self.b.unique(name + "/centred"), name=name)
        y = self.b.node("Div", [y, self.b.init(name + "/std", denom)], name,
                        name=name + "/scale")
        return Tensor(y, shape, x.layout, x.hwc)
