"""A Keras model config as a graph of layers: which layer feeds which, each layer's input
and output shapes (recorded by Keras 3, propagated for Keras 2 files), and where each
layer's variables live in a .keras archive.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ... import geometry as mf
from ...attrs import as_int, as_pair
from ...plan import Plan

# layers MPS runs without weights, or that only move data
WEIGHTLESS = frozenset((
    "InputLayer", "Flatten", "Reshape", "Activation", "ReLU", "LeakyReLU", "ELU",
    "Softmax", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "UpSampling2D", "ZeroPadding2D", "Cropping2D", "Add", "Subtract", "Multiply", "Average",
    "Maximum", "Minimum", "Concatenate", "Rescaling", "Identity",
))
# element-wise layers a Dense output may pass through on its way to a Reshape
POINTWISE = frozenset(("Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "GaussianNoise",
                        "GaussianDropout", "Identity"))
MODELS = frozenset(("Sequential", "Functional", "Model"))
# weighted layers whose output has their input's shape
SAME_SHAPE = frozenset(("BatchNormalization", "LayerNormalization", "Normalization", "PReLU",
                        "GroupNormalization", "UnitNormalization"))
MERGES = frozenset(("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
                     "Concatenate"))



def snake_case(name: str) -> str:
    """Keras' naming.to_snake_case: the path of a layer's variables in a .keras file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def pair(n: Node, key: str, default: int = 1, *, minimum: int = 1,
          value: Any = None) -> tuple[int, int]:
    """A layer's (height, width) hyper-parameter, one int or two in the config."""
    v = n.cfg.get(key) if value is None else value
    if v is None:
        return default, default
    return as_pair(v, f"layer {n.name!r}: {key}", minimum=minimum, scalar=True)


def activation(cfg: dict[str, Any]) -> str:
    a = cfg.get("activation", "linear")
    if isinstance(a, dict):  # a serialized function
        a = a.get("config", a.get("class_name", "custom"))
        if isinstance(a, dict):
            a = a.get("name", "custom")
    return str(a or "linear")


class Node:
    def __init__(self, spec: dict[str, Any], index: int) -> None:
        self.cls = str(spec.get("class_name", ""))
        self.cfg: dict[str, Any] = spec.get("config") or {}
        self.name = str(self.cfg.get("name") or spec.get("name") or f"layer_{index}")
        self.inputs: list[str] = []
        build = spec.get("build_config") or {}
        self.in_shape: list[Any] | None = build.get("input_shape")
        self.out_shape: list[Any] | None = None
        self.consumers: list[Node] = []
        self.var_path = ""


def _history(obj: Any, out: list[tuple[str, list[Any] | None]]) -> None:
    """(layer name, tensor shape) of each input in a Keras 3 inbound node (keras_history
    entries, at any depth); the shape is what Keras recorded for that tensor, or None."""
    if isinstance(obj, dict):
        cfg = obj.get("config") or {}
        hist = cfg.get("keras_history")
        if obj.get("class_name") == "__keras_tensor__" and isinstance(hist, list) and hist:
            shape = cfg.get("shape")
            out.append((str(hist[0]), list(shape) if isinstance(shape, list) else None))
            return
        for v in obj.values():
            _history(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _history(v, out)


def _inbound(spec: dict[str, Any]) -> tuple[list[tuple[str, list[Any] | None]], int]:
    """The inputs of a layer's first call as (layer name, recorded shape or None), and how
    many times the layer is called."""
    nodes = spec.get("inbound_nodes") or []
    found: list[tuple[str, list[Any] | None]] = []
    for node in nodes[:1]:
        if isinstance(node, dict):  # Keras 3
            _history(node, found)
        elif isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs]]
            found.extend((str(x[0]), None) for x in node if isinstance(x, list) and x)
    return found, len(nodes)


# ----------------------------------------------------------------------- shapes


def shape_hwc(shape: list[Any] | None, data_format: str) -> tuple[Any, Any, Any] | None:
    """(H, W, C) of a batched 4-D shape, or of a channels-last (N, L, C) sequence as the
    1 x L image MPS holds it (docs/layouts.md section 1, Conv1d); else None."""
    if shape is not None and len(shape) == 3 and data_format != "channels_first":
        return 1, shape[1], shape[2]
    if shape is None or len(shape) != 4:
        return None
    if data_format == "channels_first":
        return shape[2], shape[3], shape[1]
    return shape[1], shape[2], shape[3]


