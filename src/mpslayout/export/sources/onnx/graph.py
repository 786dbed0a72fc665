"""The ONNX graph as the export readers see it: the structure checks, shape inference (with
the graph inputs' dims fixed by ``input_dims`` where given), and lookups (the constant
behind a tensor, its inferred shape, single consumers, the pointwise ops a layer's output
passes through), plus typed node attributes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ... import geometry as mf
from ...attrs import as_text
from ...plan import ComputedRef, Layer, Overrides, Plan, SkipLayer, TensorRef, is_float
from .attributes import Attrs as _Attrs
from .const_eval import ConstEval
from .dequantize import dequantized
from .fold import record
from .tensors import tensor_ref

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
# operand positions that are not data (shapes, axes, indices, Resize's roi/scales/sizes,
# Clip's bounds, Pad's pads and value, Pow's exponent, slice starts/ends/steps): a float
# constant there is not a learned tensor. LSTM/GRU/RNN: sequence_lens, initial states.
NOT_DATA: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Clip": (1, 2),
    "Pad": (1, 2, 3), "Pow": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,),
    "Unsqueeze": (1,), "Squeeze": (1,), "Split": (1,), "ReduceMean": (1,),
    "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL2": (1,), "TopK": (1,), "Gather": (1,), "GatherElements": (1,),
    "ConstantOfShape": (0,), "Range": (0, 1, 2), "OneHot": (1, 2), "CumSum": (1,),
    "Where": (0,), "LSTM": (4, 5, 6), "GRU": (4, 5), "RNN": (4, 5),
    "Identity": (0,),  # an alias: its readers see the constant through it
}

# ONNX elem types of floating tensors: FLOAT, FLOAT16, DOUBLE, BFLOAT16
_FLOAT_TYPES = frozenset((1, 10, 11, 16))

# operators that compute a parameter (a Resize scale, a shape) from constants
_PARAM_ARITHMETIC = frozenset(("Concat", "Cast", "Mul", "Div", "Add", "Sub", "Floor",
                               "Ceil", "Identity"))

# ----------------------------------------------------------------------- the graph


# inputs each op this reader looks into must have (it reads them by position)
_MIN_INPUTS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "MatMul": 2,
               "BatchNormalization": 5, "Flatten": 1, "Reshape": 2, "DepthToSpace": 1,
               "Transpose": 1, "Gather": 1, **{op: 1 for op in POINTWISE}}


class Graph:
    """The model's graph and what the readers look up in it; collects the plan."""

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
        self.dtypes: dict[str, int] = {}  # ONNX elem types shape inference gave
        self._derived: dict[str, bool] = {}
        self.consumed: set[int] = set()
        self.names: dict[int, str] = {}
        for i, node in enumerate(self.nodes):
            self.names[id(node)] = node.name or f"{node.op_type}_{i}"
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.ev = ConstEval(self.producer, self._leaf, self.shape, int(opset))

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

    def graph_inputs(self) -> dict[str, Any]:
        """The graph's real inputs (not initializers listed as inputs, as IR < 4 does)."""
        return {i.name: i for i in self.model.graph.input if i.name not in self.protos}

    def fix_input_dims(self, model: Any, dims: Mapping[str, Sequence[int]]) -> None:
        """Write ``dims`` into ``model``'s graph inputs, after checking each against the
        model: a known input name, its rank, and any concrete dim the model already has."""
        inputs = {i.name: i for i in model.graph.input if i.name not in self.protos}
        for name, want in dims.items():
            if name not in inputs:
                raise ValueError(f"input_dims names {name!r}, which is not an input of the "
                                 f"model; its inputs are {', '.join(map(repr, inputs)) or 'none'}")
            tt = inputs[name].type.tensor_type
            have = list(tt.shape.dim) if tt.HasField("shape") else None
            if have is not None and len(have) != len(want):
                raise ValueError(f"input_dims[{name!r}] gives {len(want)} dims {list(want)}, but "
                                 f"input {name!r} has rank {len(have)}")
            for i, d in enumerate(have or []):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != want[i]:
                    raise ValueError(f"input_dims[{name!r}] dim {i} is {want[i]}, but the model "
                                     f"fixes it to {d.dim_value}")
            tt.ClearField("shape")
            for v in want:
                tt.shape.dim.add().dim_value = int(v)

    def infer_shapes(self) -> None:
        """Shapes with ``input_dims`` written into the inputs, constant propagation of the
        shape subgraphs and, where needed and possible, one ONNX Runtime run (:mod:`.shapes`).
        Records the inputs' dims in ``plan.inputs``."""
        from .shapes import infer

        infer(self)

    def name(self, node: Any) -> str:
        return self.names[id(node)]

    def absorb(self, node: Any) -> None:
        """``node`` now belongs to a layer built after it: no layer of its own, whether the
        walk has already written one (it is dropped) or reaches it later (it is consumed)."""
        self.consumed.add(id(node))
        self.plan.layers = [x for x in self.plan.layers
                            if x.source.get("node") != self.name(node)]

    def attrs(self, node: Any) -> _Attrs:
        return _Attrs(node, self.name(node))

    def _leaf(self, name: str) -> np.ndarray | None:
        """An initializer's or Constant node's array (the evaluator's leaves)."""
        if name not in self.protos:
            return None
        if name not in self.refs:  # a Constant node's tensor is named by the node's output
            self.refs[name] = replace(tensor_ref(self.protos[name], self.dir), name=name)
        return self.refs[name].load()

    def const(self, name: str) -> TensorRef | None:
        """The constant tensor behind ``name`` (through Identity nodes, a DequantizeLinear
        of constants, or any computation from constants alone: :meth:`computed`), else
        None."""
        seen, start = 0, name
        while name not in self.protos:
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity" or seen > 64:
                return dequantized(self, name) or self.computed(start)
            name, seen = node.input[0], seen + 1
        if name not in self.refs:  # a Constant node's tensor is named by the node's output
            self.refs[name] = replace(tensor_ref(self.protos[name], self.dir), name=name)
        return self.refs[name]

    def computed(self, name: str) -> ComputedRef | None:
        """``name`` as a :class:`ComputedRef` when the graph computes it from initializers
        and Constant nodes alone (:mod:`.const_eval`; not from a graph tensor's shape)."""
        known = self.refs.get(name)
        if isinstance(known, ComputedRef):
            return known
        if name not in self.producer:
            return None
        c = self.ev.get(name)
        if c is None or c.from_shapes:
            return None
        v = c.value
        shape, dtype = tuple(v.shape), v.dtype

        def opener() -> np.ndarray:
            again = self.ev.get(name)
            if again is None:
                raise ValueError(f"tensor {name!r} could not be computed again: "
                                 f"{self.ev.why.get(name)}")
            return np.asarray(again.value)

        ref = ComputedRef(name, shape, dtype, opener, parts=list(c.parts),
                          origin=" -> ".join(c.ops))
        self.refs[name] = ref
        return ref

    def value(self, name: str) -> np.ndarray | None:
        """The value of a shape, axes or index operand: a constant, or what the graph
        computes from constants and known shapes; else None."""
        ref = self.const(name)
        if ref is not None:
            return ref.load()
        c = self.ev.get(name)
        return None if c is None else c.value

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
        return flat(ref, n)

    def add_layer(self, layer: Layer, folded: Any, through: list[str]) -> None:
        """Append ``layer`` with what it folded (an fold.Folded) and the pointwise ops
        its output passes through."""
        record(self, layer, folded)
        if through:
            layer.source["through"] = through
        self.plan.layers.append(layer)

    def only_parameters(self, node: Any, depth: int = 0) -> bool:
        """True when everything ``node`` computes ends at operand positions that are not
        data (NOT_DATA), through shape arithmetic (Concat, Cast, ...): the TorchScript
        exporter without constant folding builds Resize's scales as Concat(Constant,
        Constant), which carries no learned tensor."""
        if depth > 8 or node.op_type not in _PARAM_ARITHMETIC:
            return False
        outs = [o for o in node.output if o]
        if not outs or any(o in self.graph_outputs for o in outs):
            return False
        for o in outs:
            for c in self.consumers.get(o, []):
                positions = [k for k, t in enumerate(c.input) if t == o]
                if all(k in NOT_DATA.get(c.op_type, ()) for k in positions):
                    continue
                if c.op_type in _PARAM_ARITHMETIC and self.only_parameters(c, depth + 1):
                    continue
                return False
        return True

    def data_constants(self, node: Any) -> list[TensorRef]:
        """The floating-point constants ``node`` reads at data operands (not shapes, axes,
        bounds...: NOT_DATA): the learned tensors it carries."""
        skip = NOT_DATA.get(node.op_type, ())
        out: list[TensorRef] = []
        if self.only_parameters(node):
            return out
        for pos, inp in enumerate(node.input):
            ref = self.const(inp) if inp and pos not in skip else None
            if ref is not None and is_float(ref.dtype):
                out.append(ref)
        return out

    def learned(self, node: Any) -> list[str]:
        """The names of the learned tensors ``node`` reads (:meth:`data_constants`), a
        computed one followed by the floating initializers it is computed from; and a
        floating operand computed from constants alone that the evaluator does not compute
        (an operator it does not know, a size it refuses), with its initializers."""
        out: list[str] = []
        for ref in self.data_constants(node):
            out.append(ref.name)
            out.extend(p for p in getattr(ref, "parts", ())
                       if p in self.refs and is_float(self.refs[p].dtype))
        skip = NOT_DATA.get(node.op_type, ())
        if not self.only_parameters(node):
            for pos, t in enumerate(node.input):
                if t and pos not in skip and self.const(t) is None and \
                        self.constant_only(t) and self.dtypes.get(t, 1) in _FLOAT_TYPES:
                    out.append(t)
                    out.extend(self._leaves(t))
        return list(dict.fromkeys(out))

    def constant_only(self, name: str) -> bool:
        """Whether ``name`` is computed from initializers and Constant nodes alone (no
        graph input, no shape of one), whether or not the evaluator computes it."""
        stack = [name]
        memo = self._derived
        while stack:
            t = stack[-1]
            if t in memo:
                stack.pop()
                continue
            node = self.producer.get(t)
            if t in self.protos:
                memo[t] = True
            elif node is None or node.op_type in ("Shape", "Size") or not node.input or \
                    any(a.type in (5, 10) for a in node.attribute):  # graph attributes
                memo[t] = False
            else:
                todo = [u for u in node.input if u and u not in memo]
                if todo:
                    stack.extend(todo)
                    continue
                memo[t] = all(memo[u] for u in node.input if u)
            stack.pop()
        return memo[name]

    def _leaves(self, name: str) -> list[str]:
        """The floating initializers a constant-only tensor is computed from."""
        out, stack, seen = [], [name], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in self.protos:
                if t in self.refs and is_float(self.refs[t].dtype):
                    out.append(t)
            elif t in self.producer:
                stack.extend(u for u in self.producer[t].input if u)
        return sorted(out)

    def constant_node(self, node: Any) -> bool:
        """Whether every output of ``node`` is computed from constants alone."""
        outs = [o for o in node.output if o]
        return bool(outs) and all(o not in self.graph_outputs and self.constant_only(o)
                                  for o in outs)

    def in_constant_subgraph(self, node: Any) -> bool:
        """Whether ``node`` only computes a constant (a weight's preprocessing): the layer
        that reads its result carries what it reads."""
        outs = [o for o in node.output if o]
        return bool(outs) and node.op_type not in ("Constant",) and \
            all(o not in self.graph_outputs and self.computed(o) is not None for o in outs)

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
        """Run a layer builder; a SkipLayer lists the node with the learned tensors it
        leaves behind."""
        try:
            fn(self, node)
        except SkipLayer as e:
            self.list_node(node, str(e), unsupported=e.unsupported)

    def list_node(self, node: Any, reason: str, *, unsupported: bool = True) -> None:
        """List ``node`` as not exported, naming its learned tensors."""
        tensors = self.learned(node)
        if unsupported:
            self.plan.refuse(self.name(node), node.op_type, reason, tensors)
        else:
            self.plan.skip(self.name(node), node.op_type, reason, tensors)

    def kernel(self, node: Any
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



def flat(ref: TensorRef, n: int) -> TensorRef:
    """``ref`` viewed as a length-``n`` vector."""
    if ref.shape == (n,):
        return ref
    if isinstance(ref, ComputedRef):  # keeps what it is computed from
        return replace(ref, shape=(n,), opener=lambda: ref.load().reshape(n))
    return TensorRef(ref.name, (n,), ref.dtype, lambda: ref.load().reshape(n))
