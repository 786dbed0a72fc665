"""Exported layers: which graph nodes each one stands for, and running it from the
export's own files in the reference executor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import reference as R
from ..reference._common import _conv_index, _transposed_index
from ..reference.onnx_ops import Kernel, NotExpressible, arithmetic_kernel, broadcast_strides
from .files import ExportedLayer, VerifyError
from .graph import Graph

__all__ = ["LAYER_OPS", "NEURON_OPS", "Segment", "TapCoverage", "arithmetic_layer",
           "map_layers", "tap_coverage"]

LAYER_OPS = {"convolution": ("Conv",), "depthwise": ("Conv",),
             "transposed": ("ConvTranspose",), "fully_connected": ("Gemm", "MatMul"),
             "subpixel": ("Conv", "Gemm", "MatMul"),
             "batch_normalization": ("BatchNormalization",),
             "arithmetic": ("Add", "Sub", "Mul", "Div", "Sum")}
# single-input activations MPS fuses into a convolution (MPSCNNNeuron types)
NEURON_OPS = frozenset(("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu",
                        "Softplus", "Softsign", "Clip", "PRelu", "HardSwish", "Gelu", "Abs",
                        "Neg", "Exp", "Log", "Sqrt", "Reciprocal"))
_PASS = frozenset(("Identity", "Dropout"))
_ABSORB = frozenset(("BatchNormalization", "DepthToSpace", "Reshape", "Transpose", "Flatten",
                     *_PASS))
_ARITH_OPS = {"add": "MPSCNNAdd", "subtract": "MPSCNNSubtract", "multiply": "MPSCNNMultiply",
              "divide": "MPSCNNDivide"}


@dataclass
class Segment:
    """An exported layer and the graph nodes it stands for: its own node, then the nodes
    it absorbs (a folded batch norm or per-channel Add/Mul, a DepthToSpace, a Reshape) and
    the neurons (``post``) that follow it up to the manifest's output tensor."""

    layer: ExportedLayer
    nodes: list[int]
    end: str
    post: list[int]
    notes: list[str] = field(default_factory=list)
    reads: str | None = None    # a fully connected layer's image, a permute folded away
    pre: list[int] = field(default_factory=list)  # per-element nodes run on that image first
    # a BINARY node of ``pre``: (its constant on the image, verify's own; the manifest's record)
    pre_constants: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    problem: str | None = None  # why the layer cannot be right, found before it runs


def _xy(entry: Mapping[str, Any], key: str, default: tuple[int, int] | None
        ) -> tuple[int, int] | None:
    v = entry.get(key)
    if v is None:
        return default
    return int(v["x"]), int(v["y"])


def _main_node(g: Graph, layer: ExportedLayer) -> int | None:
    src = layer.entry.get("source", {})
    ops = LAYER_OPS.get(layer.kind, ())
    for key in ("node", "layer"):  # Keras exports name the layer, ONNX ones the node
        name = src.get(key)
        if isinstance(name, str) and name in g.by_name:
            i = g.by_name[name]
            return i if g.nodes[i].op_type in ops else None
    names = {src.get("weights"), f"{layer.name}.weight", layer.name}
    for i, n in enumerate(g.nodes):
        if n.op_type in ops and len(n.input) > 1 and n.input[1] in names:
            return i
    return None


def _segment(g: Graph, layer: ExportedLayer) -> Segment | None:
    main = _main_node(g, layer)
    if main is None:
        return None
    src = layer.entry.get("source", {})
    fused = {str(f.get("node")) for f in src.get("fused", []) or [] if isinstance(f, dict)}
    t = g.nodes[main].output[0]
    end = src.get("output") if isinstance(src.get("output"), str) else t
    nodes, post = [main], []
    for _ in range(32):
        if t == end:
            break
        nxt = g.sole_consumer(t)
        if nxt is None:
            break
        n = g.nodes[nxt]
        if g.names[nxt] in fused or (n.op_type == "Add" and not post):
            nodes.append(nxt)  # a folded per-channel constant (or an older bias Add)
        elif n.input[0] != t:
            break
        elif n.op_type in NEURON_OPS:
            nodes.append(nxt)
            post.append(nxt)
        elif n.op_type in _ABSORB:
            nodes.append(nxt)
        else:
            break
        t = n.output[0]
    seg = Segment(layer, nodes, end, post)
    if t != end:
        seg.notes.append(f"the manifest's output tensor {end!r} does not follow node "
                         f"{g.names[main]!r}; compared at {g.nodes[main].output[0]!r}")
        seg.nodes, seg.post, seg.end = [main], [], g.nodes[main].output[0]
    return seg


