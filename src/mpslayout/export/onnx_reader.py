"""Reads an ONNX model into an export plan, using the graph for what the weights alone do
not say: the (C, H, W) a fully connected layer reads after a Flatten, the shape of a
Reshape after it, the padding of every convolution, a DepthToSpace after a convolution
(a sub-pixel convolution), and which BatchNormalization follows which layer.

Initializers are read lazily: inline ones as views of the parsed protobuf, external ones
as memory maps of files that must lie inside the model's folder (absolute paths, ``..``
and symlinks leading out of it are refused). Needs the ``onnx`` package
(``pip install mpslayout[onnx]``).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from . import manifest as mf
from . import onnx_rnn
from .attrs import as_float, as_int, as_pair, as_text
from .layers import (
    Layer,
    Overrides,
    Plan,
    SkipLayer,
    TensorRef,
    batch_norm_fold,
    folded_bias,
    is_float,
    reshape_layer,
)

# ops with one data input that act element by element: a channel permutation commutes
# with them, and a layer's output may pass through them on its way to a Reshape
POINTWISE = frozenset((
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid",
    "HardSwish", "Softplus", "Softsign", "Clip", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Erf", "Gelu", "Mish", "ThresholdedRelu", "Identity", "Dropout", "Cast",
    "Floor", "Ceil", "Round", "Sign",
))
# ops MPS runs without weights (neurons, pools, arithmetic, resampling)
WEIGHTLESS = POINTWISE | frozenset((
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Add", "Sub",
    "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow", "Concat", "Softmax", "LogSoftmax",
    "Resize", "Upsample", "Pad", "LRN", "SpaceToDepth", "ReduceMean", "ReduceMax",
    "ReduceSum", "ArgMax", "Split", "Slice",
))
# ops that only move or describe data, and the shape arithmetic exporters emit around them
STRUCTURAL = frozenset((
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Shape", "Gather", "Constant",
    "ConstantOfShape", "Expand", "Range", "Equal", "Where", "Size",
))
# operands of these ops that are constant tensors of more than one value are learned
# parameters nobody exports
_ARITH = frozenset(("Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean", "Where"))

_EXTERNAL = 1  # TensorProto.EXTERNAL


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "reading ONNX models needs the onnx package: pip install mpslayout[onnx]"
        ) from None
    return onnx


def _np_dtype(code: int) -> np.dtype | None:
    table = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?",
             10: "<f2", 11: "<f8", 12: "<u4", 13: "<u8"}
    if code in table:
        return np.dtype(table[code])
    if code == 16:  # BFLOAT16
        try:
            import ml_dtypes
        except ImportError:
            raise ImportError(
                "bfloat16 initializers need the ml_dtypes package: pip install ml_dtypes"
            ) from None
        return np.dtype(ml_dtypes.bfloat16)
    return None


# ----------------------------------------------------------------------- tensors


def _external_path(model_dir: str, location: Any, tensor: str) -> str:
    """The file an external initializer lives in, refusing anything outside ``model_dir``."""
    if not isinstance(location, str) or not location:
        raise ValueError(f"initializer {tensor!r} has external data without a location")
    if "\x00" in location:
        raise ValueError(f"initializer {tensor!r}: external data location contains a NUL byte")
    parts = PurePosixPath(location.replace("\\", "/"))
    if parts.is_absolute() or PureWindowsPath(location).drive or location.startswith("~"):
        raise ValueError(
            f"initializer {tensor!r}: external data location {location!r} is an absolute "
            "path; only files inside the model's folder are read"
        )
    if ".." in parts.parts:
        raise ValueError(
            f"initializer {tensor!r}: external data location {location!r} leads out of the "
            "model's folder; only files inside it are read"
        )
    base = os.path.realpath(model_dir)
    real = os.path.realpath(os.path.join(base, *parts.parts))
    if os.path.commonpath([real, base]) != base:
        raise ValueError(
            f"initializer {tensor!r}: external data location {location!r} resolves to "
            f"{real}, outside the model's folder (a symlink?); refused"
        )
    if not os.path.isfile(real):
        raise ValueError(f"initializer {tensor!r}: external data file {location!r} not found "
                         f"in {base}")
    return real


def _int_field(value: str, what: str, tensor: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"initializer {tensor!r}: external data {what} {value!r} is not an "
                         "integer") from None
    if n < 0:
        raise ValueError(f"initializer {tensor!r}: external data {what} {n} is negative")
    return n


def _typed_values(t: Any, dt: np.dtype, n: int) -> np.ndarray:
    """The values of a tensor stored in its typed repeated fields (not raw_data)."""
    code = t.data_type
    if code == 1:
        vals = np.asarray(t.float_data, dtype=np.float32)
    elif code == 11:
        vals = np.asarray(t.double_data, dtype=np.float64)
    elif code == 7:
        vals = np.asarray(t.int64_data, dtype=np.int64)
    elif code in (12, 13):
        vals = np.asarray(t.uint64_data, dtype=np.uint64)
    elif dt.itemsize == 2 and code in (10, 16):  # bit patterns in int32_data
        vals = np.asarray(t.int32_data, dtype=np.int64).astype(np.uint16)
    else:
        vals = np.asarray(t.int32_data, dtype=np.int64)
    if vals.size != n:
        raise ValueError(
            f"initializer {t.name!r} declares shape {list(t.dims)} ({n} values) but holds "
            f"{vals.size}"
        )
    return vals.view(dt) if code in (10, 16) else vals.astype(dt)


def tensor_ref(t: Any, model_dir: str) -> TensorRef:
    """A lazy view of a TensorProto, after checking its declared size against its bytes."""
    dims = tuple(int(d) for d in t.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"initializer {t.name!r} has a negative dimension: {list(dims)}")
    dt = _np_dtype(t.data_type)
    if dt is None:
        raise ValueError(f"initializer {t.name!r} has ONNX data type {t.data_type}, which "
                         "mpslayout does not read")
    n = math.prod(dims)
    nbytes = n * dt.itemsize
    if t.data_location == _EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        path = _external_path(model_dir, info.get("location"), t.name)
        offset = _int_field(info.get("offset", "0"), "offset", t.name)
        if "length" in info and _int_field(info["length"], "length", t.name) != nbytes:
            raise ValueError(
                f"initializer {t.name!r} declares shape {list(dims)} ({nbytes} bytes of "
                f"{dt}) but its external data length is {info['length']}"
            )
        size = os.path.getsize(path)
        if offset + nbytes > size:
            raise ValueError(
                f"initializer {t.name!r} needs bytes {offset}..{offset + nbytes} of "
                f"{os.path.basename(path)}, which has only {size} bytes"
            )

        def opener() -> np.ndarray:
            if n == 0:
                return np.empty(dims, dt)
            return np.memmap(path, dtype=dt, mode="r", offset=offset, shape=(n,)).reshape(dims)

        return TensorRef(t.name, dims, dt, opener)
    raw = t.raw_data
    if raw:
        if len(raw) != nbytes:
            raise ValueError(
                f"initializer {t.name!r} declares shape {list(dims)} ({nbytes} bytes of "
                f"{dt}) but holds {len(raw)} bytes"
            )
        return TensorRef(t.name, dims, dt,
                         lambda: np.frombuffer(t.raw_data, dtype=dt, count=n).reshape(dims))
    vals = np.empty(dims, dt) if n == 0 else _typed_values(t, dt, n).reshape(dims)
    return TensorRef(t.name, dims, dt, lambda: vals)


# ----------------------------------------------------------------------- the graph


# AttributeProto.AttributeType values this reader reads, and their names for messages
_FLOAT, _INT, _STRING, _INTS = 1, 2, 3, 7
_TYPE_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH",
               6: "FLOATS", 7: "INTS", 8: "STRINGS"}

# inputs each op this reader looks into must have (it reads them by position)
_MIN_INPUTS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "MatMul": 2,
               "BatchNormalization": 5, "Flatten": 1, "Reshape": 2, "DepthToSpace": 1,
               "Transpose": 1, "Gather": 1, **{op: 1 for op in POINTWISE}}


class _Attrs:
    """A node's attributes, each read with the type ONNX defines for it; a file that stores
    another type (or none) is refused, naming the node and the attribute."""

    def __init__(self, node: Any, name: str) -> None:
        self.where = f"node {name!r}"
        self.raw = {a.name: a for a in node.attribute}

    def _get(self, key: str, kind: int) -> Any:
        a = self.raw.get(key)
        if a is None:
            return None
        if a.type != kind:
            raise ValueError(f"{self.where}: attribute {key!r} has type "
                             f"{_TYPE_NAMES.get(a.type, a.type)}, ONNX defines it as "
                             f"{_TYPE_NAMES[kind]} (a malformed model)")
        return {_FLOAT: a.f, _INT: a.i, _STRING: a.s, _INTS: list(a.ints)}[kind]

    def int(self, key: str, default: int, *, minimum: int | None = None) -> int:
        v = self._get(key, _INT)
        return default if v is None else as_int(v, f"{self.where}: {key}", minimum=minimum)

    def ints(self, key: str) -> list[int] | None:
        return self._get(key, _INTS)

    def pair(self, key: str, default: int, *, minimum: int | None = None) -> tuple[int, int]:
        v = self._get(key, _INTS)
        if v is None:
            return default, default
        return as_pair(v, f"{self.where}: {key}", minimum=minimum)

    def float(self, key: str, default: float) -> float:
        v = self._get(key, _FLOAT)
        return default if v is None else as_float(v, f"{self.where}: {key}")

    def text(self, key: str, default: str) -> str:
        v = self._get(key, _STRING)
        return default if v is None else as_text(v, f"{self.where}: {key}")


class _Reader:
    def __init__(self, model: Any, model_dir: str, fold_bn: bool, overrides: Overrides,
                 plan: Plan) -> None:
        self.model, self.dir, self.fold_bn = model, model_dir, fold_bn
        self.over, self.plan = overrides, plan
        g = model.graph
        self.nodes = list(g.node)
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.graph_outputs = {o.name for o in g.output}
        self.protos: dict[str, Any] = {t.name: t for t in g.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value":
                        self.protos[node.output[0]] = a.t
        self.refs: dict[str, TensorRef] = {}
        self.shapes: dict[str, list[int | None]] = {}
        self.consumed: set[int] = set()
        self.names: dict[int, str] = {}
        for i, node in enumerate(self.nodes):
            self.names[id(node)] = node.name or f"{node.op_type}_{i}"

    # -- lookups

    def check_structure(self) -> None:
        g = self.model.graph
        if not self.model.opset_import or not self.model.ir_version:
            raise ValueError("the ONNX model declares no IR version or opset (a truncated or "
                             "empty file?)")
        if not self.nodes:
            raise ValueError("the ONNX graph has no nodes (an empty or truncated model?)")
        for i, node in enumerate(self.nodes):
            for field in (node.op_type, node.name, node.domain, *node.input, *node.output,
                          *(a.name for a in node.attribute)):
                as_text(field, f"node {i} ({node.name!r})")  # bytes when not UTF-8
            need = _MIN_INPUTS.get(node.op_type, 0)
            if len(node.input) < need or not all(node.input[:need]) or not node.output \
                    or not node.output[0]:
                raise ValueError(
                    f"node {self.name(node)!r}: {node.op_type} has {len(node.input)} input(s) "
                    f"and {len(node.output)} output(s); it needs at least {need} and 1 "
                    "(a malformed model)"
                )
        for vi in (*g.initializer, *g.input, *g.output):
            as_text(vi.name, "a graph input, output or initializer name")
        defined = set(self.protos) | {i.name for i in g.input}
        for node in self.nodes:
            for inp in node.input:
                if inp and inp not in defined:
                    raise ValueError(
                        f"node {self.name(node)!r} reads {inp!r}, which no initializer, input "
                        "or earlier node defines: the model is truncated or malformed"
                    )
            defined.update(o for o in node.output if o)
        for o in g.output:
            if o.name not in defined:
                raise ValueError(f"graph output {o.name!r} is produced by no node: the model "
                                 "is truncated or malformed")
        for t in g.initializer:  # sizes and external paths of every initializer, up front
            self.refs[t.name] = tensor_ref(t, self.dir)

    def infer_shapes(self) -> None:
        onnx = _onnx()
        model = self.model
        # shape constants (Reshape targets) stored externally: inline them in a copy, since
        # inference does not read external data
        small = [t.name for t in model.graph.initializer if t.data_location == _EXTERNAL
                 and self.refs[t.name].dtype.kind in "iu" and self.refs[t.name].nbytes <= 4096]
        if small:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            for t in model.graph.initializer:
                if t.name in small:
                    t.CopyFrom(onnx.numpy_helper.from_array(np.array(self.refs[t.name].load()),
                                                            t.name))
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False,
                                                         data_prop=True)
        except Exception as e:  # inference is a help, not a requirement
            self.plan.assumptions.append(f"ONNX shape inference failed ({e}); layers that "
                                         "need shapes were skipped")
            inferred = self.model
        g = inferred.graph
        for vi in [*g.input, *g.value_info, *g.output]:
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in tt.shape.dim]
        for t in self.model.graph.initializer:
            self.shapes[t.name] = list(t.dims)

    def name(self, node: Any) -> str:
        return self.names[id(node)]

    def attrs(self, node: Any) -> _Attrs:
        return _Attrs(node, self.name(node))

    def const(self, name: str) -> TensorRef | None:
        """The constant tensor behind ``name`` (through Identity nodes), else None."""
        seen = 0
        while name not in self.protos:
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity" or seen > 64:
                return None
            name, seen = node.input[0], seen + 1
        if name not in self.refs:
            self.refs[name] = tensor_ref(self.protos[name], self.dir)
        return self.refs[name]

    def shape(self, name: str) -> list[int | None] | None:
        return self.shapes.get(name)

    def sole_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0]

    def follow(self, name: str) -> tuple[str, Any | None, list[str]]:
        """From tensor ``name`` through single-consumer pointwise ops: the last tensor, the
        node that consumes it next (None if several or none), and the ops passed."""
        through: list[str] = []
        while True:
            node = self.sole_consumer(name)
            if node is None or node.op_type not in POINTWISE or node.input[0] != name:
                return name, node, through
            through.append(node.op_type)
            name = node.output[0]

    # -- the walk

    def run(self) -> None:
        for node in self.nodes:
            if id(node) in self.consumed:
                continue
            op, name = node.op_type, self.name(node)
            if node.domain not in ("", "ai.onnx"):
                self.plan.refuse(name, op, f"custom operator of domain {node.domain!r}")
            elif op == "Conv":
                self.guard(node, self._conv)
            elif op == "ConvTranspose":
                self.guard(node, self._conv_transpose)
            elif op in ("Gemm", "MatMul"):
                self.guard(node, self._dense)
            elif op == "BatchNormalization":
                self.guard(node, self._batch_norm)
            elif op in onnx_rnn.OPS:
                self.guard(node, lambda n: onnx_rnn.read_node(self, n))
            elif op == "DepthToSpace":
                self.plan.refuse(name, op, "DepthToSpace not directly after a convolution "
                                 "mpslayout can export as a sub-pixel convolution")
            elif op == "Gather" and _is_table(self.const(node.input[0])):
                self.plan.refuse(name, op, f"a lookup in the constant table {node.input[0]!r}"
                                 " (an embedding): no MPSCNN layer")
            elif op in _ARITH:
                for inp in node.input:
                    ref = self.const(inp) if inp else None
                    if ref is not None and math.prod(ref.shape) > 1:
                        self.plan.refuse(name, op, f"constant input {inp!r} of shape "
                                         f"{list(ref.shape)} is a learned tensor mpslayout "
                                         "does not export")
                        break
            elif op not in WEIGHTLESS and op not in STRUCTURAL:
                self.plan.refuse(name, op, "no MPS layer mapping known to mpslayout")

    def weight(self, node: Any, index: int, what: str) -> TensorRef | None:
        if len(node.input) <= index or not node.input[index]:
            return None
        ref = self.const(node.input[index])
        if ref is None:
            raise SkipLayer(f"its {what} {node.input[index]!r} is computed, not a constant "
                        "initializer", unsupported=True)
        if not is_float(ref.dtype):
            raise SkipLayer(f"its {what} {ref.name!r} is {ref.dtype}, not floating point "
                        "(quantized models are not supported)")
        return ref

    def vector(self, node: Any, index: int, n: int, what: str) -> TensorRef | None:
        """Input ``index`` as a length-``n`` vector (any shape holding n values)."""
        ref = self.weight(node, index, what)
        if ref is None:
            return None
        if math.prod(ref.shape) != n:
            raise SkipLayer(f"its {what} {ref.name!r} has shape {list(ref.shape)}, expected ({n},)")
        return _flat(ref, n)

    def fold(self, out: str, n: int) -> tuple[str, Any | None, np.ndarray | None,
                                              np.ndarray | None]:
        """When folding is on and ``out`` feeds only a BatchNormalization: that node, the
        per-channel scale gamma/sqrt(var + eps) and shift (beta - mean*scale), float64."""
        bn = self.sole_consumer(out) if self.fold_bn else None
        if bn is None or bn.op_type != "BatchNormalization" or bn.input[0] != out:
            return out, None, None, None
        try:
            vecs = [self.vector(bn, i, n, "parameter") for i in (1, 2, 3, 4)]
        except SkipLayer:
            return out, None, None, None
        if any(v is None for v in vecs):
            return out, None, None, None
        scale, shift = batch_norm_fold(*(v.load() for v in vecs),
                                       eps=self.attrs(bn).float("epsilon", 1e-5),
                                       where=f"node {self.name(bn)!r}")
        self.consumed.add(id(bn))
        return bn.output[0], bn, scale, shift

    def add_layer(self, layer: Layer, node: Any, bn: Any | None, through: list[str]) -> None:
        if bn is not None:
            layer.source["folded_batch_norm"] = self.name(bn)
            layer.notes.append(f"BatchNormalization {self.name(bn)!r} folded into the weights "
                               "and bias")
        if through:
            layer.source["through"] = through
        self.plan.layers.append(layer)

    def pads(self, node: Any, attrs: _Attrs, in_hw: tuple[int | None, ...],
             k: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> tuple[int, int, int, int]:
        auto = attrs.text("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            ys = mf.same_pads(in_hw[0], k[0], stride[0], dilation[0], auto == "SAME_UPPER")
            xs = mf.same_pads(in_hw[1], k[1], stride[1], dilation[1], auto == "SAME_UPPER")
            if ys is None or xs is None:
                raise SkipLayer(f"auto_pad={auto} with stride {list(stride)} needs the input "
                            "size, which shape inference did not give")
            return ys[0], xs[0], ys[1], xs[1]
        if auto == "VALID":
            return 0, 0, 0, 0
        p = attrs.ints("pads") or [0, 0, 0, 0]
        if len(p) != 4:
            raise SkipLayer(f"pads {p} are not those of a 2-D convolution")
        return p[0], p[1], p[2], p[3]

    def spatial(self, name: str) -> tuple[int | None, int | None]:
        s = self.shape(name)
        if s is None or len(s) != 4:
            return None, None
        return s[2], s[3]

    def guard(self, node: Any, fn: Any) -> None:
        try:
            fn(node)
        except SkipLayer as e:
            if e.unsupported:
                self.plan.refuse(self.name(node), node.op_type, str(e))
            else:
                self.plan.skip(self.name(node), node.op_type, str(e))

    def _kernel(self, node: Any
                ) -> tuple[TensorRef, _Attrs, tuple[int, int], tuple[int, int], int]:
        """(weight, attributes, strides, dilations, group) of a convolution."""
        w = self.weight(node, 1, "weight")
        if w is None:
            raise SkipLayer("it has no weight input", unsupported=True)
        if len(w.shape) != 4:
            raise SkipLayer(f"its weight is {len(w.shape)}-D: MPS convolutions are 2-D "
                            "(4-D weights)")
        attrs = self.attrs(node)
        return (w, attrs, attrs.pair("strides", 1, minimum=1),
                attrs.pair("dilations", 1, minimum=1), attrs.int("group", 1, minimum=1))

    def _conv(self, node: Any) -> None:
        name = self.name(node)
        w, a, stride, dil, g = self._kernel(node)
        o, ig, kh, kw = w.shape
        if o % g:
            raise ValueError(f"node {name!r}: group={g} does not divide its {o} output channels")
        cin = ig * g
        b = self.vector(node, 2, o, "bias")
        in_hw = self.spatial(node.input[0])
        pads = self.pads(node, a, in_hw, (kh, kw), stride, dil)
        out, bn, scale, shift = self.fold(node.output[0], o)
        end, nxt, through = self.follow(out)
        source = {"format": "onnx", "node": name, "op": "Conv", "weights": w.name,
                  "bias": b.name if b is not None else None, "input": node.input[0],
                  "output": end}
        geo = mf.conv_geometry(kh=kh, kw=kw, cin=cin, cout=o, groups=g, stride=stride,
                               dilation=dil, pads=pads, in_hw=in_hw,
                               out_hw=self.spatial(node.output[0]))
        bias = folded_bias(b, o, name, scale, shift)
        w_scale = None if scale is None else scale.reshape(o, 1, 1, 1)
        layer = Layer(name, "convolution", "conv", source, w, bias,
                      {"layout": "OIHW", "groups": g}, geo, w_scale)
        if nxt is not None and nxt.op_type == "DepthToSpace" and g == 1:
            da = self.attrs(nxt)
            r = da.int("blocksize", 0)
            mode = da.text("mode", "DCR")
            if r > 0 and o % (r * r) == 0:
                c = o // (r * r)
                layer.kind = "subpixel"
                if mode == "CRD":
                    layer.rule = "conv_subpixel"
                    layer.params["shape"] = (r, r, c)
                oh, ow = geo["output_shape"]["height"], geo["output_shape"]["width"]
                geo["output_shape"] = mf.image(None if oh is None else oh * r,
                                               None if ow is None else ow * r, c)
                geo["subpixel"] = {"factor": r, "image_channels": c, "source_mode": mode}
                source["output"] = nxt.output[0]
                source["depth_to_space"] = self.name(nxt)
                self.consumed.add(id(nxt))
                if mode == "CRD":
                    layer.notes.append(f"output channels reordered from DepthToSpace CRD "
                                       f"(c*{r * r} + y*{r} + x) to the sub-pixel order "
                                       f"((y*{r} + x)*{c} + c)")
                self.add_layer(layer, node, bn, through)
                return
        if g > 1 and ig == 1 and g == cin:
            m = o // cin
            if m == 1:
                layer.kind, layer.rule = "depthwise", "depthwise"
            else:
                layer.rule = "expand_depthwise"
                layer.params = {"layout": "OIHW", "in_channels": cin}
                geo["groups"] = 1
                layer.notes.append(f"depthwise with channel multiplier {m}: MPS depthwise "
                                   "takes multiplier 1 only, so this is an ordinary "
                                   "convolution whose weights are zero outside each channel")
        source["output"] = out
        self.add_layer(layer, node, bn, [])

    def _conv_transpose(self, node: Any) -> None:
        name = self.name(node)
        w, a, stride, dil, g = self._kernel(node)
        cin, og, kh, kw = w.shape
        if cin % g:
            raise ValueError(f"node {name!r}: group={g} does not divide its {cin} input channels")
        o = og * g
        b = self.vector(node, 2, o, "bias")
        op = a.pair("output_padding", 0, minimum=0)
        in_hw = self.spatial(node.input[0])
        auto = a.text("auto_pad", "NOTSET")
        out_shape = a.ints("output_shape")
        if out_shape is not None and len(out_shape) < 2:
            raise ValueError(f"node {name!r}: output_shape {out_shape} is not 2-D")
        if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
            # ONNX: total = stride*(in - 1) + output_padding + (k-1)*d + 1 - out, where
            # out is output_shape, or in*stride for SAME (then in cancels out)
            p = []
            for i, k in enumerate((kh, kw)):
                total = op[i] + (k - 1) * dil[i] + 1
                if out_shape is not None:
                    size = in_hw[i]
                    if size is None:
                        raise SkipLayer("output_shape needs the input size, which shape "
                                    "inference did not give")
                    total += stride[i] * (size - 1) - out_shape[-2 + i]
                else:
                    total -= stride[i]
                begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
                p.append((begin, total - begin))
            pads = (p[0][0], p[1][0], p[0][1], p[1][1])
        else:
            pads = self.pads(node, a, in_hw, (kh, kw), stride, dil)
        out, bn, scale, shift = self.fold(node.output[0], o)
        source = {"format": "onnx", "node": name, "op": "ConvTranspose", "weights": w.name,
                  "bias": b.name if b is not None else None, "input": node.input[0],
                  "output": out}
        geo = mf.transposed_geometry(kh=kh, kw=kw, cin=cin, cout=o, groups=g, stride=stride,
                                     dilation=dil, pads=pads, output_padding=op, in_hw=in_hw,
                                     out_hw=self.spatial(node.output[0]))
        w_scale = None
        if scale is not None:  # output channel j*O/g + o of Wt[j*I/g + i][o]
            w_scale = np.repeat(scale.reshape(g, og), cin // g, axis=0)[:, :, None, None]
        layer = Layer(name, "transposed", "transposed", source, w,
                      folded_bias(b, o, name, scale, shift),
                      {"layout": "IOHW", "groups": g}, geo, w_scale)
        if dil != (1, 1):
            layer.notes.append("kernel_offset with dilation uses (k/2)*d - (k-1)*d + pad, "
                               "extended from MPS_LAYOUTS.md section 3 (not documented by "
                               "Apple)")
        self.add_layer(layer, node, bn, [])

    def flatten_source(self, a: str) -> tuple[str, tuple[int, int, int] | None, str, str]:
        """What a fully connected layer reading tensor ``a`` sees: (MPS input tensor,
        (H, W, C) of the image flattened into ``a`` or None for a plain vector, flatten
        order, status "plain"/"image"/"unknown")."""
        t = a
        while True:
            node = self.producer.get(t)
            if node is None or node.op_type not in POINTWISE:
                break
            t = node.input[0]
        node = self.producer.get(t)
        src = None
        if node is not None and node.op_type == "Flatten":
            if self.attrs(node).int("axis", 1) == 1:
                src = node.input[0]
        elif node is not None and node.op_type == "Reshape":
            s = self.shape(t)
            if s is not None and len(s) == 2:
                src = node.input[0]
        if src is None:
            s = self.shape(a)
            return a, None, "CHW", ("plain" if s is not None and len(s) >= 2 else "unknown")
        s = self.shape(src)
        if s is None or None in s[1:]:
            return src, None, "CHW", "unknown"
        if len(s) == 2:
            return src, None, "CHW", "plain"
        if len(s) == 3:  # (N, C, L): a 1 x L image with C channels
            return src, (1, s[2], s[1]), "CHW", "image"
        if len(s) != 4:
            return src, None, "CHW", "unknown"
        t_node = self.producer.get(src)
        if t_node is not None and t_node.op_type == "Transpose" and \
                self.attrs(t_node).ints("perm") == [0, 2, 3, 1]:
            return t_node.input[0], (s[1], s[2], s[3]), "HWC", "image"  # NHWC flattened
        return src, (s[2], s[3], s[1]), "CHW", "image"

    def reshape_target(self, node: Any, n: int) -> tuple[tuple[int, int, int], str, str] | None:
        """(H, W, C), order and output tensor of a Reshape to a 4-D image, else None."""
        s = self.shape(node.output[0])
        dims: list[int | None] | None = None
        if s is not None and len(s) == 4:
            dims = s
        else:
            ref = self.const(node.input[1]) if len(node.input) > 1 else None
            if ref is not None and ref.dtype.kind == "i":
                v = [int(x) for x in ref.load().ravel()]
                if len(v) == 4 and all(x > 0 for x in v[1:]):
                    dims = v
        if dims is None or any(x is None for x in dims[1:]):
            return None
        d1, d2, d3 = (int(x or 0) for x in dims[1:])
        if d1 * d2 * d3 != n:
            return None
        nxt = self.sole_consumer(node.output[0])
        if nxt is not None and nxt.op_type == "Transpose" and \
                self.attrs(nxt).ints("perm") == [0, 3, 1, 2]:
            return (d1, d2, d3), "HWC", nxt.output[0]  # reshaped NHWC, then to NCHW
        return (d2, d3, d1), "CHW", node.output[0]

    def _dense(self, node: Any) -> None:
        name = self.name(node)
        op = node.op_type
        a = self.attrs(node)
        w = self.const(node.input[1])
        if w is None:
            raise SkipLayer("its second operand is computed, not a constant: a product of two "
                        "activations has no MPSCNN layer", unsupported=True)
        w = self.weight(node, 1, "weight")
        assert w is not None
        if len(w.shape) != 2:
            raise SkipLayer(f"its weight is {len(w.shape)}-D, not a 2-D matrix", unsupported=True)
        if a.int("transA", 0):
            raise SkipLayer("transA=1 (a transposed activation) has no MPS layer", unsupported=True)
        layout = "OI" if a.int("transB", 0) else "IO"
        o, n = (w.shape[0], w.shape[1]) if layout == "OI" else (w.shape[1], w.shape[0])
        alpha, beta = a.float("alpha", 1.0), a.float("beta", 1.0)
        out = node.output[0]
        b = None
        if op == "Gemm":
            b = self.vector(node, 2, o, "bias")
            if b is not None and math.prod(b.shape) == 1 and o != 1:
                raise SkipLayer(f"its bias {b.name!r} is a broadcast scalar")
        else:
            s = self.shape(node.input[0])
            if s is not None and len(s) > 3:
                raise SkipLayer(f"MatMul on a {len(s)}-D tensor is not a fully connected layer")
            add = self.sole_consumer(out)
            if add is not None and add.op_type == "Add":
                other = add.input[1] if add.input[0] == out else add.input[0]
                ref = self.const(other)
                if ref is not None and is_float(ref.dtype) and \
                        (ref.shape == (o,) or ref.shape == (1, o)):
                    b = _flat(ref, o)
                    out = add.output[0]
                    self.consumed.add(id(add))
        src, hwc, order, status = self.flatten_source(node.input[0])
        given = self.over.get("input_shapes", [name, w.name])
        if given is not None:
            c, h, ww = given
            hwc, status = (h, ww, c), "image"
        if status == "unknown":
            raise SkipLayer(f"the (C, H, W) of the image flattened into {node.input[0]!r} is not "
                        f"known; pass --input-shape {name}=C,H,W")
        if hwc is not None and math.prod(hwc) != n:
            raise SkipLayer(f"the image flattened into it is (H, W, C)={hwc}, "
                        f"{math.prod(hwc)} values, but the weight has {n} inputs")
        out, bn, scale, shift = self.fold(out, o)
        end, nxt, through = self.follow(out)
        reshape = None
        shape_given = self.over.get("reshapes", [name, w.name])
        if shape_given is not None:
            reshape = (tuple(shape_given), "CHW", end)
            if math.prod(shape_given) != o:
                raise ValueError(f"reshapes[{name!r}]={shape_given} holds "
                                 f"{math.prod(shape_given)} values but {name!r} has {o} "
                                 "outputs")
        elif nxt is not None and nxt.op_type == "Reshape":
            reshape = self.reshape_target(nxt, o)
        w_scale = None
        if scale is not None or alpha != 1.0:
            v = (np.ones(o) if scale is None else scale) * alpha
            w_scale = v.reshape(o, 1) if layout == "OI" else v.reshape(1, o)
        bias = folded_bias(b, o, name, scale, shift, beta)
        source = {"format": "onnx", "node": name, "op": op, "weights": w.name,
                  "bias": b.name if b is not None else None, "input": src, "output": out}
        geo = mf.fc_geometry(n_in=n, n_out=o, source=hwc, flatten=order)
        params: dict[str, Any] = {"layout": layout}
        if hwc is not None:
            h, ww, c = hwc
            params["input_shape"] = (c, h, ww) if order == "CHW" else (h, ww, c)
            params["flatten"] = order
        if reshape is None:
            layer = Layer(name, "fully_connected", "fc", source, w, bias, params, geo, w_scale)
            if alpha != 1.0 or beta != 1.0:
                layer.notes.append(f"Gemm alpha={alpha}, beta={beta} applied to the weights "
                                   "and bias")
            self.add_layer(layer, node, bn, [])
            return
        shape, rorder, rout = reshape
        source["output"] = rout
        self.add_layer(reshape_layer(name, source, w, bias, params, geo, shape, rorder,
                                     self.name(nxt) if nxt is not None else None, w_scale),
                       node, bn, through)

    def _batch_norm(self, node: Any) -> None:
        name = self.name(node)
        s = self.shape(node.input[0])
        ref = self.weight(node, 1, "scale")
        if ref is None:
            raise SkipLayer("it has no scale input", unsupported=True)
        c = math.prod(ref.shape)
        refs = {}
        for role, i in (("gamma", 1), ("beta", 2), ("mean", 3), ("variance", 4)):
            r = self.vector(node, i, c, role)
            if r is None:
                raise SkipLayer(f"its {role} input is missing", unsupported=True)
            refs[role] = r
        eps = self.attrs(node).float("epsilon", 1e-5)
        in_hw = (1, 1) if s is not None and len(s) == 2 else self.spatial(node.input[0])
        geo = {"input_channels": c, "output_channels": c, "epsilon": eps,
               "input_shape": mf.image(in_hw[0], in_hw[1], c),
               "output_shape": mf.image(in_hw[0], in_hw[1], c)}
        source = {"format": "onnx", "node": name, "op": "BatchNormalization",
                  "weights": None, "bias": None, "input": node.input[0],
                  "output": node.output[0], "tensors": {k: v.name for k, v in refs.items()}}
        layer = Layer(name, "batch_normalization", "batch_norm", source, params={},
                      geometry=geo, tensors=refs)
        if self.fold_bn:
            layer.notes.append("not folded: it does not directly follow a single-use "
                               "convolution or fully connected layer")
        self.plan.layers.append(layer)


def _flat(ref: TensorRef, n: int) -> TensorRef:
    if ref.shape == (n,):
        return ref
    return TensorRef(ref.name, (n,), ref.dtype, lambda: ref.load().reshape(n))


def _is_table(ref: TensorRef | None) -> bool:
    return ref is not None and is_float(ref.dtype) and len(ref.shape) >= 2


def read(path: str, *, fold_bn: bool, overrides: Overrides) -> Plan:
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"cannot parse {path} as ONNX (truncated or not a model?): "
                         f"{type(e).__name__}: {e}") from None
    plan = Plan("onnx")
    reader = _Reader(model, os.path.dirname(os.path.abspath(path)), fold_bn, overrides, plan)
    reader.check_structure()
    reader.infer_shapes()
    reader.run()
    return plan
