"""Evaluates with numpy what an ONNX graph computes from constants alone: weights an
exporter left as a small program (``ConstantOfShape`` of a shape, ``Transpose(W)``,
``Reshape``/``Cast``/``Mul`` of an initializer) and, once the graph inputs' dims are
known, the shape arithmetic around a flatten (``Shape -> Gather -> Unsqueeze -> Concat ->
Reshape``, ``Slice``, ``Range``...).

Only the operators in :data:`OPS` are evaluated, each by the ONNX definition of the
node's opset (attribute or input form); anything else, a graph input, an unknown shape, a
value too large (:data:`MAX_ELEMENTS`) or a malformed node gives "not constant" (None),
with the reason in :attr:`ConstEval.why`. Nothing here runs a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["MAX_ELEMENTS", "OPS", "Computed", "ConstEval"]

# the largest tensor evaluated (elements): a 1 GiB float32 weight; a broadcast value
# (ConstantOfShape, Expand) is a view and costs nothing until a later op copies it
MAX_ELEMENTS = 1 << 28
# depth of the constant subgraph followed back from a tensor
_MAX_DEPTH = 64

_ONNX_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16,
               6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64,
               12: np.uint32, 13: np.uint64}


class _NotConstant(Exception):
    pass


class _TooDeep(_NotConstant):
    """Not remembered: the same tensor may be within reach from a nearer start."""


@dataclass
class Computed:
    """A tensor's value and what it came from: ``parts`` the initializers (and Constant
    node outputs) it is computed from, ``ops`` the operators on the way, ``from_shapes``
    whether a ``Shape``/``Size`` of a graph tensor entered it (a shape, not a weight)."""

    value: np.ndarray
    parts: tuple[str, ...]
    ops: tuple[str, ...]
    from_shapes: bool


def _check_size(shape: Any, what: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise _NotConstant(f"{what}: negative dimension in {list(dims)}")
    if math.prod(dims) > MAX_ELEMENTS:
        raise _NotConstant(f"{what}: {list(dims)} is {math.prod(dims)} elements, more than "
                           f"{MAX_ELEMENTS} (refused rather than allocated)")
    return dims


def _ints(a: np.ndarray) -> list[int]:
    if a.dtype.kind not in "iu":
        raise _NotConstant(f"expected integers, got {a.dtype}")
    return [int(v) for v in np.asarray(a).ravel()]


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise _NotConstant(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


class ConstEval:
    """Evaluator over one graph. ``producer``: tensor -> node; ``leaf(name)``: the array of
    an initializer or Constant output (None if ``name`` is not one); ``shape(name)``: a
    graph tensor's known dims (None entries unknown); ``opset``: the default domain's."""

    def __init__(self, producer: dict[str, Any], leaf: Callable[[str], np.ndarray | None],
                 shape: Callable[[str], list[int | None] | None], opset: int) -> None:
        self.producer, self.leaf, self.shape, self.opset = producer, leaf, shape, opset
        self.why: dict[str, str] = {}
        self._small: dict[str, Computed] = {}  # results kept: small ones and views
        self._bad: dict[str, str] = {}  # tensors found not constant, and why

    def reset(self) -> None:
        """Forget cached results (the known shapes changed)."""
        self._small.clear()
        self._bad.clear()
        self.why.clear()

    def get(self, name: str) -> Computed | None:
        """``name``'s value when computed from constants (and known shapes) only."""
        if name in self._small:
            return self._small[name]
        if name in self._bad:
            self.why[name] = self._bad[name]
            return None
        try:
            c = self._eval(name, {}, 0)
        except _NotConstant as e:
            self.why[name] = str(e)
            return None
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
                ZeroDivisionError, MemoryError) as e:
            self.why[name] = f"{type(e).__name__}: {e}"  # a malformed node: not constant
            return None
        v = c.value
        if v.nbytes <= 1 << 20 or (v.base is not None and v.size and 0 in v.strides):
            self._small[name] = c
        return c

    # -- the walk

    def _eval(self, name: str, memo: dict[str, Computed], depth: int) -> Computed:
        if name in memo:
            return memo[name]
        if name in self._small:
            return self._small[name]
        a = self.leaf(name)
        if a is not None:
            c = Computed(np.asarray(a), (name,), (), False)
            memo[name] = c
            return c
        if name in self._bad:
            raise _NotConstant(self._bad[name])
        node = self.producer.get(name)
        if node is None:
            raise _NotConstant(f"{name!r} is a graph input")
        try:
            return self._node(node, name, memo, depth)
        except _TooDeep:
            raise
        except _NotConstant as e:
            for out in node.output:  # remembered: a deep graph is walked once, not n times
                if out and out not in memo:
                    self._bad[out] = str(e)
            raise

    def _node(self, node: Any, name: str, memo: dict[str, Computed], depth: int
              ) -> Computed:
        if depth > _MAX_DEPTH:
            raise _TooDeep(f"{name!r}: constant subgraph deeper than {_MAX_DEPTH}")
        if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
            raise _NotConstant(f"{name!r} is computed by {node.op_type}, which is not "
                               "evaluated")
        op = node.op_type
        ins: list[Computed | None] = []
        from_shapes = False
        if op in ("Shape", "Size"):
            outs, from_shapes, parts, ops = self._shape_op(node, memo, depth), True, (), ()
        else:
            for t in node.input:
                ins.append(self._eval(t, memo, depth + 1) if t else None)
            vals = [None if c is None else c.value for c in ins]
            outs = OPS[op](self, node, vals)
            parts = tuple(dict.fromkeys(p for c in ins if c for p in c.parts))
            ops = tuple(dict.fromkeys(o for c in ins if c for o in c.ops))
            from_shapes = any(c.from_shapes for c in ins if c)
        for out, v in zip(node.output, outs):
            if out:
                v = np.asarray(v)
                _check_size(v.shape, f"{op} output {out!r}")
                memo[out] = Computed(v, parts, (*ops, op) if op not in ops else ops,
                                     from_shapes)
        if name not in memo:
            raise _NotConstant(f"{op} gives no output {name!r}")
        return memo[name]

    def _shape_op(self, node: Any, memo: dict[str, Computed], depth: int
                  ) -> list[np.ndarray]:
        """Shape/Size of a tensor: its known dims, or those of its constant value."""
        t = node.input[0]
        dims = self.shape(t)
        if dims is None or None in dims:
            try:
                dims = list(self._eval(t, memo, depth + 1).value.shape)
            except _NotConstant:
                pass
        a = {x.name: x for x in node.attribute}
        rank = None if dims is None else len(dims)
        if node.op_type == "Shape" and rank is not None:
            start = a["start"].i if "start" in a else 0
            end = a["end"].i if "end" in a else rank
            start = min(max(start + rank if start < 0 else start, 0), rank)
            end = min(max(end + rank if end < 0 else end, 0), rank)
            dims = dims[start:end]  # type: ignore[index]
        if dims is None or None in dims:
            raise _NotConstant(f"the shape of {t!r} is not known (fix the input dims)")
        if node.op_type == "Size":
            return [np.array(math.prod(dims), np.int64)]  # type: ignore[arg-type]
        return [np.array(dims, np.int64)]

    def attr(self, node: Any, key: str, default: Any = None) -> Any:
        for x in node.attribute:
            if x.name == key:
                from onnx import helper

                return helper.get_attribute_value(x)
        return default

    def axes(self, node: Any, vals: list[Any], since: int) -> list[int] | None:
        """``axes`` of a node that takes it as an attribute before opset ``since`` and as
        input 1 from it on."""
        if self.opset < since:
            v = self.attr(node, "axes")
            return None if v is None else [int(x) for x in v]
        if len(vals) > 1 and vals[1] is not None:
            return _ints(vals[1])
        return None