def map_layers(g: Graph, layers: list[ExportedLayer]
               ) -> tuple[dict[int, Segment], list[ExportedLayer]]:
    """Each layer's segment, by its first node; and the layers no node matches."""
    segs, unmapped = {}, []
    for layer in layers:
        seg = _segment(g, layer)
        if seg is None:
            unmapped.append(layer)
        else:
            segs[seg.nodes[0]] = seg
    return segs, unmapped


def _pads_from_node(g: Graph, i: int) -> list[int] | None:
    """Explicit ONNX pads (top, left, bottom, right) of a Conv/ConvTranspose, for a
    manifest without geometry (a state_dict export); None for auto_pad SAME."""
    a = g.attrs(i)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto != "NOTSET":
        return None
    p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
    return [0, p[0], 0, p[1]] if len(p) == 2 else p  # a 1-D one: height 1, no padding


def _node_xy(g: Graph, i: int, key: str) -> tuple[int, int] | None:
    """A Conv node's strides or dilations as (x, y) (a 1-D one's are along x), or None."""
    v = [int(x) for x in g.attrs(i).get(key, [])]
    if len(v) == 1:
        return v[0], 1
    return (v[1], v[0]) if len(v) == 2 else None


def geometry(g: Graph, seg: Segment) -> dict[str, Any]:
    """Strides, dilation, groups and offset (or kernel_offset) of a convolution layer,
    from the manifest, or from the node's pads when the manifest has none."""
    e = seg.layer.entry
    # a state_dict's manifest has no strides or dilations: the node's
    geo: dict[str, Any] = {
        "strides": _xy(e, "strides", _node_xy(g, seg.nodes[0], "strides") or (1, 1)),
        "dilation": _xy(e, "dilations", _node_xy(g, seg.nodes[0], "dilations") or (1, 1)),
        "groups": int(e.get("groups") or 1)}
    key = "kernel_offset" if seg.layer.kind == "transposed" else "offset"
    geo[key] = _xy(e, key, None)
    if geo[key] is None:
        k = e.get("kernel") or {}
        pads = _pads_from_node(g, seg.nodes[0])
        if pads is None or not k:
            raise VerifyError(f"the manifest gives no {key} (padding unknown) and node "
                              f"{g.names[seg.nodes[0]]!r} does not say it either")
        top, left = pads[0], pads[1]
        kh, kw = int(k["height"]), int(k["width"])
        dx, dy = geo["dilation"]
        if seg.layer.kind == "transposed":
            geo[key] = ((kw // 2) * dx - (kw - 1) * dx + left,
                        (kh // 2) * dy - (kh - 1) * dy + top)
        else:
            geo[key] = ((kw // 2) * dx - left, (kh // 2) * dy - top)
        note = f"the manifest has no {key}: taken from the model's pads"
        if note not in seg.notes:
            seg.notes.append(note)
    return geo


def terms(seg: Segment, x: R.Image) -> int:
    """How many products each output of the layer sums."""
    w = seg.layer.arrays.get("weights")
    if seg.layer.kind in ("batch_normalization", "arithmetic") or w is None:
        return 1
    if seg.layer.kind == "fully_connected":
        return int(np.prod(w.shape[1:]))
    if seg.layer.kind == "depthwise":
        return int(w.shape[1] * w.shape[2])
    return int(np.prod(w.shape[1:]))


@dataclass
class TapCoverage:
    """Which taps of a convolution's kernel read inside its source at this input size, per
    axis (0: width, 1: height): ``unread[axis]`` the taps that never do, ``k`` the kernel
    size, ``n_in`` the source size, ``need`` the smallest source size at which every tap
    reads (None when none is found)."""

    k: tuple[int, int]
    n_in: tuple[int, int]
    unread: tuple[list[int], list[int]]
    need: tuple[int | None, int | None]

    @property
    def none_read(self) -> bool:
        return any(len(u) == k for u, k in zip(self.unread, self.k))

    @property
    def complete(self) -> bool:
        return not any(self.unread)

    def describe(self) -> str:
        parts = []
        for axis, name, what in ((1, "height", "rows"), (0, "width", "columns")):
            if self.unread[axis]:
                parts.append(f"kernel {what} {self.unread[axis]} of {self.k[axis]} never read "
                             f"inside its {self.n_in[axis]}-pixel {name}")
        return "; ".join(parts)


def _unread(kind: str, geo: dict[str, Any], axis: int, k: int, n_in: int, n_out: int
            ) -> list[int]:
    out = []
    for tap in range(k):
        if kind == "transposed":
            _, valid = _transposed_index(n_out, n_in, k, geo["strides"][axis],
                                         geo["kernel_offset"][axis], geo["dilation"][axis], tap)
        else:
            _, valid = _conv_index(n_out, n_in, k, geo["strides"][axis], geo["offset"][axis],
                                   geo["dilation"][axis], tap)
        if not valid.any():
            out.append(tap)
    return out


def tap_coverage(g: Graph, seg: Segment, x: R.Image, dest: tuple[int, int]
                 ) -> TapCoverage | None:
    """Which weights of a convolution this input exercises (a tap that never reads inside
    the source multiplies only padding: a wrong weight there would pass); None for a layer
    that is not a convolution."""
    kind = seg.layer.kind
    if kind not in ("convolution", "depthwise", "transposed", "subpixel"):
        return None
    w = seg.layer.arrays["weights"]
    kh, kw = (w.shape[1], w.shape[2])
    geo = geometry(g, seg)
    r = int(seg.layer.entry.get("subpixel", {}).get("factor", 1)) if kind == "subpixel" else 1
    ks, ns = (kw, kh), (x.width, x.height)
    outs = (dest[0] // r, dest[1] // r)
    unread = tuple(_unread(kind, geo, a, ks[a], ns[a], outs[a]) for a in (0, 1))
    need: list[int | None] = []
    for a in (0, 1):
        if not unread[a]:
            need.append(ns[a])
            continue
        found = None
        for n in range(ns[a] + 1, ns[a] + 4 * ks[a] * max(1, geo["dilation"][a]) + 8):
            # the destination grows with the source as it does here (same stride, pads)
            if kind == "transposed":
                n_out = outs[a] + (n - ns[a]) * geo["strides"][a]
            else:
                n_out = max(1, -(-(n * outs[a]) // ns[a]))
            if not _unread(kind, geo, a, ks[a], n, n_out):
                found = n
                break
        need.append(found)
    return TapCoverage((kw, kh), ns, (unread[0], unread[1]), (need[0], need[1]))


def _constant_image(seg: Segment) -> R.Image:
    e = seg.layer.entry
    data = seg.layer.arrays["constant"]
    c = int((e.get("constant_shape") or {}).get("channels", 0))
    if c < 1 or data.ndim != 4:
        raise VerifyError("an arithmetic layer needs constant_shape.channels and a 4-D "
                          "[ceil(C/4)][H][W][4] constant")
    img = data.astype(np.float32) if data.dtype != np.float32 else data
    return R.Image(np.ascontiguousarray(img[..., :c]) if c <= 2 else img, c)


def run_layer(g: Graph, seg: Segment, x: R.Image, dest: tuple[int, int] | None,
              values: Mapping[str, np.ndarray], *, magnitude: bool = False,
              bias: bool = True, out_dtype: Any = None,
              weights: np.ndarray | None = None) -> R.Image:
    """The layer on image ``x``; with ``magnitude``, on ``|x|`` with ``|w|`` and ``|b|``
    (``bias`` False: without it), in float32: the sum of the absolute terms of each output,
    and (on ``|d|``, without bias) a bound on how far an input error ``d`` moves it.
    ``weights``: run with these (the layer's shape and layout) instead of the export's: a
    per-weight error bound gives what that error moves each output by, at most."""
    e, kind, arr = seg.layer.entry, seg.layer.kind, seg.layer.arrays
    w = arr.get("weights") if weights is None else weights
    b = arr.get("bias")
    if magnitude:
        x = R.Image(np.abs(x.data).astype(np.float32), x.channels)
        w = None if w is None else np.abs(w)
        b = None if b is None or not bias else np.abs(b)
        out_dtype = np.float32
    if kind == "batch_normalization":
        if magnitude:
            beta = np.abs(arr["beta"]) if bias else np.zeros_like(arr["beta"])
            return R.batch_normalization(x, np.abs(arr["gamma"]), beta,
                                         np.zeros_like(arr["mean"]), arr["variance"],
                                         epsilon=float(e["epsilon"]), out_dtype=out_dtype)
        return R.batch_normalization(x, arr["gamma"], arr["beta"], arr["mean"],
                                     arr["variance"], epsilon=float(e["epsilon"]),
                                     out_dtype=out_dtype)
    if kind == "arithmetic":
        # one operation per element: the magnitude of a product or quotient is that of
        # its result, of a sum |x| + |c| (the executor bounds how an input error moves
        # with the kernel's own bound)
        y = arithmetic_layer(g, seg, values, magnitude=magnitude).run([x], out_dtype)
        return R.Image(np.abs(y.data).astype(np.float32), y.channels) if magnitude else y
    if kind == "fully_connected":
        if w.shape[1:3] == (1, 1) and x.height * x.width > 1 and w.shape[3] == x.channels:
            # a projection of every position of a sequence: a 1x1 MPSCNNConvolution
            return R.convolution(x, w, b, dest_size=(x.width, x.height), out_dtype=out_dtype)
        y = R.fully_connected(x, w, b, out_dtype=out_dtype)
        rs = e.get("reshape")
        if rs is not None:
            if rs.get("target") != "rows":
                raise VerifyError(f"reshape target {rs.get('target')!r} is not one the "
                                  "verifier runs (rows, subpixel)")
            shp = rs["shape"]
            y = R.reshape(y, (shp["height"], shp["width"], shp["channels"]))
        return y
    geo = geometry(g, seg)
    if kind == "subpixel":
        out = e.get("output_shape") or {}
        if dest is None and out.get("height") and out.get("width"):
            dest = (int(out["width"]), int(out["height"]))
        if dest is None:
            raise VerifyError("the size of the sub-pixel output is unknown")
        return R.subpixel_convolution(x, w, b, factor=int(e["subpixel"]["factor"]),
                                      dest_size=dest, offset=geo["offset"],
                                      strides=geo["strides"], dilation=geo["dilation"],
                                      out_dtype=out_dtype)
    if dest is None:
        raise VerifyError(f"the oracle gives no 4-D output for {seg.end!r}")
    common = {"dest_size": dest, "strides": geo["strides"], "dilation": geo["dilation"],
              "out_dtype": out_dtype}
    if kind == "convolution":
        return R.convolution(x, w, b, offset=geo["offset"], groups=geo["groups"], **common)
    if kind == "depthwise":
        return R.depthwise_convolution(x, w, b, offset=geo["offset"], **common)
    if kind == "transposed":
        return R.transposed_convolution(x, w, b, kernel_offset=geo["kernel_offset"],
                                        groups=geo["groups"], **common)
    raise VerifyError(f"layer kind {kind!r} is not one the verifier runs")


def arithmetic_layer(g: Graph, seg: Segment, values: Mapping[str, np.ndarray], *,
                     magnitude: bool = False) -> Kernel:
    """The MPSCNN arithmetic kernel of an exported ``arithmetic`` layer: its own constant
    file, read with the manifest's broadcast strides, and the graph operand. With
    ``magnitude``, a sum or difference becomes ``|x| + |c|`` (run it on ``|x|``)."""
    e = seg.layer.entry
    op = str(e.get("op"))
    if op not in _ARITH_OPS:
        raise VerifyError(f"arithmetic op {op!r} is not add, subtract, multiply or divide")
    pos = 0 if e.get("constant_operand") == "primary" else 1
    bs = e.get("broadcast_strides") or {}
    c_strides = (int(bs.get("x", 1)), int(bs.get("y", 1)), int(bs.get("feature_channels", 1)))
    node = g.nodes[seg.nodes[0]]
    img_t = next(t for k, t in enumerate(node.input[:2]) if k != pos)
    out = values.get(node.output[0])
    out_shape = tuple(out.shape) if out is not None else g.shapes.get(node.output[0])
    in_shape = values.get(img_t)
    in_shape = tuple(in_shape.shape) if in_shape is not None else g.shapes.get(img_t)
    if out_shape is None or in_shape is None:
        raise VerifyError(f"the shapes around {g.names[seg.nodes[0]]!r} are unknown")
    try:
        x_strides = broadcast_strides(in_shape, out_shape)
    except NotExpressible as err:
        raise VerifyError(str(err)) from None
    strides = [c_strides, x_strides] if pos == 0 else [x_strides, c_strides]
    const = _constant_image(seg)
    if magnitude and op in ("add", "subtract"):
        op, const = "add", R.Image(np.abs(const.data).astype(np.float32), const.channels)
    return arithmetic_kernel(op, _ARITH_OPS[op], [img_t], strides, {pos: const}, out_shape)
