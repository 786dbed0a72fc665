"""``mpslayout verify``: does an export compute what the original model computes?

Runs the exported layers in the reference executor (:mod:`mpslayout.reference`, an
executable restatement of MPS_LAYOUTS.md) and the original ONNX model in ONNX Runtime on
the same input, and compares them tensor by tensor. The weights, biases and MPS geometry
come only from the export folder (``manifest.json`` and its ``.bin`` files, checked
against their sizes and SHA-256); the model supplies the graph (which layer feeds which,
and the weightless operators between them: neurons, pooling, add, concatenation,
flatten) and the judge's numbers. Nothing here calls mpslayout's converters: a check that
reused the code under test would prove nothing.

Every compared tensor is checked twice:

- *isolated*: the layer alone, fed ONNX Runtime's own input to it (rounded to the storage
  type), so a wrong layer is named even when errors from earlier layers would blur it;
- *chained*: the reference executor's own result after running every layer before it, as
  an app would on the device.

A value passes when ``|ref - ort| <= atol + rtol*|ort| + explained`` element by element.
With float32 storage and float32 weights ``explained`` is 0. With float16 (weights or
images), ``explained`` is what float16 storage explains: for the isolated check, the
rigorous bound ``(u_in + u_w)*K + u_s*(|pre| + k*|y|)`` with ``u = 2^-11`` for each
float16 rounding (input, weights, stored result), ``K`` the layer run on ``|x|`` and
``|w|`` and ``k`` the neurons after it; for the chained check, four times the largest
difference between ONNX Runtime with and without float16 rounding of every stored tensor
(and of the exported weights), plus four float16 steps of the tensor's scale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import reference as R
from . import verify_rnn

__all__ = ["Report", "Row", "VerifyError", "load_export", "verify"]

U16 = 2.0**-11  # unit roundoff of float16
_SAFE_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*\.bin$")
_NEURONS = {"Relu": ("relu", 1.0), "LeakyRelu": ("leaky_relu", 1.0),
            "Sigmoid": ("sigmoid", 0.25), "Tanh": ("tanh", 1.0)}
_PASS = frozenset(("Identity", "Dropout"))
_WEIGHTED = frozenset(("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"))
_QUIET = frozenset(("Shape", "Gather", "Constant", "ConstantOfShape", "Unsqueeze", "Squeeze",
                    "Cast", "Range", "Equal", "Where", "Size", "Expand"))
_FILE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class VerifyError(ValueError):
    """The export or the model cannot be verified at all (unreadable, corrupt, mismatched)."""


# ----------------------------------------------------------------------- the export


@dataclass
class ExportedLayer:
    entry: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return str(self.entry["name"])

    @property
    def kind(self) -> str:
        return str(self.entry["kind"])


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_export(outdir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[ExportedLayer]]:
    """The manifest and every layer's arrays, after checking each file's name, size, shape
    and SHA-256 against the manifest."""
    folder = os.fspath(outdir)
    path = os.path.join(folder, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise VerifyError(f"{folder} has no manifest.json: not an mpslayout export") from None
    except ValueError as e:
        raise VerifyError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != "mpslayout-manifest":
        raise VerifyError(f"{path} is not an mpslayout manifest")
    if doc.get("version") != 1:
        raise VerifyError(f"{path} has manifest version {doc.get('version')!r}; this "
                          "mpslayout reads version 1")
    if doc.get("byte_order", "little") != "little":
        raise VerifyError(f"{path}: byte_order {doc.get('byte_order')!r} is not 'little'")
    layers = []
    for entry in doc.get("layers", []):
        arrays = {}
        for role, info in entry.get("files", {}).items():
            name = str(info.get("file", ""))
            if not _SAFE_FILE.match(name):
                raise VerifyError(f"layer {entry.get('name')!r}: file name {name!r} is not a "
                                  "plain .bin name inside the export folder")
            dt = _FILE_DTYPES.get(info.get("dtype"))
            if dt is None:
                raise VerifyError(f"layer {entry.get('name')!r}: {name} has dtype "
                                  f"{info.get('dtype')!r}, not float32 or float16")
            shape = [int(v) for v in info.get("shape", [])]
            fpath = os.path.join(folder, name)
            if not os.path.isfile(fpath):
                raise VerifyError(f"layer {entry.get('name')!r}: {name} is missing")
            size = os.path.getsize(fpath)
            want = math.prod(shape) * dt.itemsize
            if size != want or size != info.get("bytes"):
                raise VerifyError(f"layer {entry.get('name')!r}: {name} has {size} bytes; the "
                                  f"manifest says {info.get('bytes')} ({dt.name}{shape}: "
                                  f"{want})")
            digest = _sha256(fpath)
            if digest != info.get("sha256"):
                raise VerifyError(f"layer {entry.get('name')!r}: {name} does not match its "
                                  "SHA-256 in the manifest (changed after the export?)")
            arrays[role] = np.fromfile(fpath, dtype=dt).reshape(shape)
        layers.append(ExportedLayer(entry, arrays))
    return doc, layers


# ----------------------------------------------------------------------- the model


def _onnx() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError:
        raise VerifyError("verify needs onnx and onnxruntime: pip install "
                          "mpslayout[oracles]") from None
    return onnx


class _Graph:
    """The ONNX graph: nodes in order, their names (as the export names them), producers,
    consumers, constants and inferred element types."""

    def __init__(self, model: Any) -> None:
        onnx = _onnx()
        self.model = model
        self.nodes = list(model.graph.node)
        self.names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(self.nodes)]
        self.by_name = {name: i for i, name in enumerate(self.names)}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for t in n.input:
                if t:
                    self.consumers[t].append(i)
        self.outputs = {o.name for o in model.graph.output}
        self.inits = {t.name: t for t in model.graph.initializer}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # inference is a help: unknown types are simply not rounded
            inferred = model
        self.types: dict[str, int] = {}
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type.tensor_type.elem_type

    def attrs(self, i: int) -> dict[str, Any]:
        onnx = _onnx()
        return {a.name: onnx.helper.get_attribute_value(a) for a in self.nodes[i].attribute}

    def const(self, name: str) -> np.ndarray | None:
        onnx = _onnx()
        if name in self.inits:
            return onnx.numpy_helper.to_array(self.inits[name])
        i = self.producer.get(name)
        if i is not None and self.nodes[i].op_type == "Constant":
            for a in self.nodes[i].attribute:
                if a.name == "value":
                    return onnx.numpy_helper.to_array(a.t)
        return None

    def sole_consumer(self, tensor: str) -> int | None:
        users = self.consumers.get(tensor, [])
        if len(users) != 1:
            return None
        return users[0]


def _ort_session(model: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _with_outputs(graph: _Graph, names: Sequence[str]) -> Any:
    """A copy of the model whose graph outputs include every tensor in ``names``."""
    onnx = _onnx()
    m = onnx.ModelProto()
    m.CopyFrom(graph.model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have and name in graph.types:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, graph.types[name],
                                                                     None))
            have.add(name)
    return m


def _float16_rounded(graph: _Graph, m: Any, storage: bool, weights: set[str]) -> Any:
    """``m`` with every float tensor a node stores rounded through float16 (when
    ``storage``) and the named initializers rounded to float16: ONNX Runtime with the
    roundings float16 storage makes, for the chained tolerance."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(m)
    g = out.graph
    for i, t in enumerate(g.initializer):
        if t.name in weights and t.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
            g.initializer[i].CopyFrom(numpy_helper.from_array(a, t.name))
    if not storage:
        return out
    nodes = []
    for n in g.node:
        nodes.append(n)
        for k, o in enumerate(list(n.output)):
            if not o or graph.types.get(o) != TensorProto.FLOAT:
                continue
            raw = f"{o}__mpslayout_f32"
            n.output[k] = raw
            nodes.append(helper.make_node("Cast", [raw], [f"{o}__mpslayout_f16"],
                                          to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", [f"{o}__mpslayout_f16"], [o],
                                          to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    return out


def _input_feeds(graph: _Graph, given: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    inits = set(graph.inits)
    inputs = [vi for vi in graph.model.graph.input if vi.name not in inits]
    if not inputs:
        raise VerifyError("the model has no input")
    if given is not None and len(inputs) != 1:
        raise VerifyError(f"--input gives one array but the model has {len(inputs)} inputs")
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in inputs:
        tt = vi.type.tensor_type
        if tt.elem_type != 1:
            raise VerifyError(f"model input {vi.name!r} is not float32")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tt.shape.dim]
        if given is not None:
            a = np.asarray(given, dtype=np.float32)
            if a.ndim != len(dims) or any(d is not None and d != s
                                          for d, s in zip(dims, a.shape)):
                raise VerifyError(f"--input has shape {list(a.shape)}, the model's "
                                  f"{vi.name!r} is {[d or '?' for d in dims]}")
        else:
            a = rng.standard_normal([d or 1 for d in dims]).astype(np.float32)
        feeds[vi.name] = np.ascontiguousarray(a)
    return feeds


# ----------------------------------------------------------------------- values


@dataclass
class _Val:
    """A tensor as the executor holds it: an MPS image; ``flat`` when the ONNX tensor is
    that image flattened (2-D), in ``flat`` order."""

    image: R.Image | None
    flat: str | None = None


def _as_val(a: np.ndarray, storage: np.dtype) -> _Val:
    """ONNX Runtime's value as an image: 4-D NCHW, or (N, K) as a 1x1 image of K channels."""
    if a.dtype.kind != "f" or a.size == 0:
        return _Val(None)
    if a.ndim == 4:
        return _Val(R.Image.from_nchw(a, storage))
    if a.ndim == 2:
        return _Val(R.Image.from_nchw(a.reshape(*a.shape, 1, 1), storage), "CHW")
    return _Val(None)


def _as_onnx(v: _Val, like: np.ndarray) -> np.ndarray | None:
    """The reference value in the shape of ONNX Runtime's tensor, float64; None if the two
    cannot be matched."""
    if v.image is None:
        return None
    img = v.image
    if like.ndim == 4:
        a = img.nchw()
    elif like.ndim == 2:
        a = (img.nhwc() if v.flat == "HWC" else img.nchw()).reshape(img.batch, -1)
    else:
        return None
    return a if a.shape == like.shape else None


# ----------------------------------------------------------------------- results


@dataclass
class Check:
    """Largest absolute error, the same over the largest |ort| of the tensor, the largest
    ratio of an element's error to its tolerance (<= 1 passes), and the verdict."""

    max_abs: float
    max_rel: float
    worst: float
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return {"max_abs": _num(self.max_abs), "max_rel": _num(self.max_rel),
                "error_over_tolerance": _num(self.worst), "ok": self.ok}


def _num(x: float) -> float | str:
    """A float for JSON: "inf" and "nan" as strings, which every JSON parser reads."""
    return x if math.isfinite(x) else str(x)


@dataclass
class Row:
    """One compared tensor: an exported layer (``layer`` True) or a weightless operator."""

    index: int
    name: str
    op: str
    kind: str
    layer: bool
    tensor: str
    shape: list[int]
    isolated: Check | None = None
    chained: Check | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(c is None or c.ok
                                          for c in (self.isolated, self.chained))

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "op": self.op, "kind": self.kind,
                "layer": self.layer, "tensor": self.tensor, "shape": self.shape,
                "isolated": None if self.isolated is None else self.isolated.as_dict(),
                "chained": None if self.chained is None else self.chained.as_dict(),
                "error": self.error, "notes": self.notes, "ok": self.ok}


@dataclass
class Report:
    outdir: str
    model: str
    input: str
    storage: str
    weights_dtype: str
    atol: float
    rtol: float
    rows: list[Row] = field(default_factory=list)
    not_verified: list[dict[str, str]] = field(default_factory=list)
    layers_checked: int = 0

    @property
    def first_divergence(self) -> Row | None:
        return next((r for r in self.rows if not r.ok), None)

    @property
    def ok(self) -> bool:
        return self.first_divergence is None and self.layers_checked > 0

    def as_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {"ok": self.ok, "export": self.outdir, "model": self.model, "input": self.input,
                "storage": self.storage, "weights_dtype": self.weights_dtype,
                "atol": self.atol, "rtol": self.rtol, "layers_checked": self.layers_checked,
                "first_divergence": None if first is None else first.name,
                "rows": [r.as_dict() for r in self.rows], "not_verified": self.not_verified}

    def table(self) -> str:
        def num(c: Check | None, attr: str) -> str:
            return "-" if c is None else f"{getattr(c, attr):.2e}"

        def worst(r: Row) -> str:
            w = [c.worst for c in (r.isolated, r.chained) if c is not None]
            return f"{max(w):.2g}" if w else "-"

        head = ["", "#", "layer / op", "kind", "output", "iso abs", "iso rel", "chain abs",
                "chain rel", "err/tol", "status"]
        body = []
        first = self.first_divergence
        for r in self.rows:
            status = "ok" if r.ok else ("ERROR" if r.error else "FAIL")
            mark = ">>" if r is first else ""
            body.append([mark, str(r.index), r.name, r.kind if r.layer else r.op,
                         "x".join(map(str, r.shape)), num(r.isolated, "max_abs"),
                         num(r.isolated, "max_rel"), num(r.chained, "max_abs"),
                         num(r.chained, "max_rel"), worst(r), status])
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [f"mpslayout verify: {self.outdir} against {self.model}",
                 f"input: {self.input}",
                 f"storage {self.storage}, weights {self.weights_dtype}; atol {self.atol:g}, "
                 f"rtol {self.rtol:g}; rel = max abs / max |ort|; err/tol <= 1 passes", ""]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        for row in body:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        lines.append("")
        for r in self.rows:
            for note in ([r.error] if r.error else []) + r.notes:
                lines.append(f"  {r.name}: {note}")
        for x in self.not_verified:
            lines.append(f"  not verified: {x['name']} ({x['op']}): {x['reason']}")
        if first is not None:
            what = "layer" if first.layer else "operator"
            lines.append(f"FAILED: first divergence at {what} {first.name!r} ({first.op} -> "
                         f"{first.tensor}): "
                         + (first.error or self._why(first)))
        elif self.layers_checked == 0:
            lines.append("FAILED: no exported layer could be checked")
        else:
            lines.append(f"OK: {self.layers_checked} exported layers and "
                         f"{len(self.rows) - self.layers_checked} operators agree with ONNX "
                         "Runtime")
        return "\n".join(lines)

    @staticmethod
    def _why(r: Row) -> str:
        parts = []
        for label, c in (("isolated", r.isolated), ("chained", r.chained)):
            if c is not None and not c.ok:
                parts.append(f"{label} max abs error {c.max_abs:.3g} (rel {c.max_rel:.3g})")
        return ", ".join(parts) + " beyond tolerance"


# ----------------------------------------------------------------------- the executor


@dataclass
class _Segment:
    """An exported layer and the ONNX nodes it stands for: its own node, then the nodes
    it absorbs (a folded batch norm, a DepthToSpace, a Reshape) and the neurons between."""

    layer: ExportedLayer
    nodes: list[int]
    end: str
    neurons: list[tuple[str, float, float]]  # (kind, alpha, Lipschitz constant)
    notes: list[str]


def _xy(entry: dict[str, Any], key: str, default: tuple[int, int] | None
        ) -> tuple[int, int] | None:
    v = entry.get(key)
    if v is None:
        return default
    return int(v["x"]), int(v["y"])


def _neuron(graph: _Graph, i: int) -> tuple[str, float, float]:
    op = graph.nodes[i].op_type
    kind, lip = _NEURONS[op]
    alpha = float(graph.attrs(i).get("alpha", 0.01)) if op == "LeakyRelu" else 0.0
    return kind, alpha, max(lip, abs(alpha)) if op == "LeakyRelu" else lip


def _pads_from_node(graph: _Graph, i: int) -> list[int] | None:
    """Explicit ONNX pads (top, left, bottom, right) of a Conv/ConvTranspose, for a
    manifest without geometry (a state_dict export); None for auto_pad SAME."""
    a = graph.attrs(i)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto != "NOTSET":
        return None
    return [int(v) for v in a.get("pads", [0, 0, 0, 0])]


_LAYER_OPS = {"convolution": ("Conv",), "depthwise": ("Conv",),
              "transposed": ("ConvTranspose",), "fully_connected": ("Gemm", "MatMul"),
              "subpixel": ("Conv", "Gemm", "MatMul"),
              "batch_normalization": ("BatchNormalization",)}


class _Executor:
    """Walks the ONNX graph in order: exported layers run from the export's files,
    weightless operators with reference kernels, anything else takes ONNX Runtime's value
    (and is listed as not verified)."""

    def __init__(self, graph: _Graph, layers: list[ExportedLayer], ort: dict[str, np.ndarray],
                 ort16: dict[str, np.ndarray] | None, storage: np.dtype, u_w: float,
                 atol: float, rtol: float, report: Report,
                 not_exported: list[dict[str, Any]]) -> None:
        self.g, self.ort, self.ort16 = graph, ort, ort16
        self.not_exported = not_exported
        self.storage, self.atol, self.rtol, self.report = storage, atol, rtol, report
        self.u_s = U16 if storage == np.float16 else 0.0
        self.u_w = u_w
        self.vals: dict[str, _Val] = {}
        self.done: set[int] = set()
        self.segments: dict[int, _Segment] = {}
        self.unmapped: list[ExportedLayer] = []
        for layer in layers:
            seg = self._segment(layer)
            if seg is None:
                self.unmapped.append(layer)
            else:
                self.segments[seg.nodes[0]] = seg

    # -- mapping

    def _main_node(self, layer: ExportedLayer) -> int | None:
        src = layer.entry.get("source", {})
        ops = _LAYER_OPS.get(layer.kind, ())
        node = src.get("node")
        if isinstance(node, str) and node in self.g.by_name:
            i = self.g.by_name[node]
            return i if self.g.nodes[i].op_type in ops else None
        names = {src.get("weights"), f"{layer.name}.weight", layer.name}
        for i, n in enumerate(self.g.nodes):
            if n.op_type in ops and len(n.input) > 1 and n.input[1] in names:
                return i
        return None

    def _segment(self, layer: ExportedLayer) -> _Segment | None:
        main = self._main_node(layer)
        if main is None:
            return None
        src = layer.entry.get("source", {})
        t = self.g.nodes[main].output[0]
        end = src.get("output") if isinstance(src.get("output"), str) else t
        nodes, neurons = [main], []
        for _ in range(16):
            if t == end:
                break
            nxt = self.g.sole_consumer(t)
            if nxt is None or (self.g.nodes[nxt].input[0] != t
                               and self.g.nodes[nxt].op_type != "Add"):
                break
            op = self.g.nodes[nxt].op_type
            if op in _NEURONS:
                neurons.append(_neuron(self.g, nxt))
            elif op not in ("BatchNormalization", "DepthToSpace", "Reshape", "Transpose",
                            "Flatten", "Add", *_PASS):
                break
            nodes.append(nxt)
            t = self.g.nodes[nxt].output[0]
        notes = []
        if t != end:
            notes.append(f"the manifest's output tensor {end!r} does not follow node "
                         f"{self.g.names[main]!r}; compared at {self.g.nodes[main].output[0]!r}")
            nodes, neurons, end = [main], [], self.g.nodes[main].output[0]
        return _Segment(layer, nodes, end, neurons, notes)

    # -- running

    def run(self, feeds: dict[str, np.ndarray]) -> None:
        for name, a in feeds.items():
            self.vals[name] = _as_val(a, self.storage)
        for layer in self.unmapped:
            self.report.rows.append(Row(len(self.report.rows) + 1, layer.name,
                                        str(layer.entry.get("source", {}).get("op", "?")),
                                        layer.kind, True, "?", [], error=(
                                            "no node of the model matches this layer (wrong "
                                            "--model?)" if layer.kind in _LAYER_OPS else
                                            f"layer kind {layer.kind!r} is not one the "
                                            "verifier runs")))
        for i in range(len(self.g.nodes)):
            if i in self.done:
                continue
            if i in self.segments:
                self._run_layer(self.segments[i])
            else:
                self._run_op(i)

    def _input(self, tensor: str) -> _Val:
        return self.vals.get(tensor, _Val(None))

    def _image_tensor(self, tensor: str) -> str:
        """The image behind a flattened tensor (through Flatten, 2-D Reshape, Identity)."""
        for _ in range(16):
            i = self.g.producer.get(tensor)
            if i is None:
                return tensor
            n = self.g.nodes[i]
            a = self.ort.get(n.input[0]) if n.input else None
            if n.op_type in ("Flatten", *_PASS) or (n.op_type == "Reshape" and a is not None
                                                    and a.ndim == 4):
                tensor = n.input[0]
            else:
                return tensor
        return tensor

    def _borrow(self, i: int, reason: str | None) -> None:
        n = self.g.nodes[i]
        for o in n.output:
            if o in self.ort:
                self.vals[o] = _as_val(self.ort[o], self.storage)
        if reason is not None:
            self.report.not_verified.append({"name": self.g.names[i], "op": n.op_type,
                                             "reason": reason})

    def _dest(self, tensor: str) -> tuple[int, int] | None:
        a = self.ort.get(tensor)
        if a is None or a.ndim != 4:
            return None
        return int(a.shape[3]), int(a.shape[2])

    # -- exported layers

    def _geometry(self, seg: _Segment) -> dict[str, Any]:
        e = seg.layer.entry
        geo: dict[str, Any] = {"strides": _xy(e, "strides", (1, 1)),
                               "dilation": _xy(e, "dilations", (1, 1)),
                               "groups": int(e.get("groups") or 1)}
        if seg.layer.kind == "transposed":
            geo["kernel_offset"] = _xy(e, "kernel_offset", None)
        else:
            geo["offset"] = _xy(e, "offset", None)
        missing = [k for k in ("offset", "kernel_offset") if k in geo and geo[k] is None]
        if missing:
            k = e.get("kernel") or {}
            pads = _pads_from_node(self.g, seg.nodes[0])
            if pads is None or not k:
                raise VerifyError(f"the manifest gives no {missing[0]} (padding unknown) and "
                                  f"node {self.g.names[seg.nodes[0]]!r} does not say it "
                                  "either")
            top, left = pads[0], pads[1]
            kh, kw = int(k["height"]), int(k["width"])
            dx, dy = geo["dilation"]
            if seg.layer.kind == "transposed":
                geo["kernel_offset"] = ((kw // 2) * dx - (kw - 1) * dx + left,
                                        (kh // 2) * dy - (kh - 1) * dy + top)
            else:
                geo["offset"] = ((kw // 2) * dx - left, (kh // 2) * dy - top)
            note = f"the manifest has no {missing[0]}: taken from the model's pads"
            if note not in seg.notes:
                seg.notes.append(note)
        return geo

    def _layer_kernel(self, seg: _Segment, x: R.Image, w: np.ndarray, b: np.ndarray | None,
                      out_dtype: Any = None) -> R.Image:
        e = seg.layer.entry
        kind = seg.layer.kind
        arr = seg.layer.arrays
        if kind == "batch_normalization":
            return R.batch_normalization(x, arr["gamma"], arr["beta"], arr["mean"],
                                         arr["variance"], epsilon=float(e["epsilon"]),
                                         out_dtype=out_dtype)
        dest = self._dest(seg.end)
        if kind == "fully_connected":
            y = R.fully_connected(x, w, b, out_dtype=out_dtype)
            rs = e.get("reshape")
            if rs is not None:
                if rs.get("target") != "rows":
                    raise VerifyError(f"reshape target {rs.get('target')!r} is not one the "
                                      "verifier runs (rows, subpixel)")
                shp = rs["shape"]
                y = R.reshape(y, (shp["height"], shp["width"], shp["channels"]))
            return y
        geo = self._geometry(seg)
        if kind == "subpixel":
            r = int(e["subpixel"]["factor"])
            out = e.get("output_shape") or {}
            if dest is None and out.get("height") and out.get("width"):
                dest = (int(out["width"]), int(out["height"]))
            if dest is None:
                raise VerifyError("the size of the sub-pixel output is unknown")
            return R.subpixel_convolution(x, w, b, factor=r, dest_size=dest,
                                          offset=geo["offset"], strides=geo["strides"],
                                          dilation=geo["dilation"], out_dtype=out_dtype)
        if dest is None:
            raise VerifyError(f"ONNX Runtime gives no 4-D output for {seg.end!r}")
        if kind == "convolution":
            return R.convolution(x, w, b, dest_size=dest, offset=geo["offset"],
                                 strides=geo["strides"], dilation=geo["dilation"],
                                 groups=geo["groups"], out_dtype=out_dtype)
        if kind == "depthwise":
            return R.depthwise_convolution(x, w, b, dest_size=dest, offset=geo["offset"],
                                           strides=geo["strides"], dilation=geo["dilation"],
                                           out_dtype=out_dtype)
        if kind == "transposed":
            return R.transposed_convolution(x, w, b, dest_size=dest,
                                            kernel_offset=geo["kernel_offset"],
                                            strides=geo["strides"], dilation=geo["dilation"],
                                            groups=geo["groups"], out_dtype=out_dtype)
        raise VerifyError(f"layer kind {kind!r} is not one the verifier runs")

    def _run_segment(self, seg: _Segment, x: R.Image) -> tuple[R.Image, R.Image]:
        """(result, result before the segment's neurons)."""
        arr = seg.layer.arrays
        pre = self._layer_kernel(seg, x, arr.get("weights", np.zeros(0)), arr.get("bias"))
        y = pre
        for kind, alpha, _ in seg.neurons:
            y = R.neuron(y, kind, alpha=alpha)
        return y, pre

    def _layer_bound(self, seg: _Segment, x: R.Image, pre: R.Image, y: R.Image,
                     like: np.ndarray, u_in: float) -> np.ndarray | float:
        """What float16 roundings explain of one layer's error (module docstring)."""
        u_w = self.u_w if seg.layer.kind != "batch_normalization" else 0.0
        if u_in == 0 and u_w == 0 and self.u_s == 0:
            return 0.0
        ax = R.Image(np.abs(x.data).astype(np.float32), x.channels)
        if seg.layer.kind == "batch_normalization":
            arr = seg.layer.arrays
            k_img = R.batch_normalization(ax, np.abs(arr["gamma"]), np.zeros_like(arr["beta"]),
                                          np.zeros_like(arr["mean"]), arr["variance"],
                                          epsilon=float(seg.layer.entry["epsilon"]))
        else:
            k_img = self._layer_kernel(seg, ax, np.abs(seg.layer.arrays["weights"]), None,
                                       out_dtype=np.float32)
        k = _as_onnx(_Val(k_img, self._flat(seg)), like)
        p = _as_onnx(_Val(pre, self._flat(seg)), like)
        q = _as_onnx(_Val(y, self._flat(seg)), like)
        if k is None or p is None or q is None:
            return np.inf
        lip = math.prod(n[2] for n in seg.neurons)
        bound = lip * ((u_in + u_w) * k + self.u_s * np.abs(p)) + \
            self.u_s * len(seg.neurons) * np.abs(q)
        return 1.01 * bound

    def _flat(self, seg: _Segment) -> str | None:
        rs = seg.layer.entry.get("reshape")
        if rs is not None and self.ort.get(seg.end) is not None and \
                self.ort[seg.end].ndim == 2:
            return str(rs.get("source_order", "CHW"))
        return None

    def _run_layer(self, seg: _Segment) -> None:
        self.done.update(seg.nodes)
        main = self.g.nodes[seg.nodes[0]]
        like = self.ort.get(seg.end)
        row = Row(len(self.report.rows) + 1, seg.layer.name, main.op_type, seg.layer.kind, True,
                  seg.end, [] if like is None else list(like.shape), notes=seg.notes)
        self.report.rows.append(row)
        self.report.layers_checked += 1
        x_val = self._input(main.input[0])
        try:
            if like is None:
                raise VerifyError(f"ONNX Runtime did not give tensor {seg.end!r}")
            if x_val.image is None:
                raise VerifyError(f"its input {main.input[0]!r} is not an image the reference "
                                  "executor holds")
            # isolated: ONNX Runtime's input, rounded to the storage type
            src_t = self._image_tensor(main.input[0])
            x_iso = _as_val(self.ort[src_t], self.storage).image
            if x_iso is None:
                raise VerifyError(f"ONNX Runtime's {src_t!r} is not an image")
            y_iso, pre_iso = self._run_segment(seg, x_iso)
            u_in = self.u_s
            bound = self._layer_bound(seg, x_iso, pre_iso, y_iso, like, u_in)
            row.isolated = self._check(_Val(y_iso, self._flat(seg)), like, bound)
            y, _ = self._run_segment(seg, x_val.image)
            self.vals[seg.end] = _Val(y, self._flat(seg))
            row.chained = self._check(self.vals[seg.end], like, self._chain_extra(seg.end))
        except (VerifyError, ValueError, KeyError) as e:
            row.error = f"{type(e).__name__}: {e}" if not isinstance(e, VerifyError) else str(e)
            self._borrow_tensor(seg.end)

    def _borrow_tensor(self, tensor: str) -> None:
        if tensor in self.ort:
            self.vals[tensor] = _as_val(self.ort[tensor], self.storage)

    # -- weightless operators

    def _run_op(self, i: int) -> None:
        n = self.g.nodes[i]
        op = n.op_type
        out = n.output[0] if n.output else ""
        like = self.ort.get(out)
        if op in _WEIGHTED:
            why = self._why_not_exported(i)
            self._borrow(i, f"not in the export{why}: ONNX Runtime's value used")
            return
        if like is None or like.dtype.kind != "f" or op in _QUIET:
            self._borrow(i, None)
            return
        ins = [self._input(t) for t in n.input if t]
        if op in _PASS:
            self.vals[out] = ins[0]
            return
        if op == "Flatten" or (op == "Reshape" and like.ndim == 2):
            v = ins[0]
            axis = int(self.g.attrs(i).get("axis", 1)) if op == "Flatten" else 1
            if v.image is not None and axis == 1 and like.shape[0] == v.image.batch:
                self.vals[out] = _Val(v.image, v.flat or "CHW")
                return
            self._borrow(i, "a flatten the reference executor does not model")
            return
        try:
            fn = self._op_fn(i)
        except VerifyError as e:
            self._borrow(i, str(e))
            return
        if fn is None:
            self._borrow(i, "no MPS kernel in the reference executor")
            return
        if any(v.image is None for v in ins):
            self._borrow(i, "an input is not an image the reference executor holds")
            return
        row = Row(len(self.report.rows) + 1, self.g.names[i], op, op, False, out,
                  list(like.shape))
        try:
            iso_in = [_as_val(self.ort[t], self.storage).image for t in n.input if t]
            if any(v is None for v in iso_in):
                raise VerifyError("ONNX Runtime's inputs are not images")
            y_iso, bound = fn(iso_in, True)
            row.isolated = self._check(_Val(y_iso), like, bound)
            y, _ = fn([v.image for v in ins], False)
            self.vals[out] = _Val(y)
            row.chained = self._check(self.vals[out], like, self._chain_extra(out))
        except ValueError as e:
            if "multiple of 4" in str(e):  # a model MPS cannot run as it is
                self._borrow(i, str(e))
                return
            row.error = str(e)
            self._borrow_tensor(out)
        self.report.rows.append(row)

    def _why_not_exported(self, i: int) -> str:
        name = self.g.names[i]
        for x in self.not_exported:
            if x.get("name") == name:
                return f" ({x.get('reason')})"
        return ""

    def _op_fn(self, i: int) -> Any:
        """A function (images, isolated) -> (result, explained bound), or None."""
        n = self.g.nodes[i]
        op = n.op_type
        a = self.g.attrs(i)
        u_s, out = self.u_s, n.output[0]
        like = self.ort[out]

        def fin(y: R.Image, lip_in: np.ndarray | float, iso: bool) -> tuple[R.Image, Any]:
            if not iso or u_s == 0:
                return y, 0.0
            q = _as_onnx(_Val(y), like)
            return y, 1.01 * (u_s * lip_in + u_s * (np.abs(q) if q is not None else np.inf))

        def absval(img: R.Image) -> np.ndarray:
            return np.abs(img.nchw()).reshape(like.shape) if img.nchw().size == like.size \
                else np.inf

        if op in _NEURONS:
            kind, alpha, lip = _neuron(self.g, i)
            return lambda xs, iso: fin(R.neuron(xs[0], kind, alpha=alpha),
                                       lip * absval(xs[0]), iso)
        if op in ("Add", "Sum") and len(n.input) == 2:
            def add(xs: list[R.Image], iso: bool) -> tuple[R.Image, Any]:
                return fin(R.add(xs[0], xs[1]), absval(xs[0]) + absval(xs[1]), iso)
            return add
        if op == "Concat":
            if int(a.get("axis", 1)) != 1 or like.ndim != 4:
                raise VerifyError("a concatenation not along channels")

            def cat(xs: list[R.Image], iso: bool) -> tuple[R.Image, Any]:
                y = R.concatenate(xs)
                return fin(y, np.abs(y.nchw()), iso)
            return cat
        if op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
            return self._pool_fn(i, fin)
        if op == "Reshape":
            raise VerifyError("a reshape to an image that no exported layer records: "
                              "MPSNNReshape reads HWC order (export with --reshape "
                              "NAME=H,W,C)")
        return None

    def _pool_fn(self, i: int, fin: Any) -> Any:
        n = self.g.nodes[i]
        op = n.op_type
        a = self.g.attrs(i)
        like = self.ort[n.output[0]]
        if like.ndim != 4:
            raise VerifyError("pooling of a tensor that is not 4-D")
        src = self.ort.get(n.input[0])
        if src is None or src.ndim != 4:
            raise VerifyError("pooling of a tensor that is not 4-D")
        h, w = src.shape[2], src.shape[3]
        mode = "max" if "Max" in op else "average"
        dest = (int(like.shape[3]), int(like.shape[2]))
        if op.startswith("Global"):
            kh, kw, st, dl, pads, zero = h, w, (1, 1), (1, 1), [0, 0, 0, 0], (0, 0)
        else:
            kh, kw = (int(v) for v in a["kernel_shape"])
            sy, sx = (int(v) for v in a.get("strides", [1, 1]))
            dy, dx = (int(v) for v in a.get("dilations", [1, 1]))
            st, dl = (sx, sy), (dx, dy)
            auto = a.get("auto_pad", b"NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else str(auto)
            if auto in ("SAME_UPPER", "SAME_LOWER"):
                if dy > 1 or dx > 1:  # ONNX Runtime leaves the dilation out of the padding
                    raise VerifyError(f"auto_pad={auto} with dilations: ONNX Runtime and the "
                                      "ONNX specification disagree on its padding")
                pads = [0, 0, 0, 0]
                for j, (size, k, s, d) in enumerate(((h, kh, sy, dy), (w, kw, sx, dx))):
                    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                    begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
                    pads[j], pads[j + 2] = begin, total - begin
            elif auto == "VALID":
                pads = [0, 0, 0, 0]
            else:
                pads = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
            zero = (0, 0)
            if mode == "average" and int(a.get("count_include_pad", 0)):
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    raise VerifyError("count_include_pad with asymmetric padding: no "
                                      "MPSCNNPoolingAverage zeroPadSize expresses it")
                zero = (pads[1], pads[0])
        offset = ((kw // 2) * dl[0] - pads[1], (kh // 2) * dl[1] - pads[0])

        def pool(xs: list[R.Image], iso: bool) -> tuple[R.Image, Any]:
            kw_args = {"kernel": (kw, kh), "dest_size": dest, "offset": offset,
                       "strides": st, "dilation": dl, "zero_pad_size": zero}
            y = R.pooling(xs[0], mode, **kw_args)
            if not iso or self.u_s == 0:
                return y, 0.0
            ax = R.Image(np.abs(xs[0].data).astype(np.float32), xs[0].channels)
            k = R.pooling(ax, mode, **kw_args).nchw()
            return fin(y, k, iso)
        return pool

    # -- comparison

    def _chain_extra(self, tensor: str) -> float:
        """What float16 roundings explain of a chained error (module docstring)."""
        if self.ort16 is None or tensor not in self.ort16:
            return 0.0
        a, b = self.ort[tensor].astype(np.float64), self.ort16[tensor].astype(np.float64)
        with np.errstate(invalid="ignore"):
            d = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
            scale = float(np.nanmax(np.abs(a))) if a.size else 0.0
        return 4.0 * d + 4.0 * max(self.u_s, self.u_w) * scale

    def _check(self, v: _Val, like: np.ndarray, extra: np.ndarray | float) -> Check:
        ref = _as_onnx(v, like)
        if ref is None:
            shape = None if v.image is None else list(v.image.shape)
            raise VerifyError(f"the reference result (N, H, W, C)={shape} does not match "
                              f"ONNX Runtime's {list(like.shape)}")
        ort = like.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(ref - ort)
            same = (ref == ort) | (np.isnan(ref) & np.isnan(ort))
            diff = np.where(same, 0.0, diff)
            tol = np.broadcast_to(self.atol + self.rtol * np.abs(ort) + extra, diff.shape)
            ok = bool(np.all(diff <= tol))
            ratio = np.where(diff == 0, 0.0, diff / np.where(tol > 0, tol, np.inf))
            ratio = np.where((diff > 0) & (tol == 0), np.inf, ratio)
            ratio = np.where(np.isnan(diff), np.inf, ratio)
            worst = float(np.max(ratio)) if ratio.size else 0.0
            max_abs = float(np.max(diff)) if diff.size else 0.0
            scale = float(np.nanmax(np.abs(ort))) if ort.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        return Check(max_abs, max_rel, worst, ok)


# ----------------------------------------------------------------------- entry point


def verify(outdir: str | os.PathLike[str], model: str | os.PathLike[str], *,
           input: np.ndarray | str | os.PathLike[str] | None = None,
           atol: float = 1e-4, rtol: float = 1e-4, storage: str | None = None,
           seed: int = 0) -> Report:
    """Check the export in ``outdir`` against the ONNX ``model``; see the module docstring.

    ``input``: an array or a .npy path for the model's input (default: a seeded standard
    normal sample, ``seed``). ``storage``: the MPS image type, "float16" or "float32"
    (default: the manifest's weight type). Raises :class:`VerifyError` when nothing can be
    compared (a corrupt export, an unreadable model); divergences are in the report.
    """
    onnx = _onnx()
    if atol < 0 or rtol < 0 or not (math.isfinite(atol) and math.isfinite(rtol)):
        raise VerifyError(f"atol and rtol must be finite and >= 0, got {atol}, {rtol}")
    doc, layers = load_export(outdir)
    wdt = str(doc.get("weights_dtype", "float32"))
    st = np.dtype(storage or wdt)
    if st not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise VerifyError(f"storage must be float16 or float32, got {storage!r}")
    mpath = os.fspath(model)
    try:
        proto = onnx.load(mpath)
    except FileNotFoundError:
        raise VerifyError(f"model file not found: {mpath}") from None
    except Exception as e:
        raise VerifyError(f"cannot read {mpath} as ONNX: {type(e).__name__}: {e}") from None
    graph = _Graph(proto)
    if isinstance(input, (str, os.PathLike)):
        given = np.load(os.fspath(input), allow_pickle=False)
        what = os.fspath(input)
    else:
        given = None if input is None else np.asarray(input)
        what = "the array given" if input is not None else f"seeded standard normal (seed {seed})"
    feeds = _input_feeds(graph, given, seed)
    what += "; shape " + ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    names = [o for n in graph.nodes for o in n.output if o]
    m = _with_outputs(graph, names)
    fetch = [o.name for o in m.graph.output]
    try:
        got = _ort_session(m).run(fetch, feeds)
    except Exception as e:
        raise VerifyError(f"ONNX Runtime cannot run {mpath}: {type(e).__name__}: {e}") from None
    ort = {**feeds, **dict(zip(fetch, got))}
    u_w = U16 if wdt == "float16" else 0.0
    ort16 = None
    if st == np.float16 or u_w:
        weights = {str(x.entry.get("source", {}).get("weights")) for x in layers}
        m16 = _float16_rounded(graph, m, st == np.float16, weights if u_w else set())
        feeds16 = {k: v.astype(st).astype(np.float32) for k, v in feeds.items()}
        ort16 = dict(zip(fetch, _ort_session(m16).run(fetch, feeds16)))
    report = Report(os.fspath(outdir), mpath, what, st.name, wdt, float(atol), float(rtol))
    recurrent = [x for x in layers if x.kind in verify_rnn.RECURRENT_KINDS]
    layers = [x for x in layers if x.kind not in verify_rnn.RECURRENT_KINDS]
    ex = _Executor(graph, layers, ort, ort16, st, u_w, float(atol), float(rtol), report,
                   list(doc.get("skipped", [])) + list(doc.get("unsupported", [])))
    ex.run({k: (v.astype(st).astype(np.float32)) for k, v in feeds.items()})
    if recurrent:  # checked node by node, against ONNX Runtime running each node alone
        done = verify_rnn.check_layers(graph, recurrent, ort, report, _ort_session, Check, Row)
        report.not_verified = [x for x in report.not_verified if x["name"] not in done]
    return report