# ----------------------------------------------------------------------- the operators


def _constant(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    from onnx import numpy_helper

    for x in node.attribute:
        if x.name == "value":
            _check_size(x.t.dims, "Constant")
            return [numpy_helper.to_array(x.t)]
        if x.name in ("value_float", "value_int"):
            return [np.array(x.f if x.name == "value_float" else x.i,
                             np.float32 if x.name == "value_float" else np.int64)]
        if x.name in ("value_floats", "value_ints"):
            return [np.array(list(x.floats) if x.name == "value_floats" else list(x.ints),
                             np.float32 if x.name == "value_floats" else np.int64)]
    raise _NotConstant("a Constant without a numeric value")


def _cast(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    to = _ONNX_TYPES.get(int(ev.attr(node, "to", 0)))
    if to is None:
        raise _NotConstant(f"Cast to ONNX type {ev.attr(node, 'to')}")
    return [vals[0].astype(to)]


def _reshape(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    x = vals[0]
    if ev.opset < 5:
        shape = [int(v) for v in ev.attr(node, "shape", [])]
    else:
        shape = _ints(vals[1])
    allowzero = int(ev.attr(node, "allowzero", 0))
    out = [x.shape[i] if d == 0 and not allowzero and i < x.ndim else d
           for i, d in enumerate(shape)]
    if out.count(-1) > 1:
        raise _NotConstant(f"Reshape to {shape}: more than one -1")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or x.size % known:
            raise _NotConstant(f"Reshape of {list(x.shape)} to {shape}")
        out[out.index(-1)] = x.size // known
    if math.prod(out) != x.size:
        raise _NotConstant(f"Reshape of {list(x.shape)} to {shape}")
    return [x.reshape(out)]


def _transpose(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    perm = ev.attr(node, "perm")
    return [np.transpose(vals[0], None if perm is None else [int(p) for p in perm])]


def _unsqueeze(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    x = vals[0]
    axes = ev.axes(node, vals, 13)
    if axes is None:
        raise _NotConstant("Unsqueeze without axes")
    rank = x.ndim + len(axes)
    shape = list(x.shape)
    for ax in sorted(_axis(a, rank) for a in axes):
        shape.insert(ax, 1)
    return [x.reshape(shape)]


def _squeeze(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    x = vals[0]
    axes = ev.axes(node, vals, 13)
    if axes is None:
        return [np.squeeze(x)]
    axes = [_axis(a, x.ndim) for a in axes]
    if any(x.shape[a] != 1 for a in axes):
        raise _NotConstant(f"Squeeze of axes {axes} of shape {list(x.shape)}")
    return [np.squeeze(x, axis=tuple(axes))]


def _constant_of_shape(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    shape = _check_size(_ints(vals[0]), "ConstantOfShape")
    v = ev.attr(node, "value")
    fill = np.zeros(1, np.float32) if v is None else _numpy(v)
    return [np.broadcast_to(fill.reshape(()), shape)]  # a view: no memory


def _numpy(t: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[..., list[Any]]:
    def run(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
        a, b = vals[0], vals[1]
        _check_size(np.broadcast_shapes(a.shape, b.shape), node.op_type)
        return [np.asarray(fn(a, b)).astype(a.dtype, copy=False)]
    return run


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":  # ONNX integer division truncates toward zero
        if np.any(b == 0):
            raise _NotConstant("integer division by zero")
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -q, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def _mod(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    a, b = vals[0], vals[1]
    if a.dtype.kind in "iu" and np.any(b == 0):
        raise _NotConstant("Mod by zero")
    fmod = int(ev.attr(node, "fmod", 0))
    return [(np.fmod(a, b) if fmod else np.mod(a, b)).astype(a.dtype, copy=False)]


def _unary(fn: Callable[[Any], Any]) -> Callable[..., list[Any]]:
    def run(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
        with np.errstate(all="ignore"):
            return [np.asarray(fn(vals[0])).astype(vals[0].dtype, copy=False)]
    return run


def _variadic(fn: Callable[..., Any]) -> Callable[..., list[Any]]:
    def run(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
        out = vals[0]
        for v in vals[1:]:
            out = fn(out, v)
        return [np.asarray(out).astype(vals[0].dtype, copy=False)]
    return run


def _compare(fn: Callable[[Any, Any], Any]) -> Callable[..., list[Any]]:
    return lambda ev, node, vals: [np.asarray(fn(vals[0], vals[1]))]


def _gather(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    x, idx = vals[0], vals[1]
    axis = _axis(int(ev.attr(node, "axis", 0)), x.ndim)
    i = np.asarray(idx).astype(np.int64)
    n = x.shape[axis]
    if np.any((i < -n) | (i >= n)):
        raise _NotConstant(f"Gather index out of range for dim {n}")
    return [np.take(x, np.where(i < 0, i + n, i), axis=axis)]


def _concat(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    parts = [v for v in vals if v is not None]
    axis = _axis(int(ev.attr(node, "axis", 0)), parts[0].ndim)
    return [np.concatenate(parts, axis=axis)]


def _slice(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    x = vals[0]
    if ev.opset < 10:
        starts = [int(v) for v in ev.attr(node, "starts", [])]
        ends = [int(v) for v in ev.attr(node, "ends", [])]
        axes = ev.attr(node, "axes")
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(vals[1]), _ints(vals[2])
        axes = _ints(vals[3]) if len(vals) > 3 and vals[3] is not None else None
        steps = _ints(vals[4]) if len(vals) > 4 and vals[4] is not None else [1] * len(starts)
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        raise _NotConstant("Slice with inconsistent starts/ends/axes/steps")
    index: list[slice] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[_axis(a, x.ndim)] = slice(s, e, st)  # python clamps as ONNX does
    return [x[tuple(index)]]


def _range(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in vals[:3])
    if delta == 0:
        raise _NotConstant("Range with delta 0")
    n = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    _check_size((n,), "Range")
    return [(start + np.arange(n, dtype=start.dtype) * delta).astype(start.dtype)]


def _flatten(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    x = vals[0]
    axis = int(ev.attr(node, "axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis <= x.ndim:
        raise _NotConstant(f"Flatten axis {axis} of rank {x.ndim}")
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


def _expand(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    shape = np.broadcast_shapes(vals[0].shape, tuple(_ints(vals[1])))
    _check_size(shape, "Expand")
    return [np.broadcast_to(vals[0], shape)]


def _tile(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    reps = _ints(vals[1])
    _check_size([d * r for d, r in zip(vals[0].shape, reps)], "Tile")
    return [np.tile(vals[0], reps)]


def _reduce(fn: Callable[..., Any], since: int) -> Callable[..., list[Any]]:
    def run(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
        x = vals[0]
        axes = ev.axes(node, vals, since)
        keep = bool(ev.attr(node, "keepdims", 1))
        if axes is None and int(ev.attr(node, "noop_with_empty_axes", 0)):
            return [x]
        ax = None if not axes else tuple(_axis(a, x.ndim) for a in axes)
        return [np.asarray(fn(x, axis=ax, keepdims=keep)).astype(x.dtype, copy=False)]
    return run


def _where(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    return [np.where(vals[0], vals[1], vals[2])]


def _split(ev: ConstEval, node: Any, vals: list[Any]) -> list[Any]:
    x = vals[0]
    axis = _axis(int(ev.attr(node, "axis", 0)), x.ndim)
    if ev.opset < 13:
        sizes = ev.attr(node, "split")
    else:
        sizes = _ints(vals[1]) if len(vals) > 1 and vals[1] is not None else None
    n = len(node.output)
    if sizes is None:
        if x.shape[axis] % n:
            raise _NotConstant("Split into unequal parts without sizes")
        sizes = [x.shape[axis] // n] * n
    if sum(sizes) != x.shape[axis]:
        raise _NotConstant(f"Split sizes {list(sizes)} of dim {x.shape[axis]}")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


OPS: dict[str, Callable[..., list[Any]]] = {
    "Constant": _constant,
    "Identity": lambda ev, node, vals: [vals[0]],
    "Cast": _cast,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "ConstantOfShape": _constant_of_shape,
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply),
    "Div": _binary(_div), "Mod": _mod,
    "Pow": _binary(np.power),
    "Max": _variadic(np.maximum), "Min": _variadic(np.minimum),
    "Neg": _unary(np.negative), "Abs": _unary(np.abs), "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil), "Round": _unary(np.round), "Sqrt": _unary(np.sqrt),
    "Sign": _unary(np.sign), "Reciprocal": _unary(np.reciprocal),
    "Not": lambda ev, node, vals: [np.logical_not(vals[0])],
    "Equal": _compare(np.equal), "Less": _compare(np.less),
    "Greater": _compare(np.greater), "LessOrEqual": _compare(np.less_equal),
    "GreaterOrEqual": _compare(np.greater_equal),
    "And": _compare(np.logical_and), "Or": _compare(np.logical_or),
    "Where": _where,
    "Shape": lambda ev, node, vals: [],  # handled by ConstEval._shape_op
    "Size": lambda ev, node, vals: [],
    "Gather": _gather,
    "Concat": _concat,
    "Slice": _slice,
    "Range": _range,
    "Flatten": _flatten,
    "Expand": _expand,
    "Tile": _tile,
    "Split": _split,
    "ReduceProd": _reduce(np.prod, 18), "ReduceSum": _reduce(np.sum, 13),
    "ReduceMax": _reduce(np.max, 18), "ReduceMin": _reduce(np.min, 18),
}
