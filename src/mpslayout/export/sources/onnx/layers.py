"""The ONNX ops that become weight layers: Conv (with a DepthToSpace after it as a sub-pixel
convolution), ConvTranspose, Gemm/MatMul (with the (C, H, W) of a flatten before it and a
Reshape after it), and a BatchNormalization left unfolded. Each builder reads one node of
an :class:`~.graph.Graph`, folds what follows it (:mod:`.fold`) and appends a
layer, or raises SkipLayer saying why not.

A MatMul with a constant (C, O) operand on a (N, T, C) sequence (attention projections) is
exported as a fully connected layer with a note: MPS applies it at each of the T positions
(the sequence as an image of T pixels, a 1x1 kernel), which is what the MatMul computes;
its weights are then usable by MPSCNNFullyConnected or a 1x1 MPSCNNConvolution alike.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ... import geometry as mf
from ...plan import Layer, SkipLayer, TensorRef, folded_bias, is_float
from ...reshape import reshape_layer
from . import axes
from .fold import fold_chain
from .graph import POINTWISE, Graph
from .permute import absorb_constants, fold_columns, permuted_flatten


def absmax(w: TensorRef, factor: float = 1.0) -> Callable[[], float]:
    """max |w| * factor, computed when first asked (only a Mul/Div fold needs it)."""
    cache: list[float] = []

    def get() -> float:
        if not cache:
            a = w.load()
            # abs and max are exact in a float type: no float64 copy of the whole weight
            # (integers widen first: |-128| does not fit int8)
            a = a if a.dtype.kind == "f" else a.astype(np.float64)
            cache.append(float(np.abs(a).max(initial=0)) * factor)
        return cache[0]

    return get


CONV1D_NOTE = ("a 1-D convolution (3-D weight): exported as an MPS convolution of kernel "
               "height 1 whose width axis is the sequence; run it on the (N, C, L) "
               "activations as an image 1 pixel high and L wide (docs/layouts.md section 1)")


def conv(g: Graph, node: Any) -> None:
    name = g.name(node)
    w5 = g.weight(node, 1, "weight")
    if w5 is not None and len(w5.shape) == 5:
        raise SkipLayer(f"Conv3d (weight {list(w5.shape)}): MPSCNN has no 3-D convolution",
                        unsupported=True)
    one_d = axes.is_1d(g, node)
    w, a, stride, dil, grp = axes.kernel(g, node)
    o, ig, kh, kw = axes.dims4(w)
    if o % grp:
        raise ValueError(f"node {name!r}: group={grp} does not divide its {o} output channels")
    cin = ig * grp
    b = g.vector(node, 2, o, "bias")
    in_hw = axes.spatial(g, node.input[0], one_d)
    pads = axes.pads(g, node, a, in_hw, (kh, kw), stride, dil, one_d)
    f = fold_chain(g, node.output[0], o, 3 if one_d else 4, 1, absmax(w))
    out, scale, shift = f.out, f.scale, f.shift
    end, nxt, through = g.follow(out)
    source = {"format": "onnx", "node": name, "op": "Conv", "weights": w.name,
              "bias": b.name if b is not None else None, "input": node.input[0],
              "output": end}
    geo = mf.conv_geometry(kh=kh, kw=kw, cin=cin, cout=o, groups=grp, stride=stride,
                           dilation=dil, pads=pads, in_hw=in_hw,
                           out_hw=axes.spatial(g, node.output[0], one_d))
    bias = folded_bias(b, o, name, scale, shift)
    w_scale = None if scale is None else scale.reshape(o, *([1] * (len(w.shape) - 1)))
    layer = Layer(name, "convolution", "conv", source, w, bias,
                  {"layout": "OIHW", "groups": grp}, geo, w_scale)
    if one_d:
        layer.notes.append(CONV1D_NOTE)
    if nxt is not None and nxt.op_type == "DepthToSpace" and grp == 1 and not one_d:
        da = g.attrs(nxt)
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
            source["depth_to_space"] = g.name(nxt)
            g.consumed.add(id(nxt))
            if mode == "CRD":
                layer.notes.append(f"output channels reordered from DepthToSpace CRD "
                                   f"(c*{r * r} + y*{r} + x) to the sub-pixel order "
                                   f"((y*{r} + x)*{c} + c)")
            g.add_layer(layer, f, through)
            return
    if grp > 1 and ig == 1 and grp == cin:
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
    g.add_layer(layer, f, [])


def conv_transpose(g: Graph, node: Any) -> None:
    name = g.name(node)
    one_d = axes.is_1d(g, node)
    w, a, stride, dil, grp = axes.kernel(g, node)
    cin, og, kh, kw = axes.dims4(w)
    if cin % grp:
        raise ValueError(f"node {name!r}: group={grp} does not divide its {cin} input channels")
    o = og * grp
    b = g.vector(node, 2, o, "bias")
    op = axes.output_padding(g, node, one_d)
    in_hw = axes.spatial(g, node.input[0], one_d)
    auto = a.text("auto_pad", "NOTSET")
    out_shape = a.ints("output_shape")
    if out_shape is not None and one_d:
        out_shape = [1, *out_shape[-1:]]
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
        pads = axes.pads(g, node, a, in_hw, (kh, kw), stride, dil, one_d)
    f = fold_chain(g, node.output[0], o, 3 if one_d else 4, 1, absmax(w))
    out, scale, shift = f.out, f.scale, f.shift
    source = {"format": "onnx", "node": name, "op": "ConvTranspose", "weights": w.name,
              "bias": b.name if b is not None else None, "input": node.input[0],
              "output": out}
    geo = mf.transposed_geometry(kh=kh, kw=kw, cin=cin, cout=o, groups=grp, stride=stride,
                                 dilation=dil, pads=pads, output_padding=op, in_hw=in_hw,
                                 out_hw=axes.spatial(g, node.output[0], one_d))
    w_scale = None
    if scale is not None:  # output channel j*O/grp + o of Wt[j*I/grp + i][o]
        w_scale = np.repeat(scale.reshape(grp, og), cin // grp, axis=0)
        w_scale = w_scale.reshape(*w_scale.shape, *([1] * (len(w.shape) - 2)))
    layer = Layer(name, "transposed", "transposed", source, w,
                  folded_bias(b, o, name, scale, shift),
                  {"layout": "IOHW", "groups": grp}, geo, w_scale)
    if one_d:
        layer.notes.append(CONV1D_NOTE)
    if dil != (1, 1):
        layer.notes.append("kernel_offset with dilation uses (k/2)*d - (k-1)*d + pad, "
                           "extended from docs/layouts.md section 3, Transposed "
                           "convolution (not documented by Apple)")
    g.add_layer(layer, f, [])


def _batches(g: Graph) -> set[int | None]:
    """The batch sizes of the graph's inputs (None when one is not known)."""
    return {None if not d else d[0] for d in g.plan.inputs.values()} or {None}


