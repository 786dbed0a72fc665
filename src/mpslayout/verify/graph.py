"""The graph verify walks: an ONNX ModelProto (NCHW semantics, ONNX op names), whatever
framework the model came from."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from .files import VerifyError

__all__ = ["Graph", "NodeView", "onnx_module"]


def onnx_module() -> Any:
    try:
        import onnx
    except ImportError:
        raise VerifyError("verify needs onnx: pip install mpslayout[oracles]") from None
    return onnx


class Graph:
    """Nodes in order, their names (as the export names them), producers, consumers,
    constants, the opset, and shapes inferred for the given input shapes."""

    def __init__(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]] | None = None
                 ) -> None:
        onnx = onnx_module()
        if not isinstance(model, onnx.ModelProto):
            raise TypeError(f"graph must be an onnx.ModelProto, got {type(model).__name__}")
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
        self.inits = {t.name: t for t in model.graph.initializer}
        self.opset = next((int(o.version) for o in model.opset_import
                           if o.domain in ("", "ai.onnx")), 13)
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._infer(input_shapes or {})
        self._consts: dict[str, np.ndarray | None] = {}
        self._derived: dict[str, bool] = {}

    def _infer(self, input_shapes: Mapping[str, tuple[int, ...]]) -> None:
        onnx = onnx_module()
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        for vi in m.graph.input:
            if vi.name in input_shapes and vi.type.HasField("tensor_type"):
                dims = vi.type.tensor_type.shape.dim
                want = input_shapes[vi.name]
                if len(dims) == len(want):
                    for d, v in zip(dims, want):
                        d.ClearField("dim_param")
                        d.dim_value = int(v)
        try:
            m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
        except Exception:  # inference is a help: unknown shapes come from the oracle
            pass
        for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
            if not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
                if all(d > 0 for d in dims):
                    self.shapes[vi.name] = tuple(dims)

    @property
    def inputs(self) -> list[Any]:
        """The graph inputs that are not initializers (ValueInfoProto)."""
        return [vi for vi in self.model.graph.input if vi.name not in self.inits]

    def attrs(self, i: int) -> dict[str, Any]:
        onnx = onnx_module()
        return {a.name: onnx.helper.get_attribute_value(a) for a in self.nodes[i].attribute}

    def const(self, name: str) -> np.ndarray | None:
        if name in self._consts:
            return self._consts[name]
        onnx = onnx_module()
        value = None
        if name in self.inits:
            value = onnx.numpy_helper.to_array(self.inits[name])
        else:
            i = self.producer.get(name)
            if i is not None and self.nodes[i].op_type == "Constant":
                for a in self.nodes[i].attribute:
                    if a.name == "value":
                        value = onnx.numpy_helper.to_array(a.t)
        self._consts[name] = value
        return value

    def shape_derived(self, name: str) -> bool:
        """Whether ``name`` is computed from constants and tensor shapes only (attention's
        ``1 / sqrt(head_dim)`` from Shape/Gather/Cast/Sqrt): a constant of the model at a
        given input size, which an app computes once when it builds the network."""
        memo = self._derived
        stack = [name]
        while stack:
            t = stack[-1]
            if t in memo:
                stack.pop()
                continue
            i = self.producer.get(t)
            if t in self.inits or (i is not None and self.nodes[i].op_type in
                                   ("Constant", "Shape", "Size")):
                memo[t] = True
            elif i is None or not self.nodes[i].input:
                memo[t] = False
            else:
                todo = [u for u in self.nodes[i].input if u and u not in memo]
                if todo:
                    stack.extend(todo)
                    continue
                memo[t] = all(memo[u] for u in self.nodes[i].input if u)
            stack.pop()
        return memo[name]

    def sole_consumer(self, tensor: str) -> int | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 else None


class NodeView:
    """One node as :mod:`mpslayout.reference.onnx_ops` sees it: attributes, constants,
    and shapes (the oracle's value when it gave one, else inference)."""

    def __init__(self, graph: Graph, i: int, values: Mapping[str, np.ndarray],
                 exported: Mapping[str, np.ndarray] | None = None) -> None:
        n = graph.nodes[i]
        self.op, self.name = n.op_type, graph.names[i]
        self.inputs, self.outputs = list(n.input), list(n.output)
        self.attrs = graph.attrs(i)
        self.opset = graph.opset
        self._graph, self._values = graph, values
        self._exported = exported or {}

    def const(self, tensor: str) -> np.ndarray | None:
        """The constant, as the export wrote it when it did (a raw ``tensor`` layer)."""
        if tensor in self._exported:
            return self._exported[tensor]
        c = self._graph.const(tensor)
        if c is None and tensor in self._values and self._graph.shape_derived(tensor):
            return np.asarray(self._values[tensor])  # fixed once the input size is
        return c

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        v = self._values.get(tensor)
        if v is not None:
            return tuple(int(d) for d in v.shape)
        c = self._graph.const(tensor)
        if c is not None:
            return tuple(c.shape)
        return self._graph.shapes.get(tensor)
