"""The state every layer translation shares: the ONNX graph being built, the values of
Keras tensors in it, and the helpers that apply an activation, give a layer its output
name and convert between the graph's layout and Keras'."""

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
class RecurrentValue:
    """How Keras computes the ``Y`` ``(T, dirs, B, H)`` of a translated recurrent node:
    each direction's Keras layer (forward first) run with ``return_sequences=True`` on
    the value of graph tensor ``input`` (Keras' layout, ``(B, T, I)``)."""

    layers: list[Any]
    input: str


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
    # a recurrent node's Y -> the Keras layers that compute it
    recurrent: dict[str, RecurrentValue] = field(default_factory=dict)
    # a tensor that moves Keras values (a Transpose, a Slice) -> (its sources, numpy of it)
    derived: dict[str, tuple[tuple[str, ...], Any]] = field(default_factory=dict)

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

    def node(self, op: str, inputs: list[str], output: str | list[str],
             name: str | None = None, **attrs: Any) -> str:
        """Add node ``op`` writing ``output`` (or several outputs); returns the first."""
        outputs = [output] if isinstance(output, str) else list(output)
        self.names.update(outputs)
        base, k = name or f"{outputs[0]}/{op}", 1
        node_name = base
        while node_name in self.node_names:
            k += 1
            node_name = f"{base}_{k}"
        self.node_names.add(node_name)
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=node_name, **attrs))
        return outputs[0]


def act_name(act: Any) -> str:
    """A Keras activation's name (it may be given as a name or as the function)."""
    return act if isinstance(act, str) else str(getattr(act, "__name__", act))


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


class Base:
    """The graph under construction and the Keras values already in it."""

    def __init__(self, model: Any) -> None:
        self.b = _Builder()
        self.model = model
        self.out = Translation(None)
        self.values: dict[int, Tensor] = {}  # id(KerasTensor) -> Tensor
        self.input_dims: list[tuple[str, list[Any]]] = []
        self.calls: dict[int, int] = {}

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
        name = act_name(act)
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
