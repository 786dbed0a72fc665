"""A loaded Keras model as an equivalent ONNX graph in NCHW, so that ``mpslayout verify``
can walk a Keras model like any ONNX model while Keras itself stays the judge.

:func:`keras_as_onnx` translates a Functional or Sequential Keras 3 model (channels_last)
layer by layer: weights become initializers in ONNX layouts (OIHW, ConvTranspose's IOHW,
Gemm's (K, O)), weight nodes are named after their Keras layers, and each Keras layer's
output tensor is named after the layer (``NAME`` for its first call, ``NAME:k`` for call
k), so manifest layers (``source.layer``) and Keras' own intermediate outputs both map
onto the graph. A fused activation is a node of its own after the layer, whose input
(``NAME/preact``) Keras cannot give. Images are NCHW; a Flatten of an image flattens in
C, H, W order and the Dense after it has its rows permuted to match, which is what an
ONNX exporter of the same network writes. A layer with no translation becomes a graph
input, fed from Keras' value (``Translation.untranslated``): nothing after it is lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OPSET = 17
PREACT = "/preact"

# Keras activation name -> (ONNX op, attributes); relu6 and silu are built in _activation
_ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}), "tanh": ("Tanh", {}),
    "hard_sigmoid": ("HardSigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5}),
    "hard_swish": ("HardSwish", {}), "hard_silu": ("HardSwish", {}),
    "elu": ("Elu", {"alpha": 1.0}), "softplus": ("Softplus", {}),
    "softsign": ("Softsign", {}), "exponential": ("Exp", {}),
    "leaky_relu": ("LeakyRelu", {"alpha": 0.2}), "selu": ("Selu", {}),
}
_IDENTITY = frozenset(("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise",
                       "GaussianDropout", "AlphaDropout", "Identity", "ActivityRegularization",
                       "InputLayer"))
_MERGE_OPS = {"Add": "Add", "Subtract": "Sub", "Multiply": "Mul", "Maximum": "Max",
              "Minimum": "Min", "Average": "Mean"}


@dataclass
class Tensor:
    """A value of the graph: its ONNX name, its Keras shape (batch first, channels last)
    and how its values are laid out relative to Keras': "nchw" (a 4-D image transposed),
    "keras" (the same as Keras), "flat_chw" (a flattened image in C, H, W order), or
    "n_c11" (Keras' (N, C) as an (N, C, 1, 1) image)."""

    name: str
    shape: tuple[Any, ...]
    layout: str
    hwc: tuple[int, int, int] | None = None  # of a flat_chw tensor


@dataclass
class Translation:
    """The ONNX model and how to read Keras' values in its terms: ``tensors`` maps an
    ONNX tensor name to the Keras tensor it holds and its :class:`Tensor` layout;
    ``inputs`` the graph inputs (the model's own, then untranslated layers' outputs)."""

    model: Any
    tensors: dict[str, tuple[Any, Tensor]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    untranslated: list[dict[str, str]] = field(default_factory=list)
    # a fused activation's input tensor -> (the layer, the Keras tensor it reads)
    preacts: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # the sigmoid inside a silu (x * sigmoid(x)) -> x
    sigmoids: dict[str, str] = field(default_factory=dict)

    def to_graph(self, name: str, value: np.ndarray) -> np.ndarray:
        """Keras' value of tensor ``name`` in the graph's layout."""
        t = self.tensors[name][1]
        a = np.asarray(value)
        if t.layout == "nchw":
            return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
        if t.layout == "n_c11":
            return a.reshape(*a.shape, 1, 1)
        if t.layout == "flat_chw" and t.hwc is not None:
            h, w, c = t.hwc
            return np.ascontiguousarray(
                a.reshape(a.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(a.shape[0], -1))
        return a


class Untranslatable(ValueError):
    """A Keras layer (or a configuration of one) with no ONNX translation here."""


def _pads_same(size: Any, k: int, s: int, d: int) -> tuple[int, int] | None:
    """TensorFlow's "same" padding (the extra pixel at the end); None if size unknown."""
    if not isinstance(size, int):
        return None
    eff = (k - 1) * d + 1
    total = max((math.ceil(size / s) - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _dims(t: Tensor) -> list[int | None]:
    """The dims of ``t`` in the graph (NCHW for an image), None where unknown."""
    s = t.shape
    dims = [s[0], s[3], s[1], s[2]] if t.layout == "nchw" else list(s)
    return [d if isinstance(d, int) else None for d in dims]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


class _Builder:
    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.names: set[str] = set()  # tensors and initializers
        self.node_names: set[str] = set()

    def rename(self, old: str, new: str) -> None:
        """The last node wrote ``old``: make it write ``new`` instead."""
        n = self.nodes[-1]
        n.output[list(n.output).index(old)] = new
        self.names.add(new)

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def init(self, base: str, a: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.unique(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str | None = None,
             **attrs: Any) -> str:
        self.names.add(output)
        base, k = name or f"{output}/{op}", 1
        node_name = base
        while node_name in self.node_names:
            k += 1
            node_name = f"{base}_{k}"
        self.node_names.add(node_name)
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=node_name, **attrs))
        return output


def _is_layer(op: Any) -> bool:
    import keras

    return isinstance(op, keras.layers.Layer)


def _weights(layer: Any) -> dict[str, np.ndarray]:
    """A layer's variables by their Keras names (kernel, bias, gamma, ...), float32."""
    out = {}
    for v in layer.weights:
        key = v.path.rsplit("/", 1)[-1] if hasattr(v, "path") else v.name.split(":")[0]
        out[key] = np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float32)
    return out


class _Translator:
    def __init__(self, model: Any) -> None:
        self.b = _Builder()
        self.model = model
        self.out = Translation(None)
        self.values: dict[int, Tensor] = {}  # id(KerasTensor) -> Tensor
        self.input_dims: list[tuple[str, list[Any]]] = []
        self.calls: dict[int, int] = {}

    # -- helpers

    def keras_view(self, t: Tensor, base: str) -> Tensor:
        """``t`` in Keras' own layout (for reshapes, which move Keras-ordered values)."""
        if t.layout == "nchw":
            return Tensor(self.b.node("Transpose", [t.name], self.b.unique(base + "/nhwc"),
                                      perm=[0, 2, 3, 1]), t.shape, "keras")
        if t.layout == "flat_chw" and t.hwc is not None:
            h, w, c = t.hwc
            s = self.b.init(base + "/chw_shape", np.array([-1, c, h, w], np.int64))
            x = self.b.node("Reshape", [t.name, s], self.b.unique(base + "/chw"))
            x = self.b.node("Transpose", [x], self.b.unique(base + "/hwc"), perm=[0, 2, 3, 1])
            f = self.b.node("Flatten", [x], self.b.unique(base + "/flat"), axis=1)
            return Tensor(f, t.shape, "keras")
        return t

    def activation(self, x: str, act: Any, out: str, base: str) -> str:
        """Apply a Keras activation (a name) to ``x``, writing ``out``."""
        name = act if isinstance(act, str) else getattr(act, "__name__", str(act))
        name = {"swish": "silu", "hard_swish": "hard_silu"}.get(name, name)
        if name in ("linear", None, "None"):
            return self.b.node("Identity", [x], out, name=base)
        if name == "relu6":
            lo = self.b.init(base + "/min", np.array(0, np.float32))
            hi = self.b.init(base + "/max", np.array(6, np.float32))
            return self.b.node("Clip", [x, lo, hi], out, name=base)
        if name == "silu":
            s = self.b.node("Sigmoid", [x], self.b.unique(base + "/sigmoid"))
            self.out.sigmoids[s] = x  # Keras' sigmoid of x is the oracle's value of s
            return self.b.node("Mul", [x, s], out, name=base)
        if name == "softmax":
            return self.b.node("Softmax", [x], out, name=base, axis=1)
        if name in _ACTIVATIONS:
            op, attrs = _ACTIVATIONS[name]
            return self.b.node(op, [x], out, name=base, **attrs)
        raise Untranslatable(f"activation {name!r}")

    # -- the walk

    def run(self) -> Translation:
        from onnx import TensorProto, helper

        model = self.model
        graph = getattr(model, "_functional", None) or model
        if not hasattr(graph, "_nodes_by_depth"):
            raise Untranslatable("the model has no graph of layers (a subclassed model, or a "
                                 "Sequential model built without an input shape)")
        for kt in graph.inputs:
            self.graph_input(kt, kt._keras_history[0].name)
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                if node.operation is not None and not node.is_input:
                    self.layer_call(node.operation, node)
        outputs = [helper.make_tensor_value_info(self.values[id(kt)].name, TensorProto.FLOAT,
                                                 _dims(self.values[id(kt)]))
                   for kt in graph.outputs]
        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims)
               for n, dims in self.input_dims]
        g = helper.make_graph(self.b.nodes, f"{model.name}_nchw", ins, outputs, self.b.inits)
        self.out.model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                                           producer_name="mpslayout.keras_onnx")
        self.out.model.ir_version = min(self.out.model.ir_version, 8)
        return self.out

    def graph_input(self, kt: Any, base: str) -> None:
        shape = tuple(kt.shape)
        name = self.b.unique(base)
        layout = "nchw" if len(shape) == 4 else "keras"
        t = Tensor(name, shape, layout)
        self.values[id(kt)] = t
        self.out.tensors[name] = (kt, t)
        self.out.inputs.append(name)
        self.input_dims.append((name, _dims(t)))

    def layer_call(self, op: Any, node: Any) -> None:
        idx = self.calls[id(op)] = self.calls.get(id(op), -1) + 1  # calls in this graph
        name = self.b.unique(op.name if idx == 0 else f"{op.name}:{idx}")
        ins = [self.values[id(kt)] for kt in node.input_tensors if id(kt) in self.values]
        outs = list(node.output_tensors)
        cls = type(op).__name__
        self.node = node
        try:
            if len(outs) != 1:
                raise Untranslatable(f"{len(outs)} outputs")
            if _is_layer(op):
                fn = getattr(self, "t_" + cls, None)
                if fn is None:
                    raise Untranslatable(f"no ONNX translation of {cls}")
                t = fn(op, ins, tuple(outs[0].shape), name)
            else:  # a keras.ops call in a functional graph (x + 3, x * (1/6), ...)
                t = self.keras_op(cls, node, tuple(outs[0].shape), name)
        except Untranslatable as e:  # Keras' value of it becomes an input of the graph
            self.out.untranslated.append({"name": op.name, "op": cls, "reason": str(e)})
            for k, kt in enumerate(outs):
                self.graph_input(kt, name if k == 0 else f"{name}/{k}")
            return
        self.values[id(outs[0])] = t
        self.out.tensors[t.name] = (outs[0], t)

    def finish(self, x: str, op: Any, shape: tuple[Any, ...], name: str, layout: str,
               act: Any = "linear") -> Tensor:
        """The layer's output tensor ``name``: ``x`` through its fused activation."""
        act_name = act if isinstance(act, str) else getattr(act, "__name__", "linear")
        if act_name != "linear":
            self.activation(x, act_name, name, f"{name}/activation")
            self.out.preacts[x] = (op, self.node.input_tensors[0])
        else:
            self.b.rename(x, name)
        return Tensor(name, shape, layout)

    # -- layers with weights

    def conv_pads(self, op: Any, x: Tensor, k: tuple[int, int], s: tuple[int, int],
                  d: tuple[int, int]) -> dict[str, Any]:
        if op.padding == "valid":
            return {"pads": [0, 0, 0, 0]}
        py = _pads_same(x.shape[1], k[0], s[0], d[0])
        px = _pads_same(x.shape[2], k[1], s[1], d[1])
        if py is None or px is None:
            return {"auto_pad": "SAME_UPPER"}
        return {"pads": [py[0], px[0], py[1], px[1]]}

    def check_image(self, op: Any, x: Tensor) -> None:
        if x.layout != "nchw" or getattr(op, "data_format", "channels_last") != "channels_last":
            raise Untranslatable("only channels_last images are translated")

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
        from .export.keras_graph import transposed_pads

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

    # -- weightless layers

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
        act = act if isinstance(act, str) else getattr(act, "__name__", str(act))
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


def keras_as_onnx(model: Any) -> Translation:
    """The ONNX translation of a Keras model (module docstring); needs onnx.

    Raises :class:`Untranslatable` for a model with no layer graph; single layers without
    a translation are listed in ``Translation.untranslated`` and fed from Keras.
    """
    return _Translator(model).run()
