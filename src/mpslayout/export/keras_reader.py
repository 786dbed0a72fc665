"""Reads a Keras model without TensorFlow: a Keras 3 ``.keras`` archive (config.json and
model.weights.h5 in a zip) or a legacy Keras 2 / tf.keras ``.h5`` file (model_config
attribute and model_weights group), through h5py. The saved config gives what the
weights do not: the Flatten before a Dense and the shape it flattens, a Reshape after a
Dense, each convolution's padding, and which BatchNormalization follows which layer.

Sequential and functional models of Conv2D, Conv2DTranspose, DepthwiseConv2D, Dense and
BatchNormalization are exported; nested models and other weighted layers are listed as
unsupported. Keras semantics: TF "same" padding, Flatten in H, W, C order, Reshape targets
in H, W, C order (channels_last). Needs h5py (``pip install mpslayout[keras]``).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import keras_rnn
from . import manifest as mf
from .attrs import as_float, as_int, as_pair
from .layers import (
    Layer,
    Overrides,
    Plan,
    SkipLayer,
    TensorRef,
    batch_norm_fold,
    const_tensor,
    folded_bias,
    is_float,
    reshape_layer,
)

_MAX_CONFIG = 64 << 20
_WEIGHTS_MEMBER = "model.weights.h5"

# layers MPS runs without weights, or that only move data
_WEIGHTLESS = frozenset((
    "InputLayer", "Flatten", "Reshape", "Activation", "ReLU", "LeakyReLU", "ELU",
    "Softmax", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "UpSampling2D", "ZeroPadding2D", "Cropping2D", "Add", "Subtract", "Multiply", "Average",
    "Maximum", "Minimum", "Concatenate", "Rescaling", "Identity",
))
# element-wise layers a Dense output may pass through on its way to a Reshape
_POINTWISE = frozenset(("Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "GaussianNoise",
                        "GaussianDropout", "Identity"))
_MODELS = frozenset(("Sequential", "Functional", "Model"))


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "reading Keras models needs the h5py package: pip install mpslayout[keras]"
        ) from None
    return h5py


def snake_case(name: str) -> str:
    """Keras' naming.to_snake_case: the path of a layer's variables in a .keras file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _pair(n: _Node, key: str, default: int = 1, *, minimum: int = 1,
          value: Any = None) -> tuple[int, int]:
    """A layer's (height, width) hyper-parameter, one int or two in the config."""
    v = n.cfg.get(key) if value is None else value
    if v is None:
        return default, default
    return as_pair(v, f"layer {n.name!r}: {key}", minimum=minimum, scalar=True)


def _activation(cfg: dict[str, Any]) -> str:
    a = cfg.get("activation", "linear")
    if isinstance(a, dict):  # a serialized function
        a = a.get("config", a.get("class_name", "custom"))
        if isinstance(a, dict):
            a = a.get("name", "custom")
    return str(a or "linear")


class _Node:
    def __init__(self, spec: dict[str, Any], index: int) -> None:
        self.cls = str(spec.get("class_name", ""))
        self.cfg: dict[str, Any] = spec.get("config") or {}
        self.name = str(self.cfg.get("name") or spec.get("name") or f"layer_{index}")
        self.inputs: list[str] = []
        build = spec.get("build_config") or {}
        self.in_shape: list[Any] | None = build.get("input_shape")
        self.out_shape: list[Any] | None = None
        self.consumers: list[_Node] = []
        self.var_path = ""


def _history(obj: Any, out: list[str]) -> None:
    """Layer names in a Keras 3 inbound node (keras_history entries, at any depth)."""
    if isinstance(obj, dict):
        hist = (obj.get("config") or {}).get("keras_history")
        if obj.get("class_name") == "__keras_tensor__" and isinstance(hist, list) and hist:
            out.append(str(hist[0]))
            return
        for v in obj.values():
            _history(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _history(v, out)


def _inbound(spec: dict[str, Any]) -> tuple[list[str], int]:
    nodes = spec.get("inbound_nodes") or []
    names: list[str] = []
    for node in nodes[:1]:
        if isinstance(node, dict):  # Keras 3
            _history(node, names)
        elif isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs]]
            names.extend(str(x[0]) for x in node if isinstance(x, list) and x)
    return names, len(nodes)


