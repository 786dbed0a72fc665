"""Walks the graph in order: exported layers run from the export's files, weightless
operators through the kernel table (:mod:`mpslayout.reference.onnx_ops`), and anything
else takes the oracle's value and is listed as not verified, with the reason."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import reference as R
from ..reference.onnx_ops import Kernel, NotExpressible, build
from . import tolerance as T
from .files import ExportedLayer, VerifyError
from .graph import Graph, NodeView
from .layers import (
    LAYER_OPS,
    Segment,
    arithmetic_layer,
    map_layers,
    run_layer,
    tap_problem,
    terms,
)
from .report import Check, Report, Row
from .values import Val, as_image, as_oracle, as_val

__all__ = ["Executor"]

_PASS = frozenset(("Identity", "Dropout"))
_WEIGHTED = frozenset(("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"))
# operators that only compute shapes, indices or types: nothing to verify numerically
_SHAPE_ONLY = frozenset(("Shape", "Gather", "Constant", "ConstantOfShape", "Unsqueeze",
                         "Squeeze", "Cast", "Range", "Equal", "Where", "Size", "Expand",
                         "Slice", "Concat", "ReduceProd", "Floor", "Ceil", "Add", "Sub", "Mul",
                         "Div"))


_NO_KERNEL = dict.fromkeys(
    ("LSTM", "GRU", "RNN"), "a recurrent layer: MPS runs it with MPSRNNImageInferenceLayer "
    "(MPSLSTMDescriptor/MPSGRUDescriptor), which this verifier does not run")


class Executor:
    """One run of verify over a graph: the oracle's ``values``, the export's layers."""

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
        self.tensor_layers = {str(x.entry.get("source", {}).get("node")): x for x in layers
                              if x.kind == "tensor"}
        # raw tensors stand in for the model's constants, so a kernel checks the export's
        self.exported: dict[str, np.ndarray] = {}
        for x in layers:
            names = x.entry.get("source", {}).get("tensors") or []
            if x.kind == "tensor" and len(names) == 1 and "tensor" in x.arrays:
                self.exported[str(names[0])] = x.arrays["tensor"]
        self.segments, unmapped = map_layers(g, [x for x in layers if x.kind != "tensor"])
        # every input dim fixed by the model itself: no larger input exists to test with
        self.fixed_size = all(
            vi.type.tensor_type.shape.dim and all(d.HasField("dim_value") and d.dim_value > 0
                                                  for d in vi.type.tensor_type.shape.dim)
            for vi in g.inputs)
        self.unmapped = unmapped

    # -- walking

    def run(self, feeds: dict[str, np.ndarray]) -> None:
        for name, a in feeds.items():
            self.vals[name] = as_val(a, self.storage)
        for layer in self.unmapped:
            self.report.rows.append(Row(
                len(self.report.rows) + 1, layer.name,
                str(layer.entry.get("source", {}).get("op", "?")), layer.kind, True, "?", [],
                error=("no node of the model matches this layer (wrong --model?)"
                       if layer.kind in LAYER_OPS else
                       f"layer kind {layer.kind!r} is not one the verifier runs")))
        for i in range(len(self.g.nodes)):
            if i in self.done:
                continue
            if i in self.segments:
                self._run_layer(self.segments[i])
            else:
                self._run_op(i)

    def _input(self, tensor: str) -> Val:
        return self.vals.get(tensor, Val(None))

    def _borrow(self, i: int, reason: str | None) -> None:
        n = self.g.nodes[i]
        for o in n.output:
            if o in self.values:
                self.vals[o] = as_val(self.values[o], self.storage)
        if reason is None:
            self.report.shape_operators += 1
        else:
            self.report.not_verified.append({"name": self.g.names[i], "op": n.op_type,
                                             "reason": reason})

    def _dest(self, tensor: str) -> tuple[int, int] | None:
        a = self.values.get(tensor)
        shape = tuple(a.shape) if a is not None else self.g.shapes.get(tensor)
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
            if tensor in self.flattened or n.op_type in _PASS:
                tensor = n.input[0]
            else:
                return tensor
        return tensor

    def _delta(self, img: R.Image, tensor: str) -> np.ndarray:
        """|img - the oracle's value of tensor|, NHWC (inf when the oracle has none)."""
        ref = self.values.get(tensor)
        v = None if ref is None else as_val(ref.astype(np.float64), np.float32).image
        if v is None or v.shape != img.shape:
            return np.full(img.shape, np.inf)
        return np.abs(img.nhwc() - v.nhwc())

    def _check(self, y: Val, like: np.ndarray, explained_nhwc: np.ndarray) -> Check:
        ref = as_oracle(y, like)
        if ref is None:
            shape = None if y.image is None else list(y.image.shape)
            raise VerifyError(f"the reference result (N, H, W, C)={shape} does not match "
                              f"the oracle's {list(like.shape)}")
        extra = as_oracle(Val(as_image(explained_nhwc), y.flat), like)
        return T.check(ref, like, self.atol, self.rtol, np.inf if extra is None else extra)

    # -- exported layers

    def _flat(self, seg: Segment) -> str | None:
        rs = seg.layer.entry.get("reshape")
        like = self.values.get(seg.end)
        if rs is not None and like is not None and like.ndim == 2:
            return str(rs.get("source_order", "CHW"))
        return None

    def _layer(self, seg: Segment, x: R.Image, src_t: str) -> tuple[R.Image, np.ndarray]:
        """The layer's result on ``x`` and what rounding and ``x``'s own error explain."""
        dest = self._dest(seg.end)
        pre = run_layer(self.g, seg, x, dest, self.values)
        with np.errstate(invalid="ignore", over="ignore"):  # an unknown input error is inf
            if seg.layer.kind == "arithmetic":
                moved = arithmetic_layer(self.g, seg, self.values).bound(
                    [x], [self._delta(x, src_t)])
            else:  # linear in x: the layer on |d| with |w| and no bias
                moved = run_layer(self.g, seg, as_image(self._delta(x, src_t)), dest,
                                  self.values, magnitude=True, bias=False).nhwc()
        mag = run_layer(self.g, seg, x, dest, self.values, magnitude=True).nhwc()
        u_w = self.u_w if seg.layer.kind != "batch_normalization" else 0.0
        moved = np.where(np.isnan(moved), np.inf, moved)
        err = moved + (terms(seg, x) * T.U32 + u_w) * mag + self.u_s * np.abs(pre.nhwc())
        y = pre
        for j in seg.post:
            k = self._kernel(j)
            if k is None:
                raise VerifyError(f"no reference kernel for {self.g.names[j]!r}")
            nxt = k.run([y], None)
            with np.errstate(invalid="ignore", over="ignore"):
                err = k.bound([y], [err]) + k.stores * self.u_s * np.abs(nxt.nhwc())
            y = nxt
        return y, np.where(np.isnan(err), np.inf, err)

    def _unjudged(self, nodes: list[int], what: str) -> None:
        """Nodes the oracle gives no value for: computed and passed on, not compared."""
        for j in nodes:
            self.report.not_verified.append({
                "name": self.g.names[j], "op": self.g.nodes[j].op_type,
                "reason": f"the oracle gives no value for {what}: computed by the reference "
                          "executor and passed on, not compared"})

    def _run_layer(self, seg: Segment) -> None:
        self.done.update(seg.nodes)
        g = self.g
        main = g.nodes[seg.nodes[0]]
        like = self.values.get(seg.end)
        img_in = next(t for k, t in enumerate(main.input[:2])
                      if seg.layer.kind != "arithmetic" or g.const(t) is None)
        if like is None and self._input(img_in).image is not None:
            try:
                y, _ = self._layer(seg, self._input(img_in).image,  # type: ignore[arg-type]
                                   self._image_tensor(img_in))
                self.vals[seg.end] = Val(y)
                self._unjudged(seg.nodes, f"layer {seg.layer.name!r}'s output {seg.end!r}")
                return
            except (VerifyError, ValueError, KeyError):
                pass  # reported as a row below
        self.report.operators_verified += len(seg.nodes)
        row = Row(len(self.report.rows) + 1, seg.layer.name, main.op_type, seg.layer.kind, True,
                  seg.end, [] if like is None else list(like.shape), notes=seg.notes)
        self.report.rows.append(row)
        self.report.layers_checked += 1
        x_val = self._input(img_in)
        try:
            if like is None:
                raise VerifyError(f"the oracle did not give tensor {seg.end!r}")
            if x_val.image is None:
                raise VerifyError(f"its input {img_in!r} is not an image the reference "
                                  "executor holds")
            dest = self._dest(seg.end)
            problem = None if dest is None else tap_problem(g, seg, x_val.image, dest)
            if problem and self.fixed_size:  # the model's own size: those weights are unused
                row.notes.append(problem.split(", so")[0].replace(
                    "the input is too small to test this layer", "at the model's fixed input "
                    "size") + ": those weights do not affect this model and are not tested")
            elif problem:
                raise VerifyError(problem)
            src_t = self._image_tensor(img_in)
            if src_t in self.values:  # isolated: the oracle's input, rounded to storage
                x_iso = as_val(self.values[src_t], self.storage).image
                if x_iso is None:
                    raise VerifyError(f"the oracle's {src_t!r} is not an image")
                y_iso, err = self._layer(seg, x_iso, src_t)
                row.isolated = self._check(Val(y_iso, self._flat(seg)), like, err)
            y, err = self._layer(seg, x_val.image, src_t)
            self.vals[seg.end] = Val(y, self._flat(seg))
            row.chained = self._check(self.vals[seg.end], like, err)
        except (VerifyError, ValueError, KeyError) as e:
            row.error = str(e) if isinstance(e, VerifyError) else f"{type(e).__name__}: {e}"
            if seg.end in self.values:
                self.vals[seg.end] = as_val(self.values[seg.end], self.storage)

    # -- weightless operators

    def _kernel(self, i: int) -> Kernel | None:
        return build(NodeView(self.g, i, self.values, self.exported))

    def _has_kernel(self, i: int) -> bool:
        try:
            return self._kernel(i) is not None
        except NotExpressible:
            return False

    def _run_op(self, i: int) -> None:
        g = self.g
        n = g.nodes[i]
        op, name = n.op_type, g.names[i]
        out = n.output[0] if n.output else ""
        like = self.values.get(out)
        if name in self.tensor_layers and not self._has_kernel(i):
            self._borrow(i, f"exported as a raw tensor (layer "
                            f"{self.tensor_layers[name].name!r}) for a custom kernel: no "
                            "MPSCNN kernel")
            return
        if op in _WEIGHTED:
            why = next((f" ({x.get('reason')})" for x in self.not_exported
                        if x.get("name") == name), "")
            self._borrow(i, f"not in the export{why}: the oracle's value used")
            return
        if like is None and op not in _SHAPE_ONLY and self._pass_on(i):
            return
        if like is None or like.dtype.kind != "f":
            self._borrow(i, None if op in _SHAPE_ONLY or like is not None else
                         "the oracle gives no value for its output")
            return
        ins = [self._input(t) for t in n.input if t]
        if op in _PASS:
            self.vals[out] = ins[0]
            self.report.shape_operators += 1
            return
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze") and like.ndim == 2:
            v = ins[0]
            axis = int(g.attrs(i).get("axis", 1)) if op == "Flatten" else 1
            if v.image is not None and axis == 1 and like.shape[0] == v.image.batch \
                    and like.shape[1] == int(np.prod(v.image.shape[1:])):
                self.vals[out] = Val(v.image, v.flat or "CHW")
                self.flattened.add(out)
                self.report.shape_operators += 1
                return
            self._borrow(i, "a flatten the reference executor does not model")
            return
        if op in ("Shape", "Constant", "ConstantOfShape", "Cast") or all(
                g.const(t) is not None for t in n.input if t):
            self._borrow(i, None)  # computed from constants only
            return
        if op == "Reshape" and like.ndim == 4:
            self._borrow(i, "a reshape to an image that no exported layer records: "
                            "MPSNNReshape reads HWC order (export with --reshape NAME=H,W,C)")
            return
        if op in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"):
            self._borrow(i, f"a {op} to a {like.ndim}-D tensor: it moves data across the "
                            "image's axes, which no MPSCNN kernel does (MPSNNReshape keeps "
                            "images 4-D)")
            return
        try:
            kernel = self._kernel(i)
        except NotExpressible as e:
            self._borrow(i, str(e))
            return
        if kernel is None:
            self._borrow(i, _NO_KERNEL.get(op, f"no MPSCNN kernel for ONNX {op}"))
            return
        imgs = [self._input(t) for t in kernel.images]
        if any(v.image is None for v in imgs):
            self._borrow(i, "an input is not an image the reference executor holds")
            return
        self._run_kernel(i, kernel, [v.image for v in imgs], like)  # type: ignore[misc]

    def _pass_on(self, i: int) -> bool:
        """An operator whose output the oracle does not give: run it on the executor's own
        values when its kernel can, so that what follows is still checked."""
        try:
            kernel = self._kernel(i)
            imgs = [] if kernel is None else [self._input(t).image for t in kernel.images]
            if kernel is None or any(v is None for v in imgs):
                return False
            flat = self._input(kernel.images[0]).flat
            self.vals[self.g.nodes[i].output[0]] = Val(kernel.run(imgs, None),  # type: ignore[arg-type]
                                                       flat)
        except (NotExpressible, ValueError):
            return False
        self._unjudged([i], f"its output {self.g.nodes[i].output[0]!r}")
        return True

    def _op_result(self, kernel: Kernel, xs: list[R.Image]) -> tuple[R.Image, np.ndarray]:
        y = kernel.run(xs, None)
        deltas = [self._delta(x, t) for x, t in zip(xs, kernel.images)]
        with np.errstate(invalid="ignore", over="ignore"):  # inf bounds stay inf
            err = kernel.bound(xs, deltas) + kernel.stores * self.u_s * np.abs(y.nhwc())
            if kernel.magnitude is not None:
                err = err + kernel.terms * T.U32 * kernel.magnitude(xs)
            else:
                err = err + T.U32 * np.abs(y.nhwc())
        return y, np.where(np.isnan(err), np.inf, err)

    def _run_kernel(self, i: int, kernel: Kernel, xs: list[R.Image], like: np.ndarray) -> None:
        n = self.g.nodes[i]
        out = n.output[0]
        row = Row(len(self.report.rows) + 1, self.g.names[i], n.op_type, kernel.mps, False,
                  out, list(like.shape))
        try:
            iso = [as_val(self.values[t], self.storage).image if t in self.values else None
                   for t in kernel.images]
            flat = self._input(kernel.images[0]).flat if like.ndim == 2 else None
            if all(v is not None for v in iso):
                y_iso, err = self._op_result(kernel, iso)  # type: ignore[arg-type]
                row.isolated = self._check(Val(y_iso, flat), like, err)
            y, err = self._op_result(kernel, xs)
            self.vals[out] = Val(y, flat)
            row.chained = self._check(self.vals[out], like, err)
        except ValueError as e:
            if "multiple of 4" in str(e):  # a model MPS cannot run as it is
                self._borrow(i, str(e))
                return
            row.error = str(e)
            self.vals[out] = as_val(like, self.storage)
        self.report.rows.append(row)
        self.report.operators_verified += 1
        self.done.add(i)