def flatten_source(g: Graph, a: str) -> tuple[str, tuple[int, int, int] | None, str, str]:
    """What a fully connected layer reading tensor ``a`` sees: (MPS input tensor,
    (H, W, C) of the image flattened into ``a`` or None for a plain vector, flatten
    order, status "plain"/"image"/"unknown")."""
    t = a
    while True:
        node = g.producer.get(t)
        if node is None or node.op_type not in POINTWISE:
            break
        t = node.input[0]
    node = g.producer.get(t)
    src = None
    if node is not None and node.op_type == "Flatten":
        if g.attrs(node).int("axis", 1) == 1:
            src = node.input[0]
    elif node is not None and node.op_type == "Reshape":
        s = g.shape(t)
        if s is not None and len(s) == 2:
            src = node.input[0]
    if src is None:
        s = g.shape(a)
        return a, None, "CHW", ("plain" if s is not None and len(s) >= 2 else "unknown")
    s = g.shape(src)
    batches = _batches(g)
    if s is not None and len(s) >= 3 and s[0] is not None and None not in batches \
            and s[0] not in batches:
        # not a batch of images: rows of a sequence (attention's (T, N, heads, hd) merged
        # to (T*N, C)), each row a vector the layer reads
        return a, None, "CHW", "plain"
    if s is None or None in s[1:]:
        return src, None, "CHW", "unknown"
    if len(s) == 2:
        return src, None, "CHW", "plain"
    if len(s) == 3:  # (N, C, L): a 1 x L image with C channels
        return src, (1, s[2], s[1]), "CHW", "image"
    if len(s) != 4:
        return src, None, "CHW", "unknown"
    t_node = g.producer.get(src)
    if t_node is not None and t_node.op_type == "Transpose" and \
            g.attrs(t_node).ints("perm") == [0, 2, 3, 1]:
        return t_node.input[0], (s[1], s[2], s[3]), "HWC", "image"  # NHWC flattened
    return src, (s[2], s[3], s[1]), "CHW", "image"


def reshape_target(g: Graph, node: Any, n: int) -> tuple[tuple[int, int, int], str, str] | None:
    """(H, W, C), order and output tensor of a Reshape to a 4-D image, else None."""
    s = g.shape(node.output[0])
    dims: list[int | None] | None = None
    if s is not None and len(s) == 4:
        dims = s
    else:
        ref = g.const(node.input[1]) if len(node.input) > 1 else None
        if ref is not None and ref.dtype.kind == "i":
            v = [int(x) for x in ref.load().ravel()]
            if len(v) == 4 and all(x > 0 for x in v[1:]):
                dims = v
    if dims is None or any(x is None for x in dims[1:]):
        return None
    d1, d2, d3 = (int(x or 0) for x in dims[1:])
    if d1 * d2 * d3 != n:
        return None
    nxt = g.sole_consumer(node.output[0])
    if nxt is not None and nxt.op_type == "Transpose" and \
            g.attrs(nxt).ints("perm") == [0, 3, 1, 2]:
        return (d1, d2, d3), "HWC", nxt.output[0]  # reshaped NHWC, then to NCHW
    return (d2, d3, d1), "CHW", node.output[0]