# ----------------------------------------------------------------------- shapes


def _hwc(shape: list[Any] | None, data_format: str) -> tuple[Any, Any, Any] | None:
    """(H, W, C) of a batched 4-D shape, or None."""
    if shape is None or len(shape) != 4:
        return None
    if data_format == "channels_first":
        return shape[2], shape[3], shape[1]
    return shape[1], shape[2], shape[3]


def _conv_pads(padding: str, size: Any, k: int, s: int, d: int) -> tuple[int, int] | None:
    if padding == "valid":
        return 0, 0
    if padding != "same":
        return None
    return mf.same_pads(size if isinstance(size, int) else None, k, s, d, upper=True)


def _transposed_pads(padding: str, k: int, s: int, d: int, op: int | None) -> tuple[int, int]:
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


def _out_shape(n: _Node, shape: list[Any] | None) -> list[Any] | None:
    """Output shape of the layers whose geometry we need downstream; None if unknown."""
    if shape is None:
        return None
    c, cls = n.cfg, n.cls
    fmt = c.get("data_format", "channels_last")
    if cls in ("Conv2D", "DepthwiseConv2D", "Conv2DTranspose", "MaxPooling2D",
               "AveragePooling2D"):
        hwc = _hwc(shape, fmt)
        if hwc is None:
            return None
        k = _pair(n, "kernel_size" if "kernel_size" in c else "pool_size", 2)
        s = _pair(n, "strides", value=c.get("strides") or (k if "pool_size" in c else 1))
        d = _pair(n, "dilation_rate")
        out = []
        for i in range(2):
            size = hwc[i]
            if not isinstance(size, int):
                out.append(None)
                continue
            if cls == "Conv2DTranspose":
                pb, pe = _transposed_pads(c.get("padding", "valid"), k[i], s[i], d[i],
                                               _pair(n, "output_padding", minimum=0)[i]
                                               if c.get("output_padding") else None)
                out.append(mf.transposed_out(size, k[i], s[i], d[i], (pb, pe), 0))
            else:
                pads = _conv_pads(c.get("padding", "valid"), size, k[i], s[i], d[i])
                out.append(None if pads is None else mf.conv_out(size, k[i], s[i], d[i], pads))
        ch = {"Conv2D": c.get("filters"), "Conv2DTranspose": c.get("filters"),
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
        hwc = _hwc(shape, fmt)
        return None if hwc is None else [shape[0], hwc[2]]
    if cls in _WEIGHTLESS or cls == "BatchNormalization":
        if cls in ("UpSampling2D", "ZeroPadding2D", "Cropping2D", "Concatenate", "Add",
                   "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
            return None  # not needed for any exported layer's geometry
        return shape
    return None


# ----------------------------------------------------------------------- files


class _Source:
    """The config and where each weight dataset is. libhdf5 runs only in a child process
    (h5probe.py) with a timeout; weights are then memory-mapped from the file's bytes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.h5py = _h5py()
        with open(path, "rb") as f:
            head = f.read(4)
        self.zipped = head.startswith(b"PK") or path.lower().endswith(".keras")
        self.base: int | None = 0  # file offset of the HDF5 data (None: compressed in a zip)
        if self.zipped:
            try:
                with zipfile.ZipFile(path) as zf:
                    names = set(zf.namelist())
                    if "config.json" not in names or _WEIGHTS_MEMBER not in names:
                        raise ValueError(f"{path} is a zip without config.json and "
                                         f"{_WEIGHTS_MEMBER}: not a Keras 3 .keras file")
                    info = zf.getinfo("config.json")
                    if info.file_size > _MAX_CONFIG:
                        raise ValueError(f"{path}: config.json is {info.file_size} bytes, "
                                         "too large for a model config")
                    self.config = json.loads(zf.read("config.json").decode("utf-8"))
                    self.base = _stored_member_offset(path, zf.getinfo(_WEIGHTS_MEMBER))
            except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError,
                    KeyError) as e:
                raise ValueError(f"cannot read {path} as a .keras archive: {e}") from None
            self.meta = _probe(path, _WEIGHTS_MEMBER)
        else:
            self.meta = _probe(path)
            raw = self.meta["config"]
            if raw is None:
                raise ValueError(
                    f"{path} has no model_config: a weights-only file has no graph to "
                    "export from (save the whole model, model.save('m.keras'))"
                )
            try:
                self.config = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: model_config is not JSON: {e}") from None

    def datasets(self, node: _Node) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """(h5 path, shape, dtype) of a layer's variables, in the layer's weight order."""
        table = self.meta["datasets"]
        if self.zipped:
            prefix = f"{node.var_path}/vars/"
            keys = [p[len(prefix):] for p in table if p.startswith(prefix)]
            keys = sorted((k for k in keys if "/" not in k),
                          key=lambda k: int(k) if k.isdigit() else 1 << 30)
            paths = [prefix + k for k in keys]
        else:
            names = self.meta["weight_names"].get(node.name)
            if names is None:
                return []
            paths = [f"model_weights/{node.name}/{n}" for n in names]
        out = []
        for p in paths:
            if p not in table:
                raise ValueError(f"{self.path}: weight {p!r} of layer {node.name!r} is "
                                 "missing")
            shape, dt, _ = table[p]
            try:
                dtype = np.dtype(dt)
            except TypeError:
                raise ValueError(f"{self.path}: weight {p!r} has dtype {dt!r}") from None
            out.append((p, tuple(shape), dtype))
        return out

    def ref(self, h5_path: str, shape: tuple[int, ...], dtype: np.dtype) -> TensorRef:
        offset = self.meta["datasets"][h5_path][2]
        n = math.prod(shape)
        if n == 0:
            return TensorRef(h5_path, shape, dtype, lambda: np.empty(shape, dtype))
        if offset is not None and self.base is not None:
            start, size = self.base + offset, os.path.getsize(self.path)
            if start + n * dtype.itemsize > size:
                raise ValueError(f"{self.path}: weight {h5_path!r} needs bytes {start}.."
                                 f"{start + n * dtype.itemsize}, past the end of the file "
                                 f"({size} bytes): truncated?")
            return TensorRef(h5_path, shape, dtype, lambda: np.memmap(
                self.path, dtype=dtype, mode="r", offset=start, shape=shape))

        def opener() -> np.ndarray:  # chunked, filtered or compressed: libhdf5 must decode
            zf = zipfile.ZipFile(self.path) if self.zipped else None
            try:
                src = zf.open(_WEIGHTS_MEMBER) if zf is not None else self.path
                with self.h5py.File(src, "r") as f:
                    return np.asarray(f[h5_path][()])
            finally:
                if zf is not None:
                    zf.close()

        return TensorRef(h5_path, shape, dtype, opener)


def _stored_member_offset(path: str, info: zipfile.ZipInfo) -> int | None:
    """File offset of a zip member's bytes when it is stored uncompressed, else None."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: the local header of {info.filename} is corrupt")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _probe(path: str, member: str | None = None) -> dict[str, Any]:
    """h5probe.py's answer for ``path`` (a zip member of it), run in a child process."""
    timeout = float(os.environ.get("MPSLAYOUT_HDF5_TIMEOUT", "30"))
    cmd = [sys.executable, "-c", _PROBE_SOURCE, path, *([member] if member else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except OSError:  # no interpreter to start (an embedded Python): read it here, unguarded
        return _probe_here(path, member)
    except subprocess.TimeoutExpired:
        raise ValueError(
            f"reading the HDF5 structure of {path} did not finish in {timeout:g} s "
            "(libhdf5 loops on some corrupt files; MPSLAYOUT_HDF5_TIMEOUT sets the limit)"
        ) from None
    what = f"{path} ({member})" if member else path
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise ValueError(f"reading the HDF5 structure of {what} failed (exit status "
                         f"{proc.returncode}{': ' + tail[0] if tail else ''}): a corrupt file?")
    try:
        meta = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ValueError(f"reading the HDF5 structure of {what} gave no answer") from None
    if "error" in meta:
        raise ValueError(f"cannot read {what} as HDF5 (truncated or not a Keras file?): "
                         f"{meta['error']}")
    return meta


def _probe_here(path: str, member: str | None) -> dict[str, Any]:
    from . import h5probe

    try:
        meta = h5probe.probe_file(path, member)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path} as HDF5 (truncated or not a Keras file?): "
                         f"{type(e).__name__}: {e}") from None
    return meta


_PROBE_SOURCE = (Path(__file__).with_name("h5probe.py")).read_text(encoding="utf-8")


# ----------------------------------------------------------------------- the model


def _graph(config: dict[str, Any], plan: Plan) -> list[_Node]:
    top = config
    if "class_name" not in top and "config" not in top:
        raise ValueError("the Keras config names no model class")
    cls = top.get("class_name")
    cfg = top.get("config") or {}
    if cls not in _MODELS or not isinstance(cfg.get("layers"), list):
        raise ValueError(f"the Keras model is a {cls!r}: only Sequential and functional "
                         "models are read")
    nodes = [_Node(spec, i) for i, spec in enumerate(cfg["layers"])]
    by_name = {n.name: n for n in nodes}
    if cls == "Sequential":
        for a, b in zip(nodes, nodes[1:]):
            b.inputs = [a.name]
    else:
        for spec, n in zip(cfg["layers"], nodes):
            n.inputs, calls = _inbound(spec)
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
    for n in nodes:
        if n.cls == "InputLayer":
            n.in_shape = n.cfg.get("batch_shape") or n.cfg.get("batch_input_shape")
        elif n.in_shape is None:
            srcs = [by_name[i] for i in n.inputs if i in by_name]
            if len(srcs) == 1:
                n.in_shape = srcs[0].out_shape
            elif not srcs and n is nodes[0]:
                n.in_shape = first
        n.out_shape = n.in_shape if n.cls == "InputLayer" else _out_shape(n, n.in_shape)
    return nodes


class _Reader:
    def __init__(self, src: _Source, fold_bn: bool, over: Overrides, plan: Plan) -> None:
        self.src, self.fold_bn, self.over, self.plan = src, fold_bn, over, plan
        self.nodes = _graph(src.config, plan)
        self.folded: set[str] = set()

    def vars(self, n: _Node) -> dict[str, TensorRef]:
        """A layer's variables by role (kernel, bias, gamma, beta, moving_mean, ...)."""
        found = self.src.datasets(n)
        if self.src.zipped:  # .keras: vars/0, vars/1, ... in the layer's build order
            if n.cls == "BatchNormalization":
                roles = ((["gamma"] if n.cfg.get("scale", True) else [])
                         + (["beta"] if n.cfg.get("center", True) else [])
                         + ["moving_mean", "moving_variance"])
            else:
                roles = ["kernel", "bias"]
        else:  # legacy h5: names like conv2d/kernel:0, depthwise_conv2d/depthwise_kernel:0
            roles = [p.rsplit("/", 1)[-1].split(":")[0].replace("depthwise_kernel", "kernel")
                     for p, _, _ in found]
        refs = {}
        for role, (p, shape, dt) in zip(roles, found):
            if not is_float(dt):
                raise SkipLayer(f"variable {p!r} is {dt}, not floating point")
            refs[role] = self.src.ref(p, shape, dt)
        return refs

    def run(self) -> None:
        for n in self.nodes:
            if n.name in self.folded:
                continue
            handler = {"Conv2D": self.conv, "DepthwiseConv2D": self.conv,
                       "Conv2DTranspose": self.transposed, "Dense": self.dense,
                       "BatchNormalization": self.batch_norm}.get(n.cls)
            if n.cls in keras_rnn.CLASSES or n.cls == "Bidirectional":
                handler = lambda n: keras_rnn.read_layer(self, n)  # noqa: E731
            if handler is not None:
                try:
                    handler(n)
                except SkipLayer as e:
                    self.plan.skip(n.name, n.cls, str(e))
            elif n.cls in _MODELS:
                self.plan.refuse(n.name, n.cls, "a nested model: export it on its own")
            elif n.cls not in _WEIGHTLESS:
                self.plan.refuse(n.name, n.cls, "no MPS layer mapping known to mpslayout")

    def sole_consumer(self, n: _Node) -> _Node | None:
        return n.consumers[0] if len(n.consumers) == 1 else None

    def fold(self, n: _Node, o: int) -> tuple[_Node, np.ndarray | None, np.ndarray | None]:
        """A BatchNormalization right after ``n`` (linear activation, single use): its
        per-channel scale and shift, float64, when folding is on."""
        bn = self.sole_consumer(n)
        if not self.fold_bn or bn is None or bn.cls != "BatchNormalization" or \
                _activation(n.cfg) != "linear":
            return n, None, None
        v = self.vars(bn)
        if "moving_mean" not in v or "moving_variance" not in v:
            return n, None, None
        if v["moving_mean"].shape != (o,):
            return n, None, None
        scale, shift = batch_norm_fold(
            v["gamma"].load() if "gamma" in v else np.ones(o),
            v["beta"].load() if "beta" in v else np.zeros(o),
            v["moving_mean"].load(), v["moving_variance"].load(),
            eps=as_float(bn.cfg.get("epsilon", 1e-3), f"layer {bn.name!r}: epsilon"),
            where=f"layer {bn.name!r}")
        self.folded.add(bn.name)
        return bn, scale, shift

    def source(self, n: _Node, refs: dict[str, TensorRef], last: _Node) -> dict[str, Any]:
        s: dict[str, Any] = {"format": "keras", "layer": n.name, "op": n.cls,
                             "weights": refs["kernel"].name,
                             "bias": refs["bias"].name if "bias" in refs else None,
                             "activation": _activation(n.cfg)}
        if last is not n:
            s["folded_batch_norm"] = last.name
        return s

    def finish(self, layer: Layer, n: _Node, last: _Node) -> None:
        act = layer.source["activation"]
        if act != "linear":
            layer.notes.append(f"fused activation {act!r}: apply it after this layer (an MPS "
                               "neuron)")
        if last is not n:
            layer.notes.append(f"BatchNormalization {last.name!r} folded into the weights "
                               "and bias")
        self.plan.layers.append(layer)

    def conv(self, n: _Node) -> None:
        c = n.cfg
        fmt = c.get("data_format", "channels_last")
        refs = self.vars(n)
        if "kernel" not in refs or len(refs["kernel"].shape) != 4:
            raise SkipLayer("no 4-D kernel found")
        kh, kw, a, b = refs["kernel"].shape
        s, d = _pair(n, "strides"), _pair(n, "dilation_rate")
        hwc = _hwc(n.in_shape, fmt)
        size = (None, None) if hwc is None else (hwc[0], hwc[1])
        py = _conv_pads(c.get("padding", "valid"), size[0], kh, s[0], d[0])
        px = _conv_pads(c.get("padding", "valid"), size[1], kw, s[1], d[1])
        if py is None or px is None:
            raise SkipLayer(f"padding={c.get('padding')!r} with strides {list(s)} needs the input "
                        "size, which the saved config does not give")
        if n.cls == "DepthwiseConv2D":
            cin, m = a, b
            o, groups = cin * m, cin
        else:
            groups = as_int(c.get("groups", 1), f"layer {n.name!r}: groups", minimum=1)
            cin, o = a * groups, b
        last, scale, shift = self.fold(n, o)
        out_hwc = _hwc(n.out_shape, fmt)
        geo = mf.conv_geometry(kh=kh, kw=kw, cin=cin, cout=o, groups=groups, stride=s,
                               dilation=d, pads=(py[0], px[0], py[1], px[1]), in_hw=size,
                               out_hw=(None, None) if out_hwc is None else out_hwc[:2])
        src = self.source(n, refs, last)
        bias = folded_bias(refs.get("bias"), o, n.name, scale, shift)
        if n.cls == "Conv2D":
            w_scale = None if scale is None else scale.reshape(1, 1, 1, o)
            layer = Layer(n.name, "convolution", "conv", src, refs["kernel"], bias,
                          {"layout": "HWIO", "groups": groups}, geo, w_scale)
        else:
            w_scale = None if scale is None else scale.reshape(1, 1, cin, m)
            if m == 1:
                layer = Layer(n.name, "depthwise", "depthwise", src, refs["kernel"], bias,
                              {"layout": "HWCM"}, geo, w_scale)
            else:
                geo["groups"] = 1
                layer = Layer(n.name, "convolution", "expand_depthwise", src, refs["kernel"],
                              bias, {"layout": "HWCM"}, geo, w_scale)
                layer.notes.append(f"depthwise with depth_multiplier {m}: MPS depthwise takes "
                                   "multiplier 1 only, so this is an ordinary convolution "
                                   "whose weights are zero outside each channel")
        self.finish(layer, n, last)

    def transposed(self, n: _Node) -> None:
        c = n.cfg
        fmt = c.get("data_format", "channels_last")
        refs = self.vars(n)
        if "kernel" not in refs or len(refs["kernel"].shape) != 4:
            raise SkipLayer("no 4-D kernel found")
        kh, kw, o, cin = refs["kernel"].shape
        s, d = _pair(n, "strides"), _pair(n, "dilation_rate")
        op = _pair(n, "output_padding", minimum=0) if c.get("output_padding") is not None \
            else (None, None)
        padding = c.get("padding", "valid")
        pt, pb = _transposed_pads(padding, kh, s[0], d[0], op[0])
        pl, pr = _transposed_pads(padding, kw, s[1], d[1], op[1])
        hwc, out_hwc = _hwc(n.in_shape, fmt), _hwc(n.out_shape, fmt)
        last, scale, shift = self.fold(n, o)
        geo = mf.transposed_geometry(
            kh=kh, kw=kw, cin=cin, cout=o, groups=1, stride=s, dilation=d,
            pads=(pt, pl, pb, pr), output_padding=(0, 0),
            in_hw=(None, None) if hwc is None else hwc[:2],
            out_hw=(None, None) if out_hwc is None else out_hwc[:2])
        w_scale = None if scale is None else scale.reshape(1, 1, o, 1)
        layer = Layer(n.name, "transposed", "transposed", self.source(n, refs, last),
                      refs["kernel"], folded_bias(refs.get("bias"), o, n.name, scale, shift),
                      {"layout": "HWOI"}, geo, w_scale)
        layer.notes.append(f"Keras padding={padding!r}"
                           + (f", output_padding={list(op)}" if op[0] is not None else "")
                           + " as framework padding (top, left, bottom, right) "
                           f"= {(pt, pl, pb, pr)}")
        self.finish(layer, n, last)

    def flatten_source(self, n: _Node) -> tuple[tuple[int, int, int] | None, str]:
        """(H, W, C) flattened into Dense ``n`` and the status plain/image/unknown/pixel."""
        shape = n.in_shape
        if shape is not None and len(shape) == 4:
            return None, "pixel"  # a Dense on every pixel: a 1x1 convolution
        prev = [x for x in self.nodes if x.name in n.inputs]
        while len(prev) == 1 and prev[0].cls in _POINTWISE:
            prev = [x for x in self.nodes if x.name in prev[0].inputs]
        if len(prev) == 1 and prev[0].cls == "Flatten":
            hwc = _hwc(prev[0].in_shape, prev[0].cfg.get("data_format", "channels_last"))
            if prev[0].in_shape is not None and len(prev[0].in_shape) == 2:
                return None, "plain"
            if hwc is None or not all(isinstance(v, int) for v in hwc):
                return None, "unknown"
            return (int(hwc[0]), int(hwc[1]), int(hwc[2])), "image"
        if shape is not None and len(shape) == 2:
            return None, "plain"
        return None, "unknown" if shape is None else "plain"

    def dense(self, n: _Node) -> None:
        refs = self.vars(n)
        if "kernel" not in refs or len(refs["kernel"].shape) != 2:
            raise SkipLayer("no 2-D kernel found")
        k, o = refs["kernel"].shape
        hwc, status = self.flatten_source(n)
        given = self.over.get("input_shapes", [n.name])
        if given is not None:
            hwc, status = (given[1], given[2], given[0]), "image"
        if status == "unknown":
            raise SkipLayer(f"the shape of the image flattened into it is not known; pass "
                        f"--input-shape {n.name}=C,H,W")
        if hwc is not None and math.prod(hwc) != k:
            raise SkipLayer(f"the image flattened into it is (H, W, C)={hwc}, {math.prod(hwc)} "
                        f"values, but its kernel has {k} inputs")
        last, scale, shift = self.fold(n, o)
        src = self.source(n, refs, last)
        bias = folded_bias(refs.get("bias"), o, n.name, scale, shift)
        w_scale = None if scale is None else scale.reshape(1, o)
        params: dict[str, Any] = {"layout": "IO"}
        if status == "pixel":
            h, w = n.in_shape[1], n.in_shape[2]  # type: ignore[index]
            geo = mf.conv_geometry(kh=1, kw=1, cin=k, cout=o, groups=1, stride=(1, 1),
                                   dilation=(1, 1), pads=(0, 0, 0, 0), in_hw=(h, w))
            layer = Layer(n.name, "convolution", "fc", src, refs["kernel"], bias, params, geo,
                          w_scale)
            layer.notes.append("a Dense on every pixel of an image: a 1x1 convolution")
            self.finish(layer, n, last)
            return
        if hwc is not None:
            params.update(input_shape=hwc, flatten="HWC")
        geo = mf.fc_geometry(n_in=k, n_out=o, source=hwc, flatten="HWC")
        reshape = self.over.get("reshapes", [n.name])
        node_name = None
        if reshape is None:
            nxt = self.sole_consumer(last)
            while nxt is not None and nxt.cls in _POINTWISE:
                nxt = self.sole_consumer(nxt)
            target = (nxt.cfg.get("target_shape") if nxt is not None and nxt.cls == "Reshape"
                      else None)
            if nxt is not None and target is not None and len(target) == 3 and \
                    math.prod(target) == o:
                reshape = (int(target[0]), int(target[1]), int(target[2]))
                node_name = nxt.name
        elif math.prod(reshape) != o:
            raise ValueError(f"reshapes[{n.name!r}]={reshape} holds {math.prod(reshape)} "
                             f"values but {n.name!r} has {o} outputs")
        if reshape is None:
            layer = Layer(n.name, "fully_connected", "fc", src, refs["kernel"], bias, params,
                          geo, w_scale)
        else:
            layer = reshape_layer(n.name, src, refs["kernel"], bias, params, geo,
                                  reshape, "HWC", node_name, w_scale)
        self.finish(layer, n, last)

    def batch_norm(self, n: _Node) -> None:
        refs = self.vars(n)
        if "moving_mean" not in refs or "moving_variance" not in refs:
            raise SkipLayer("no moving_mean/moving_variance found")
        c = math.prod(refs["moving_mean"].shape)
        axis = n.cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        rank = len(n.in_shape) if n.in_shape is not None else None
        if axis not in (-1, 1, 3) or (axis == 1 and rank == 4) or (axis == 3 and rank != 4):
            raise SkipLayer(f"normalizes axis {axis}, not the channels of a channels_last image")
        tensors = {
            "gamma": refs.get("gamma") or const_tensor(f"{n.name}:gamma", np.ones(c, np.float32)),
            "beta": refs.get("beta") or const_tensor(f"{n.name}:beta", np.zeros(c, np.float32)),
            "mean": refs["moving_mean"], "variance": refs["moving_variance"],
        }
        hwc = _hwc(n.in_shape, "channels_last")
        h, w = (1, 1) if rank == 2 else ((None, None) if hwc is None else hwc[:2])
        geo = {"input_channels": c, "output_channels": c,
               "epsilon": as_float(n.cfg.get("epsilon", 1e-3), f"layer {n.name!r}: epsilon"),
               "input_shape": mf.image(h, w, c), "output_shape": mf.image(h, w, c)}
        source = {"format": "keras", "layer": n.name, "op": n.cls, "weights": None,
                  "bias": None, "tensors": {k: v.name for k, v in tensors.items()}}
        layer = Layer(n.name, "batch_normalization", "batch_norm", source, geometry=geo,
                      tensors=tensors)
        if self.fold_bn:
            layer.notes.append("not folded: it does not directly follow a single-use layer "
                               "with a linear activation")
        self.plan.layers.append(layer)


def read(path: str, *, fold_bn: bool, overrides: Overrides) -> Plan:
    src = _Source(path)
    plan = Plan("keras")
    plan.assumptions.append("Keras semantics: kernels HWIO / HWOI / HWCM, TF 'same' padding, "
                            "Flatten in H, W, C order, Reshape targets in H, W, C order")
    reader = _Reader(src, fold_bn, overrides, plan)
    try:
        reader.run()
    except OSError as e:
        raise ValueError(f"cannot read the weights of {path} (truncated?): {e}") from None
    return plan
