"""Learned tensors of ONNX ops that are not weight layers, each exported with its MPS role:

- ``Add``/``Sub``/``Mul``/``Div`` of a constant and an image (a rank-4 NCHW map, or a rank-2
  (N, C) vector as a 1x1 image) become kind "arithmetic": MPSCNNAdd/Subtract/Multiply/Divide
  with the constant as an MPSImage, its broadcast strides 0 on the axes where it holds one
  value. A constant MPS cannot broadcast that way (along N, larger than the other operand,
  or on a tensor that is not an image such as a (N, T, C) sequence) becomes a "tensor".
- kind "tensor" (a raw tensor for a custom Metal kernel, or for an MPS kernel whose data
  source takes it as it is): LayerNormalization and InstanceNormalization scale and bias,
  PRelu slopes, the table of an embedding ``Gather``, the constant first operand of a
  ``MatMul``, and any other floating constant an op reads as data.
- LSTM/GRU/RNN are recurrent layers: :mod:`.rnn`.
"""

from __future__ import annotations

from typing import Any

from ... import geometry as mf
from ...plan import Layer, TensorRef, is_float
from .graph import Graph

ARITHMETIC = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide"}
_ROLE = {"Add": "shift", "Sub": "shift", "Mul": "scale", "Div": "scale", "PRelu": "slope",
         "Gather": "table", "MatMul": "weight"}
_NORM_ROLES = {1: "scale", 2: "shift"}


def image_constant(x: list[int | None] | None, c: tuple[int, ...]
                   ) -> tuple[int, int, int] | None:
    """(channels, height, width) of constant shape ``c`` as an MPS image broadcast against
    an operand of shape ``x`` (NCHW, or (N, C) as a 1x1 image), or None when MPS's
    per-axis strides of 0 or 1 cannot express the broadcast."""
    if x is None or len(x) not in (2, 4) or len(c) > len(x):
        return None
    padded = (1,) * (len(x) - len(c)) + tuple(c)
    if padded[0] != 1:
        return None  # broadcasting along N
    for cd, xd in zip(padded[1:], x[1:]):
        if cd != 1 and xd is not None and cd != xd:
            return None  # the constant would make the result larger than the image
    if len(x) == 2:
        return padded[1], 1, 1
    return padded[1], padded[2], padded[3]


def arithmetic(g: Graph, node: Any) -> None:
    """An Add/Sub/Mul/Div with a constant operand: an "arithmetic" layer, else "tensor"."""
    consts = [g.const(i) for i in node.input[:2]]
    if len(node.input) != 2 or not any(r is not None and is_float(r.dtype) for r in consts):
        return  # two computed operands: MPS runs it without weights
    if all(r is not None for r in consts):
        tensors(g, node, "operand", "both operands are constants (a computation the "
                "exporter did not fold)")
        return
    pos = 0 if consts[0] is not None else 1
    ref = consts[pos]
    assert ref is not None
    x = node.input[1 - pos]
    chw = image_constant(g.shape(x), ref.shape)
    op = node.op_type
    if chw is None:
        s = g.shape(x)
        tensors(g, node, _ROLE[op], f"an {op} with a constant of shape {list(ref.shape)} on "
                f"a tensor of shape {s}: not an MPS image broadcast (strides 0/1 per axis)")
        return
    c, h, w = chw
    s = g.shape(x) or [None] * 4
    hw = (1, 1) if len(s) == 2 else (s[2], s[3])
    geo = {"op": ARITHMETIC[op], "constant_operand": "primary" if pos == 0 else "secondary",
           "constant_shape": {"height": h, "width": w, "channels": c},
           "broadcast_strides": {"x": int(w != 1), "y": int(h != 1),
                                 "feature_channels": int(c != 1)},
           "input_shape": mf.image(hw[0], hw[1], s[1]),
           "output_shape": mf.image(hw[0], hw[1], s[1])}
    image = TensorRef(ref.name, (1, c, h, w), ref.dtype,
                      lambda: ref.load().reshape(1, c, h, w))
    source = {"format": "onnx", "node": g.name(node), "op": op, "input": x,
              "output": node.output[0]}
    layer = Layer(g.name(node), "arithmetic", "arithmetic", source, image, geometry=geo,
                  carried=[ref.name, *getattr(ref, "parts", ())])
    layer.notes.append(f"MPSCNN{ARITHMETIC[op].capitalize()} with the constant {ref.name!r} "
                       f"as its {geo['constant_operand']} image")
    g.plan.layers.append(layer)