def conv_pads(padding: str, size: Any, k: int, s: int, d: int) -> tuple[int, int] | None:
    if padding == "valid":
        return 0, 0
    if padding != "same":
        return None
    return mf.same_pads(size if isinstance(size, int) else None, k, s, d, upper=True)


def transposed_pads(padding: str, k: int, s: int, d: int, op: int | None) -> tuple[int, int]:
    """Keras Conv2DTranspose padding as framework (pad_begin, pad_end) with output_padding 0
    (ONNX/PyTorch terms), from the padding Keras applies to the zero-dilated input (its JAX
    backend's rule, which matches TensorFlow)."""
    eff = (k - 1) * d + 1
    if padding == "valid":
        op = max(eff, s) - eff if op is None else op
        left, right = eff - 1, eff - 1 + op
    else:
        pad_len = s + eff - 2 if op is None else eff + eff % 2 - 2 + op
        left = min(pad_len // 2 + pad_len % 2, eff - 1)
        right = pad_len - left
    return eff - 1 - left, eff - 1 - right


def _out_shape(n: Node, shape: list[Any] | None) -> list[Any] | None:
    """Output shape of the layers whose geometry we need downstream; None if unknown."""
    if shape is None:
        return None
    c, cls = n.cfg, n.cls
    fmt = c.get("data_format", "channels_last")
    if cls in ("Conv1D", "SeparableConv1D"):
        return _sequence_conv_shape(n, shape)
    if cls in ("Conv2D", "DepthwiseConv2D", "Conv2DTranspose", "MaxPooling2D",
               "AveragePooling2D", "SeparableConv2D"):
        hwc = shape_hwc(shape, fmt)
        if hwc is None:
            return None
        k = pair(n, "kernel_size" if "kernel_size" in c else "pool_size", 2)
        s = pair(n, "strides", value=c.get("strides") or (k if "pool_size" in c else 1))
        d = pair(n, "dilation_rate")
        out = []
        for i in range(2):
            size = hwc[i]
            if not isinstance(size, int):
                out.append(None)
                continue
            if cls == "Conv2DTranspose":
                pb, pe = transposed_pads(c.get("padding", "valid"), k[i], s[i], d[i],
                                               pair(n, "output_padding", minimum=0)[i]
                                               if c.get("output_padding") else None)
                out.append(mf.transposed_out(size, k[i], s[i], d[i], (pb, pe), 0))
            else:
                pads = conv_pads(c.get("padding", "valid"), size, k[i], s[i], d[i])
                out.append(None if pads is None else mf.conv_out(size, k[i], s[i], d[i], pads))
        ch = {"Conv2D": c.get("filters"), "Conv2DTranspose": c.get("filters"),
              "SeparableConv2D": c.get("filters"),
              "DepthwiseConv2D": None if hwc[2] is None else hwc[2] * as_int(
                  c.get("depth_multiplier", 1), f"layer {n.name!r}: depth_multiplier",
                  minimum=1)}.get(cls, hwc[2])
        return [shape[0], out[0], out[1], ch] if fmt != "channels_first" else \
            [shape[0], ch, out[0], out[1]]
    if cls == "Flatten":
        rest = shape[1:]
        return [shape[0], math.prod(rest) if all(isinstance(v, int) for v in rest) else None]
    if cls == "Dense":
        return [*shape[:-1], c.get("units")]
    if cls == "Reshape":
        return [shape[0], *c.get("target_shape", [])]
    if cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        hwc = shape_hwc(shape, fmt)
        if hwc is None:
            return None
        if not c.get("keepdims", False):
            return [shape[0], hwc[2]]
        return [shape[0], 1, 1, hwc[2]] if fmt != "channels_first" else [shape[0], hwc[2], 1, 1]
    if cls in ("UpSampling2D", "ZeroPadding2D", "Cropping2D"):
        return _resized(n, shape)
    if cls in WEIGHTLESS or cls in SAME_SHAPE:
        return shape
    if cls in ("LSTM", "GRU", "SimpleRNN", "Bidirectional"):
        return _recurrent_shape(c, shape)
    return None


def _sequence_conv_shape(n: Node, shape: list[Any]) -> list[Any] | None:
    """Output shape (N, L', filters) of a Keras Conv1D / SeparableConv1D on (N, L, C)."""
    if len(shape) != 3:
        return None

    def one(key: str) -> int:
        v = n.cfg.get(key, 1)
        v = v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v
        return as_int(v, f"layer {n.name!r}: {key}", minimum=1)

    k, s, d = one("kernel_size"), one("strides"), one("dilation_rate")
    length = shape[1] if isinstance(shape[1], int) else None
    padding = n.cfg.get("padding", "valid")
    pads = ((k - 1) * d, 0) if padding == "causal" else conv_pads(padding, length, k, s, d)
    out = None if pads is None else mf.conv_out(length, k, s, d, pads)
    return [shape[0], out, n.cfg.get("filters")]


def _recurrent_shape(c: dict[str, Any], shape: list[Any]) -> list[Any] | None:
    """Output shape of a Keras RNN (or Bidirectional) on a (B, T, I) sequence: (B, T, H)
    with return_sequences, else (B, H); None for several outputs (return_state)."""
    inner = (c.get("layer") or {}).get("config") or c
    units = inner.get("units")
    if len(shape) != 3 or not isinstance(units, int) or inner.get("return_state"):
        return None
    if "layer" in c:
        mode = c.get("merge_mode", "concat")
        if mode is None:
            return None
        units *= 2 if mode == "concat" else 1
    return [*shape[:2], units] if inner.get("return_sequences") else [shape[0], units]


def _resized(n: Node, shape: list[Any]) -> list[Any] | None:
    """Output shape of an UpSampling2D, ZeroPadding2D or Cropping2D (channels_last)."""
    if len(shape) != 4 or n.cfg.get("data_format", "channels_last") != "channels_last":
        return None
    key = {"UpSampling2D": "size", "ZeroPadding2D": "padding", "Cropping2D": "cropping"}
    v = n.cfg.get(key[n.cls], 2 if n.cls == "UpSampling2D" else 1)
    try:
        if isinstance(v, int):
            v = [v, v] if n.cls == "UpSampling2D" else [[v, v], [v, v]]
        if n.cls == "UpSampling2D":
            f = [int(v[0]), int(v[1])]
            change = [lambda s, i=i: s * f[i] for i in range(2)]
        else:
            pairs = [[int(p), int(p)] if isinstance(p, int) else [int(p[0]), int(p[1])]
                     for p in v]
            sign = 1 if n.cls == "ZeroPadding2D" else -1
            change = [lambda s, i=i: s + sign * sum(pairs[i]) for i in range(2)]
    except (TypeError, ValueError, IndexError):
        return None
    hw = [change[i](shape[1 + i]) if isinstance(shape[1 + i], int) else None
          for i in range(2)]
    return [shape[0], *hw, shape[3]]


def _merged_shape(n: Node, shapes: list[list[Any] | None]) -> list[Any] | None:
    """Output shape of merge layer ``n`` from its input shapes (Keras 2 files record none):
    element-wise merges keep equal shapes, Concatenate adds up its axis."""
    if n.cls not in MERGES or any(s is None for s in shapes):
        return None
    first = list(shapes[0])  # type: ignore[arg-type]
    if n.cls != "Concatenate":
        return first if all(list(s) == first for s in shapes) else None  # type: ignore[arg-type]
    axis = n.cfg.get("axis", -1)
    if not isinstance(axis, int) or not -len(first) <= axis < len(first) or \
            any(len(s) != len(first) for s in shapes):  # type: ignore[arg-type]
        return None
    axis %= len(first)
    sizes = [s[axis] for s in shapes]  # type: ignore[index]
    first[axis] = sum(sizes) if all(isinstance(v, int) for v in sizes) else None
    return first


# ----------------------------------------------------------------------- the model


def _known(recorded: Any, propagated: Any) -> Any:
    """``recorded`` with its None dims taken from ``propagated`` (of the same rank)."""
    if not isinstance(recorded, list) or not isinstance(propagated, list) or \
            len(recorded) != len(propagated) or any(isinstance(v, list) for v in recorded):
        return recorded
    return [p if r is None else r for r, p in zip(recorded, propagated)]


def _fix_dims(n: Node, dims: list[int], where: str) -> list[Any]:
    """``dims`` checked against the input's recorded shape (its rank, its fixed dims)."""
    have = n.in_shape
    if isinstance(have, list) and have and not isinstance(have[0], list):
        if len(have) != len(dims):
            raise ValueError(f"input_dims[{where!r}] gives {len(dims)} dims {dims}, but input "
                             f"{where!r} has rank {len(have)} {have}")
        for i, (h, d) in enumerate(zip(have, dims)):
            if isinstance(h, int) and h > 0 and h != d and i > 0:
                raise ValueError(f"input_dims[{where!r}] dim {i} is {d}, but the model fixes "
                                 f"it to {h}")
    return list(dims)


def graph(config: dict[str, Any], plan: Plan,
          input_dims: dict[str, tuple[int, ...]] | None = None) -> list[Node]:
    """The layers of a Keras model config in order, with their input and output shapes
    propagated; ``input_dims`` (by input layer name, NHWC) replaces the recorded dims of
    the model's inputs first."""
    top = config
    if "class_name" not in top and "config" not in top:
        raise ValueError("the Keras config names no model class")
    cls = top.get("class_name")
    cfg = top.get("config") or {}
    if cls not in MODELS or not isinstance(cfg.get("layers"), list):
        raise ValueError(f"the Keras model is a {cls!r}: only Sequential and functional "
                         "models are read")
    nodes = [Node(spec, i) for i, spec in enumerate(cfg["layers"])]
    by_name = {n.name: n for n in nodes}
    if cls == "Sequential":
        for a, b in zip(nodes, nodes[1:]):
            b.inputs = [a.name]
    else:
        for spec, n in zip(cfg["layers"], nodes):
            found, calls = _inbound(spec)
            n.inputs = [name for name, _ in found]
            if n.in_shape is None and len(found) == 1:  # a legacy .h5 written by Keras 3
                n.in_shape = found[0][1]  # has no build_config, but records tensor shapes
            if calls > 1:
                plan.assumptions.append(f"layer {n.name!r} is called {calls} times; only its "
                                        "first call's context is used")
    for n in nodes:
        for i in n.inputs:
            if i in by_name:
                by_name[i].consumers.append(n)
    # variable paths in a .keras archive: layers/<snake_case(class)>[_k]
    used: dict[str, int] = {}
    for n in nodes:
        base = snake_case(n.cls)
        if base in used:
            used[base] += 1
            n.var_path = f"layers/{base}_{used[base]}"
        else:
            used[base] = 0
            n.var_path = f"layers/{base}"
    # shapes: Keras 3 records each layer's input shape; Keras 2 files need propagating
    first = cfg.get("build_input_shape")
    if first is None and nodes:
        first = nodes[0].cfg.get("batch_input_shape")
    dims = dict(input_dims or {})
    inputs = [n.name for n in nodes if n.cls == "InputLayer"] or [nodes[0].name] if nodes \
        else []
    unknown = [k for k in dims if k not in inputs]
    if unknown:
        raise ValueError(f"input_dims names {unknown[0]!r}, which is not an input of the "
                         f"model; its inputs are {', '.join(map(repr, inputs)) or 'none'}")
    if nodes and nodes[0].cls != "InputLayer" and nodes[0].name in dims:
        if nodes[0].in_shape is None:
            nodes[0].in_shape = first
        first = _fix_dims(nodes[0], list(dims[nodes[0].name]), nodes[0].name)
        nodes[0].in_shape = first
    for n in nodes:
        if n.cls == "InputLayer":
            n.in_shape = n.cfg.get("batch_shape") or n.cfg.get("batch_input_shape")
            if n.name in dims:
                n.in_shape = _fix_dims(n, list(dims[n.name]), n.name)
            n.out_shape = n.in_shape
            continue
        srcs = [by_name[i] for i in n.inputs if i in by_name]
        if n.cls in MERGES:  # build_config records a list of input shapes, if any
            given = n.in_shape if isinstance(n.in_shape, list) and n.in_shape and \
                all(isinstance(v, list) for v in n.in_shape) else None
            n.out_shape = _merged_shape(n, given or [x.out_shape for x in srcs])
            continue
        if n.in_shape is None:
            if len(srcs) == 1:
                n.in_shape = srcs[0].out_shape
            elif not srcs and n is nodes[0]:
                n.in_shape = first
        elif len(srcs) == 1:  # a recorded shape's unknown dims, from the propagated one
            n.in_shape = _known(n.in_shape, srcs[0].out_shape)
        n.out_shape = _out_shape(n, n.in_shape)
    return nodes