def dense(g: Graph, node: Any) -> None:
    name = g.name(node)
    op = node.op_type
    a = g.attrs(node)
    w = g.const(node.input[1])
    if w is None:
        raise SkipLayer("its second operand is computed, not a constant: a product of two "
                    "activations has no MPSCNN layer", unsupported=True)
    w = g.weight(node, 1, "weight")
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
        b = g.vector(node, 2, o, "bias")
        if b is not None and math.prod(b.shape) == 1 and o != 1:
            raise SkipLayer(f"its bias {b.name!r} is a broadcast scalar")
    else:
        s = g.shape(node.input[0])
        if s is not None and len(s) > 3:
            raise SkipLayer(f"MatMul on a {len(s)}-D tensor is not a fully connected layer")
    given = g.over.get("input_shapes", [name, w.name])
    unfolded: list[str] = []  # why a permute is not folded through a constant's op
    absorbed: list[str] = []  # the source tensors of the constants folded through
    permuted = None if given is not None else permuted_flatten(g, node.input[0], unfolded)
    for why in unfolded:
        g.plan.assumptions.append(f"layer {name!r}: {why}")
    if permuted is not None:  # a permute before the flatten: folded into the columns
        src, hwc, order, status = permuted.image, permuted.hwc, "CHW", "image"
        w = fold_columns(w, permuted, layout, name)
        for n_ in permuted.nodes:
            g.consumed.add(id(n_))
        absorbed = absorb_constants(g, permuted)
    else:
        src, hwc, order, status = flatten_source(g, node.input[0])
    if given is not None:
        c, h, ww = given
        hwc, status = (h, ww, c), "image"
    if status == "unknown":
        # the graph's symbolic dims hide what reaches it (an image flattened, or a sequence
        # merged into rows); fixing the graph input's dims settles either
        what = f"what reaches {node.input[0]!r} (an image flattened, or a sequence reshaped " \
               "into rows)"
        shape_hint = f"--input-shape {name}=C,H,W for a flattened C x H x W image"
        if g.over.input_dims:  # never the hint of a flag already given
            raise SkipLayer(f"{what} is not known even with the given --input-dims (constant "
                            "propagation of the shape subgraph, and ONNX Runtime where "
                            f"installed, could not tell); pass {shape_hint}")
        raise SkipLayer(f"{what} is not known from the graph's symbolic dims; pass "
                        f"--input-dims INPUT=D0,D1,... (or {shape_hint})")
    if hwc is not None and math.prod(hwc) != n:
        raise SkipLayer(f"the image flattened into it is (H, W, C)={hwc}, "
                    f"{math.prod(hwc)} values, but the weight has {n} inputs")
    out_shape = g.shape(out)
    f = fold_chain(g, out, o, len(out_shape) if out_shape else 2, -1,
                   absmax(w, abs(alpha)))
    out, scale, shift = f.out, f.scale, f.shift
    end, nxt, through = g.follow(out)
    reshape = None
    shape_given = g.over.get("reshapes", [name, w.name])
    if shape_given is not None:
        reshape = (tuple(shape_given), "CHW", end)
        if math.prod(shape_given) != o:
            raise ValueError(f"reshapes[{name!r}]={shape_given} holds "
                             f"{math.prod(shape_given)} values but {name!r} has {o} "
                             "outputs")
    elif nxt is not None and nxt.op_type == "Reshape":
        reshape = reshape_target(g, nxt, o)
    w_scale = None
    if scale is not None or alpha != 1.0:
        v = (np.ones(o) if scale is None else scale) * alpha
        w_scale = v.reshape(o, 1) if layout == "OI" else v.reshape(1, o)
    bias = folded_bias(b, o, name, scale, shift, beta)
    source = {"format": "onnx", "node": name, "op": op, "weights": w.name,
              "bias": b.name if b is not None else None, "input": src, "output": out}
    geo = mf.fc_geometry(n_in=n, n_out=o, source=hwc, flatten=order)
    if permuted is not None:
        geo["fully_connected"]["reads"] = permuted.image
        geo["fully_connected"]["folded"] = permuted.record(g)
    params: dict[str, Any] = {"layout": layout}
    if hwc is not None:
        h, ww, c = hwc
        params["input_shape"] = (c, h, ww) if order == "CHW" else (h, ww, c)
        params["flatten"] = order
    if reshape is None:
        layer = Layer(name, "fully_connected", "fc", source, w, bias, params, geo, w_scale)
        if permuted is not None:
            layer.notes.append(
                f"reads image {permuted.image!r} as MPS holds it: the "
                + " -> ".join(f"{x['op']} {x['node']!r}" for x in permuted.record(g))
                + " before the layer is folded into its weights' columns (no MPS kernel "
                "produces the permuted tensor)")
            if permuted.elementwise:
                layer.notes.append(
                    "apply " + ", ".join(f"{n.op_type} {g.name(n)!r}" + _by(permuted, n)
                                         for n in permuted.elementwise)
                    + f" to image {permuted.image!r} before the layer: per element, it "
                    "commutes with the permutation folded into the weights")
        layer.notes.extend(unfolded)
        layer.carried.extend(absorbed)
        if alpha != 1.0 or beta != 1.0:
            layer.notes.append(f"Gemm alpha={alpha}, beta={beta} applied to the weights "
                               "and bias")
        s = g.shape(node.input[0])
        if s is not None and len(s) == 3 and hwc is None:
            layer.notes.append("a MatMul on a (N, T, C) sequence: MPS applies it to each of "
                               "the T positions (an image of T pixels, 1x1 kernel)")
        if nxt is not None and nxt.op_type == "Reshape":
            why = (f"it feeds Reshape {g.name(nxt)!r}, whose target shape is not known: its "
                   "rows are left in source order; pass "
                   + ("" if g.over.input_dims else "--input-dims (or ")
                   + f"--reshape {name}=H,W,C" + ("" if g.over.input_dims else ")")
                   + " if that Reshape makes an image")
            layer.notes.append(why)
            g.plan.assumptions.append(f"layer {name!r}: {why}")
        g.add_layer(layer, f, [])
        return
    shape, rorder, rout = reshape
    source["output"] = rout
    layer = reshape_layer(name, source, w, bias, params, geo, shape, rorder,
                          g.name(nxt) if nxt is not None else None, w_scale)
    layer.notes.extend(unfolded)
    layer.carried.extend(absorbed)
    g.add_layer(layer, f, through)


