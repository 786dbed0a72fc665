"""The state of one verify walk over a graph and what both kinds of step share: the
executor's values, the oracle's, borrowing, and the comparison under the tolerance."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import reference as R
from ..reference.onnx_ops import Kernel, build
from . import tolerance as T
from .files import ExportedLayer, VerifyError
from .graph import Graph, NodeView
from .layers import map_layers
from .patterns import gelu_chains
from .permuted import fc_chains
from .report import Check, Report
from .sequences import ncw_tensors
from .values import Val, as_image, as_oracle, as_val

__all__ = ["PASS", "Walk"]

PASS = frozenset(("Identity", "Dropout"))


class Walk:
    """One run of verify over a graph: the oracle's ``values``, the export's layers, the
    executor's own values (``vals``) and the report being written."""

    def __init__(self, g: Graph, layers: list[ExportedLayer], values: dict[str, np.ndarray],
                 storage: np.dtype, u_w: float, report: Report,
                 not_exported: list[dict[str, Any]]) -> None:
        self.g, self.values, self.report = g, values, report
        self.storage, self.u_s, self.u_w = storage, T.unit(storage), u_w
        self.atol, self.rtol = report.atol, report.rtol
        self.not_exported = not_exported
        self.vals: dict[str, Val] = {}
        self.flattened: set[str] = set()  # tensors the walk holds as their image, flattened
        self.done: set[int] = set()
        # layer name -> per-output-channel bound of requantized weights (quant_bounds)
        self.quant_bounds: dict[str, tuple[np.ndarray | None, str]] = {}
        # node name -> its raw "tensor" layers (LayerNormalization: scale and shift)
        self.tensor_layers: dict[str, list[ExportedLayer]] = {}
        for x in layers:
            if x.kind == "tensor":
                self.tensor_layers.setdefault(str(x.entry.get("source", {}).get("node")),
                                              []).append(x)
        # raw tensors stand in for the model's constants, so a kernel checks the export's
        self.exported: dict[str, np.ndarray] = {}
        for x in layers:
            names = x.entry.get("source", {}).get("tensors") or []
            if x.kind == "tensor" and len(names) == 1 and "tensor" in x.arrays:
                self.exported[str(names[0])] = self._as_model(str(names[0]),
                                                              x.arrays["tensor"])
        self.segments, unmapped = map_layers(g, [x for x in layers if x.kind != "tensor"])
        self.done.update(fc_chains(g, self.segments, values))  # run by their layer
        # every input dim fixed by the model itself: no larger input exists to test with
        self.fixed_size = all(
            vi.type.tensor_type.shape.dim and all(d.HasField("dim_value") and d.dim_value > 0
                                                  for d in vi.type.tensor_type.shape.dim)
            for vi in g.inputs)
        self.unmapped = unmapped
        self.ncw = ncw_tensors(g, values)  # (N, C, L) tensors: images 1 pixel high
        self.fused = gelu_chains(g)  # node -> the chain of nodes one MPS kernel computes
        self.progress: Any = None  # called with a line of progress, or None

    def _as_model(self, name: str, a: np.ndarray) -> np.ndarray:
        """A raw tensor in the shape the graph gives its constant, when the two differ by
        axes of size 1 only (an opset-6 PRelu slope [C] that the upgraded copy holds as
        [C, 1, 1]): the same values in the same order."""
        c = self.g.const(name)
        if c is None or c.shape == a.shape or c.size != a.size:
            return a
        if [d for d in c.shape if d != 1] != [d for d in a.shape if d != 1]:
            return a
        return a.reshape(c.shape)

    def _oracle(self, tensor: str, a: np.ndarray | None = None) -> Val:
        """The oracle's value of ``tensor`` (or ``a`` in its place) as the executor holds
        it, rounded to storage."""
        return as_val(self.values[tensor] if a is None else a, self.storage,
                      tensor in self.ncw)

    def _ncw(self, tensor: str) -> str | None:
        """"NCW" for a channel-first sequence (:mod:`.sequences`), else None."""
        return "NCW" if tensor in self.ncw else None

    def _input(self, tensor: str) -> Val:
        return self.vals.get(tensor, Val(None))

    def _borrow(self, i: int, reason: str | None) -> None:
        n = self.g.nodes[i]
        for o in n.output:
            if o in self.values:
                self.vals[o] = self._oracle(o)
        if reason is None:
            self.report.shape_operators += 1
        else:
            self.report.not_verified.append({"name": self.g.names[i], "op": n.op_type,
                                             "reason": reason})

    def _dest(self, tensor: str) -> tuple[int, int] | None:
        a = self.values.get(tensor)
        shape = tuple(a.shape) if a is not None else self.g.shapes.get(tensor)
        if shape is not None and len(shape) == 3:  # 1 pixel high: (N, C, L) or (N, L, C)
            return (int(shape[2]), 1) if tensor in self.ncw else (int(shape[1]), 1)
        if shape is None or len(shape) != 4:
            return None
        return int(shape[3]), int(shape[2])

    def _image_tensor(self, tensor: str) -> str:
        """The image behind a flattened tensor (through Flatten, 2-D Reshape, Identity)."""
        for _ in range(16):
            i = self.g.producer.get(tensor)
            if i is None:
                return tensor
            n = self.g.nodes[i]
            if tensor in self.flattened or n.op_type in PASS:
                tensor = n.input[0]
            else:
                return tensor
        return tensor

    def _delta(self, img: R.Image, tensor: str) -> np.ndarray:
        """|img - the oracle's value of tensor|, NHWC (inf when the oracle has none)."""
        ref = self.values.get(tensor)
        v = None if ref is None else as_val(ref.astype(np.float64), np.float32,
                                            tensor in self.ncw).image
        if v is None or v.shape != img.shape:
            return np.full(img.shape, np.inf)
        return np.abs(img.nhwc() - v.nhwc())

    def _check(self, y: Val, like: np.ndarray, explained_nhwc: np.ndarray,
               part_nhwc: np.ndarray | None = None) -> Check:
        ref = as_oracle(y, like)
        if ref is None:
            shape = None if y.image is None else list(y.image.shape)
            raise VerifyError(f"the reference result (N, H, W, C)={shape} does not match "
                              f"the oracle's {list(like.shape)}")
        extra = as_oracle(Val(as_image(explained_nhwc), y.flat), like)
        part = None if part_nhwc is None else as_oracle(Val(as_image(part_nhwc), y.flat), like)
        return T.check(ref, like, self.atol, self.rtol, np.inf if extra is None else extra,
                       part)

    def _unjudged(self, nodes: list[int], what: str) -> None:
        """Nodes the oracle gives no value for: computed and passed on, not compared."""
        for j in nodes:
            self.report.not_verified.append({
                "name": self.g.names[j], "op": self.g.nodes[j].op_type,
                "reason": f"the oracle gives no value for {what}: computed by the reference "
                          "executor and passed on, not compared"})

    def _kernel(self, i: int) -> Kernel | None:
        return build(NodeView(self.g, i, self.values, self.exported))

    def _on_image(self, i: int, src: str, constant: Any = None) -> str:
        """Per-element node ``i`` run on image ``src`` (:meth:`.OpSteps._on_image`)."""
        raise NotImplementedError