def tensor_layer(g: Graph, node: Any, ref: TensorRef, role: str, name: str,
                 note: str) -> Layer:
    """A kind "tensor" layer holding ``ref`` as it is in the source."""
    data = [i for i in node.input if i and g.const(i) is None]
    source = {"format": "onnx", "node": g.name(node), "op": node.op_type,
              "input": data[0] if data else None, "output": node.output[0]}
    layer = Layer(name, "tensor", "tensor", source, ref, geometry={"role": role},
                  carried=[ref.name])
    layer.notes.append(note)
    return layer


def tensors(g: Graph, node: Any, role: str | None, why: str,
            roles: dict[int, str] | None = None) -> None:
    """Every floating constant ``node`` reads as data, as "tensor" layers named
    NODE.ROLE (NODE.ROLE2, ... when a role repeats). For an Add/Sub/Mul/Div the layer says
    which operand the constant is (``constant_operand``: primary is the first, as in
    MPS's arithmetic): ``c - x`` and ``c / x`` are not a shift or scale of x, so their
    constant's role is "operand"."""
    refs = g.data_constants(node)
    seen: dict[str, int] = {}
    for ref in refs:
        pos = _position(g, node, ref)
        r = (roles or {}).get(pos, role or "operand")
        binary = node.op_type in ARITHMETIC and len(node.input) == 2 and pos in (0, 1)
        if binary and pos == 0 and node.op_type in ("Sub", "Div"):
            r = "operand"
        seen[r] = seen.get(r, 0) + 1
        name = f"{g.name(node)}.{r}" + (str(seen[r]) if seen[r] > 1 else "")
        what = f"{node.op_type} {r}"
        if binary:
            what += f" (its {'first' if pos == 0 else 'second'} operand)"
        layer = tensor_layer(g, node, ref, r, name, f"{what}: {why}")
        if binary:
            layer.geometry["constant_operand"] = "primary" if pos == 0 else "secondary"
        g.plan.layers.append(layer)


def _position(g: Graph, node: Any, ref: TensorRef) -> int:
    """The input position at which ``node`` reads ``ref`` (through an Identity or a
    DequantizeLinear, whose output is named otherwise), -1 if none."""
    for pos, t in enumerate(node.input):
        if t and (t == ref.name or g.const(t) is ref):
            return pos
    return -1


def norm(g: Graph, node: Any) -> None:
    """LayerNormalization / InstanceNormalization scale and bias."""
    a = g.attrs(node)
    eps = a.float("epsilon", 1e-5)
    if node.op_type == "LayerNormalization":
        why = (f"LayerNormalization over axis {a.int('axis', -1)} (epsilon {eps}) has no "
               "MPSCNN kernel; for a custom Metal kernel")
    else:
        why = (f"the gamma/beta of MPSCNNInstanceNormalization (epsilon {eps}), through its "
               "data source")
    tensors(g, node, None, why, _NORM_ROLES)


def prelu(g: Graph, node: Any) -> None:
    tensors(g, node, "slope", "the per-channel slopes of MPSCNNNeuronPReLU (its `a` array)")


def gather(g: Graph, node: Any) -> None:
    ref = g.const(node.input[0])
    if ref is not None and is_float(ref.dtype):
        g.plan.layers.append(tensor_layer(
            g, node, ref, "table", f"{g.name(node)}.table",
            "a lookup in a constant table (an embedding): no MPSCNN kernel; for a custom "
            "Metal kernel"))


def leftover(g: Graph, node: Any, why: str) -> None:
    """Floating constants an op without a weight-layer rule reads as data."""
    if g.data_constants(node):
        tensors(g, node, "operand", why)
