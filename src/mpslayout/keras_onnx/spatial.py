"""Keras layers that move values (concatenation, pooling, padding, cropping, resizing,
flatten, reshape) as ONNX nodes in NCHW, converting to Keras' order where Keras' meaning
depends on it."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Base, Tensor, Untranslatable, _pair


class SpatialLayers(Base):
    """Translations ``t_CLASS`` of Keras layer classes (see the module docstring)."""

    def t_Concatenate(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                      name: str) -> Tensor:
        rank = len(shape)
        axis = op.axis % rank
        if all(t.layout == "nchw" for t in ins):
            axis = {0: 0, 1: 2, 2: 3, 3: 1}[axis]
            layout = "nchw"
        else:
            ins = [self.keras_view(t, name) for t in ins]
            layout = "keras"
        y = self.b.node("Concat", [t.name for t in ins], name, name=name, axis=axis)
        return Tensor(y, shape, layout)

    def pool(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str) -> Tensor:
        x = ins[0]
        self.check_image(op, x)
        k = _pair(op.pool_size)
        s = _pair(op.strides if op.strides is not None else op.pool_size)
        kind = "MaxPool" if "Max" in type(op).__name__ else "AveragePool"
        return self.simple(kind, x, shape, name, kernel_shape=list(k), strides=list(s),
                           **self.conv_pads(op, x, k, s, (1, 1)))

    t_MaxPooling2D = t_AveragePooling2D = pool

    def global_pool(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                    ) -> Tensor:
        x = ins[0]
        self.check_image(op, x)
        kind = "GlobalMaxPool" if "Max" in type(op).__name__ else "GlobalAveragePool"
        if getattr(op, "keepdims", False):
            return self.simple(kind, x, shape, name)
        y = self.b.node(kind, [x.name], self.b.unique(name + "/pooled"), name=name)
        # Keras' (N, C) result is this (N, C, 1, 1) image too
        self.out.tensors[y] = (self.node.output_tensors[0], Tensor(y, shape, "n_c11"))
        return Tensor(self.b.node("Flatten", [y], name, name=name + "/flatten", axis=1),
                      shape, "keras")

    t_GlobalAveragePooling2D = t_GlobalMaxPooling2D = global_pool

    def t_ZeroPadding2D(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                        name: str) -> Tensor:
        x = ins[0]
        self.check_image(op, x)
        (t, b), (left, r) = op.padding
        pads = self.b.init(name + "/pads", np.array([0, 0, t, left, 0, 0, b, r], np.int64))
        return Tensor(self.b.node("Pad", [x.name, pads], name, name=name), shape, "nchw")

    def t_Cropping2D(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                     ) -> Tensor:
        x = ins[0]
        self.check_image(op, x)
        (t, b), (left, r) = op.cropping
        h, w = x.shape[1], x.shape[2]
        if not isinstance(h, int) or not isinstance(w, int):
            raise Untranslatable("a cropping of an image of unknown size")
        starts = self.b.init(name + "/starts", np.array([t, left], np.int64))
        ends = self.b.init(name + "/ends", np.array([h - b, w - r], np.int64))
        axes = self.b.init(name + "/axes", np.array([2, 3], np.int64))
        return Tensor(self.b.node("Slice", [x.name, starts, ends, axes], name, name=name),
                      shape, "nchw")

    def t_UpSampling2D(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...],
                       name: str) -> Tensor:
        x = ins[0]
        self.check_image(op, x)
        sy, sx = _pair(op.size)
        scales = self.b.init(name + "/scales", np.array([1, 1, sy, sx], np.float32))
        if op.interpolation == "nearest":
            attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                     "nearest_mode": "floor"}
        elif op.interpolation == "bilinear":
            attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
        else:
            raise Untranslatable(f"interpolation {op.interpolation!r}")
        return Tensor(self.b.node("Resize", [x.name, "", scales], name, name=name, **attrs),
                      shape, "nchw")

    def t_Flatten(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                  ) -> Tensor:
        x = ins[0]
        if x.layout == "nchw" and all(isinstance(v, int) for v in x.shape[1:]):
            h, w, c = (int(v) for v in x.shape[1:])
            y = self.b.node("Flatten", [x.name], name, name=name, axis=1)
            return Tensor(y, shape, "flat_chw", (h, w, c))
        x = self.keras_view(x, name)
        return Tensor(self.b.node("Flatten", [x.name], name, name=name, axis=1), shape,
                      "keras")

    def t_Reshape(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                  ) -> Tensor:
        if len(shape) == 4 and shape[1] == 1 and shape[2] == 1 and len(ins[0].shape) == 2 \
                and ins[0].layout == "keras":  # (N, C) to (N, 1, 1, C): NCHW (N, C, 1, 1)
            target = self.b.init(name + "/shape", np.array([0, -1, 1, 1], np.int64))
            return Tensor(self.b.node("Reshape", [ins[0].name, target], name, name=name),
                          shape, "nchw")
        x = self.keras_view(ins[0], name)
        target = self.b.init(name + "/shape", np.array([0, *op.target_shape], np.int64))
        if len(shape) != 4:
            return Tensor(self.b.node("Reshape", [x.name, target], name, name=name), shape,
                          "keras")
        y = self.b.node("Reshape", [x.name, target], self.b.unique(name + "/nhwc"), name=name)
        y = self.b.node("Transpose", [y], name, name=name + "/nchw", perm=[0, 3, 1, 2])
        return Tensor(y, shape, "nchw")

    def t_Permute(self, op: Any, ins: list[Tensor], shape: tuple[Any, ...], name: str
                  ) -> Tensor:
        x = ins[0]
        dims = [0, *(int(d) for d in op.dims)]  # Keras' permutation of its own axes
        if x.layout == "nchw":  # one Transpose from NCHW to the result's graph layout
            to_nhwc, to_nchw = (0, 2, 3, 1), (0, 3, 1, 2)
            perm = [to_nhwc[dims[c]] for c in to_nchw]
            return Tensor(self.b.node("Transpose", [x.name], name, name=name, perm=perm),
                          shape, "nchw")
        x = self.keras_view(x, name)
        y = self.b.node("Transpose", [x.name], self.b.unique(name + "/keras"), name=name,
                        perm=dims)
        if len(shape) != 4:
            self.b.rename(y, name)
            return Tensor(name, shape, "keras")
        y = self.b.node("Transpose", [y], name, name=name + "/nchw", perm=[0, 3, 1, 2])
        return Tensor(y, shape, "nchw")