def _by(permuted: Any, n: Any) -> str:
    """How a folded op with a constant applies it: `` by 0.5``, `` by C per-channel
    values`` (with which side, for ``2 - x``)."""
    if id(n) not in permuted.constants:
        return ""
    k, v = permuted.constants[id(n)]
    what = f"{v!r}" if not isinstance(v, list) else f"{len(v)} per-channel values"
    return f" with {what} as its {'first' if k == 0 else 'second'} operand"


def batch_norm(g: Graph, node: Any) -> None:
    name = g.name(node)
    s = g.shape(node.input[0])
    ref = g.weight(node, 1, "scale")
    if ref is None:
        raise SkipLayer("it has no scale input", unsupported=True)
    c = math.prod(ref.shape)
    refs = {}
    for role, i in (("gamma", 1), ("beta", 2), ("mean", 3), ("variance", 4)):
        r = g.vector(node, i, c, role)
        if r is None:
            raise SkipLayer(f"its {role} input is missing", unsupported=True)
        refs[role] = r
    eps = g.attrs(node).float("epsilon", 1e-5)
    in_hw = (1, 1) if s is not None and len(s) == 2 else g.spatial(node.input[0])
    geo = {"input_channels": c, "output_channels": c, "epsilon": eps,
           "input_shape": mf.image(in_hw[0], in_hw[1], c),
           "output_shape": mf.image(in_hw[0], in_hw[1], c)}
    source = {"format": "onnx", "node": name, "op": "BatchNormalization",
              "weights": None, "bias": None, "input": node.input[0],
              "output": node.output[0], "tensors": {k: v.name for k, v in refs.items()}}
    layer = Layer(name, "batch_normalization", "batch_norm", source, params={},
                  geometry=geo, tensors=refs)
    if g.fold_bn:
        layer.notes.append("not folded: it does not directly follow a single-use "
                           "convolution or fully connected layer")
    g.plan.layers.append(layer)


def matmul(g: Graph, node: Any) -> None:
    """A MatMul with a constant second operand is a fully connected layer; with a constant
    first operand (``W @ x``) its matrix is exported as a "tensor"."""
    from .constants import tensor_layer

    first = g.const(node.input[0])
    if g.const(node.input[1]) is None and first is not None and is_float(first.dtype):
        g.plan.layers.append(tensor_layer(
            g, node, first, "weight", f"{g.name(node)}.weight",
            "the constant first operand of a MatMul (W @ x): no MPSCNN layer multiplies "
            "from the left; for a custom Metal kernel or MPSMatrixMultiplication"))
        return
    dense(g, node)
