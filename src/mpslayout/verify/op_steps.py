"""The step for a weightless operator: its MPS kernel from the table, or the reason it
has none (then the oracle's value is used and the operator is listed as not verified)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import reference as R
from ..reference.onnx_ops import Kernel, NotExpressible, build
from ..reference.onnx_pointwise import (
    ARITHMETIC_OPS,
    arithmetic_kernel,
    constant_image,
    gelu_kernel,
)
from . import tolerance as T
from .files import VerifyError
from .meaning import MeaningSteps
from .ort import onnx_runtime_oracle as ort_oracle
from .patterns import Fused
from .permuted import ImageOp, constant_input, recorded_constant
from .report import Row
from .values import Val, as_val
from .walk import PASS

__all__ = ["OpSteps"]

# elementwise neurons: each output value from its input value alone, any tensor shape
_NEURONS = frozenset(("Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu",
                      "Elu", "Softplus", "Softsign", "Abs", "Exp", "Log", "Sqrt", "Clip"))
_WEIGHTED = frozenset(("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"))
# operators that only compute shapes, indices or types: nothing to verify numerically
_SHAPE_ONLY = frozenset(("Shape", "Gather", "Constant", "ConstantOfShape", "Unsqueeze",
                         "Squeeze", "Cast", "Range", "Equal", "Where", "Size", "Expand",
                         "Slice", "Concat", "ReduceProd", "Floor", "Ceil", "Add", "Sub", "Mul",
                         "Div"))
_NO_KERNEL = dict.fromkeys(
    ("LSTM", "GRU", "RNN"), "a recurrent node no exported layer of the manifest matches "
    "(exported recurrent layers are judged node by node, each on its own row)")


class OpSteps(MeaningSteps):
    """Weightless operators through :mod:`mpslayout.reference.onnx_ops`."""

    def _has_kernel(self, i: int) -> bool:
        try:
            return self._kernel(i) is not None
        except NotExpressible:
            return False

    def _run_op(self, i: int, raw: bool = True) -> None:
        g = self.g
        n = g.nodes[i]
        op, name = n.op_type, g.names[i]
        out = n.output[0] if n.output else ""
        like = self.values.get(out)
        if raw and name in self.tensor_layers:
            before = len(self.report.rows)
            self._run_raw(i, like)
            self._promote(i, before)
            return
        left = next((x for x in self.not_exported if x.get("name") == name), None)
        if op in _WEIGHTED or (op in _NO_KERNEL and left is not None):
            why = "" if left is None else f" ({left.get('reason')})"
            self._borrow(i, f"not in the export{why}: the oracle's value used")
            return
        if like is None and op not in _SHAPE_ONLY and self._pass_on(i):
            return
        if like is None or like.dtype.kind != "f":
            self._borrow(i, None if op in _SHAPE_ONLY or like is not None else
                         "the oracle gives no value for its output")
            return
        ins = [self._input(t) for t in n.input if t]
        if op in PASS:
            self.vals[out] = ins[0]
            self.report.shape_operators += 1
            return
        if op == "Transpose" and self._layout_transpose(i, ins[0], like):
            return
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze") and like.ndim == 2:
            v = ins[0]
            axis = int(g.attrs(i).get("axis", 1)) if op == "Flatten" else 1
            fits = v.image is not None and axis == 1 and like.shape[0] == v.image.batch \
                and like.shape[1] == int(np.prod(v.image.shape[1:]))
            if fits and v.image.batch not in self._input_batches():
                # not a batch of images but rows of a sequence ((T, N, heads, hd) merged
                # to (T*N, C) in attention): each row a vector, as the export reads it
                rows = v.image.nchw(v.image.dtype).reshape(like.shape[0], -1, 1, 1)
                self.vals[out] = Val(R.Image.from_nchw(rows, v.image.dtype), "CHW")
                self.report.shape_operators += 1
                return
            if fits:
                self.vals[out] = Val(v.image, v.flat or "CHW")
                self.flattened.add(out)
                self.report.shape_operators += 1
                return
            self._borrow(i, "a flatten the reference executor does not model")
            return
        if op in ("Shape", "Constant", "ConstantOfShape", "Cast") or all(
                g.const(t) is not None or g.shape_derived(t) for t in n.input if t):
            self._borrow(i, None)  # computed from constants (and shapes) only
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
            if not self._run_flat_arithmetic(i, like):
                self._borrow(i, str(e))
            return
        if kernel is None:
            self._borrow(i, _NO_KERNEL.get(op, f"no MPSCNN kernel for ONNX {op}"))
            return
        imgs = [self._input(t) for t in kernel.images]
        if any(v.image is None for v in imgs):
            if not self._run_pointwise(i, kernel, like):
                self._borrow(i, "an input is not an image the reference executor holds")
            return
        self._run_kernel(i, kernel, [v.image for v in imgs], like)  # type: ignore[misc]

    def _run_fused(self, f: Fused) -> bool:
        """A chain of nodes one MPS kernel computes (:mod:`.patterns`), run as that kernel
        on the chain's input when it is an image and the oracle gives the chain's output:
        one row, and every node of the chain verified by it. Constants of the chain the
        export wrote as arithmetic layers are still checked, as those layers on the
        oracle's values."""
        like = self.values.get(f.out)
        x = self._input(f.x)
        covered = {j: s for s in self.segments.values() for j in s.nodes}
        if like is None or like.dtype.kind != "f" or x.image is None \
                or any(j in self.done for j in f.nodes) \
                or any(j in covered and not set(covered[j].nodes) <= set(f.nodes)
                       for j in f.nodes):
            return False
        inner = [self.g.nodes[j].output[0] for j in f.nodes if j != f.last]
        for t in inner:
            if t in self.values:
                self.vals[t] = self._oracle(t)
        for j in f.nodes:
            if j in self.segments:
                self._run_layer(self.segments[j])
        before = len(self.report.rows)
        self._run_kernel(f.last, gelu_kernel(f.x), [x.image], like)
        if len(self.report.rows) > before:
            row = self.report.rows[-1]
            row.op = "Gelu"
            row.name = next(self.g.names[j] for j in f.nodes
                            if self.g.nodes[j].op_type == "Erf")
            row.notes.append(f"the {len(f.nodes)}-node erf decomposition of GELU "
                             f"({', '.join(self.g.nodes[j].op_type for j in f.nodes)}), "
                             "run as one MPSCNNNeuronGeLU")
            self.report.operators_verified += len([j for j in f.nodes
                                                   if j not in covered]) - 1
        self.done.update(f.nodes)
        return True

    def _input_batches(self) -> set[int]:
        """The batch sizes of the graph's image inputs (empty when none is an image)."""
        return {v.image.batch for v in (self.vals.get(vi.name) for vi in self.g.inputs)
                if v is not None and v.image is not None}

    def _layout_transpose(self, i: int, v: Val, like: np.ndarray) -> bool:
        """A Transpose that only changes the framework's view of an MPS image (tf2onnx's
        NHWC <-> NCHW pairs): (0, 2, 3, 1) of an image is the same image read in its own
        HWC order, which a following flatten reads as HWC rows; (0, 3, 1, 2) of a graph
        input (or of such a view) is the image the app loads from NHWC data. (0, 2, 1)
        between a (N, L, C) sequence and a (N, C, L) one (a Conv1d's, :mod:`.sequences`) is
        the same image 1 pixel high and L wide. No kernel runs, so it counts as a shape
        operator."""
        n = self.g.nodes[i]
        perm = [int(p) for p in self.g.attrs(i).get("perm", [])]
        if perm == [0, 2, 1] and v.image is not None and v.image.height == 1 and \
                like.ndim == 3 and (n.input[0] in self.ncw) != (n.output[0] in self.ncw):
            self.vals[n.output[0]] = Val(v.image, self._ncw(n.output[0]))
            self.report.shape_operators += 1
            return True
        if v.image is None or like.ndim != 4:
            return False
        if perm == [0, 2, 3, 1] and v.flat is None:
            if any(self.g.nodes[j].op_type not in ("Flatten", "Reshape")
                   for j in self.g.consumers[n.output[0]]):
                return False
            self.vals[n.output[0]] = Val(v.image, "HWC")
            self.flattened.add(n.output[0])  # the image behind it is the Transpose's input
        elif perm == [0, 3, 1, 2] and (v.flat == "HWC" or
                                       n.input[0] in {vi.name for vi in self.g.inputs}):
            self.vals[n.output[0]] = Val(v.image if v.flat == "HWC" else
                                         R.Image.from_nhwc(v.image.nchw(), v.image.dtype))
        else:
            return False
        self.report.shape_operators += 1
        return True

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

    def _op_result(self, kernel: Kernel, xs: list[R.Image], i: int | None = None,
                   deltas: list[np.ndarray] | None = None) -> tuple[R.Image, np.ndarray]:
        y = kernel.run(xs, None)
        if deltas is None:
            deltas = [self._delta(x, t) for x, t in zip(xs, kernel.images)]
        # a constant operand the export stores as a raw tensor is read as stored (float16
        # in a float16 export): its rounding moves the result by up to that unit times the
        # operation's magnitude (|x c| for a product, |x| + |c| for a sum)
        u_c = max((T.unit(self.exported[t].dtype) for t in
                   (self.g.nodes[i].input if i is not None else ())
                   if t in self.exported and self.exported[t].dtype.kind == "f"), default=0.0)
        with np.errstate(invalid="ignore", over="ignore"):  # inf bounds stay inf
            err = kernel.bound(xs, deltas) + kernel.stores * self.u_s * np.abs(y.nhwc())
            if kernel.magnitude is not None:
                err = err + (kernel.terms * T.U32 + u_c) * kernel.magnitude(xs)
            else:
                err = err + (T.U32 + u_c) * np.abs(y.nhwc())
        return y, np.where(np.isnan(err), np.inf, err)

    def _on_image(self, i: int, src: str, constant: tuple[Any, Any] | None = None) -> str:
        """Per-element node ``i`` of a permuted flatten folded into a fully connected layer,
        run on image ``src`` as the app runs it, before the layer (it commutes with the
        permutation). ONNX Runtime runs the node alone on the oracle's image to judge it,
        on a row of its own; a node MPS has no kernel for passes the oracle's value on.
        A BINARY node comes with ``constant``: (its constant on the image, verify's own,
        and the manifest's record of it): ONNX Runtime applies verify's, MPS the
        manifest's, which must equal it (:func:`.permuted.recorded_constant`).
        Returns the name the result is held under."""
        from .rnn_cells import node_alone  # ONNX Runtime: imported by the oracle already

        g, n = self.g, self.g.nodes[i]
        name = f"{src} -> {g.names[i]}"
        k = constant_input(g, i) if constant is not None else None
        data = n.input[0] if k is None else n.input[1 - k]
        if name not in self.values:
            if src not in self.values:
                raise VerifyError(f"the oracle gives no value for image {src!r}, which "
                                  f"{n.op_type} {g.names[i]!r} is run on")
            feeds = {data: self.values[src]}
            if k is not None and constant is not None:
                c = g.const(n.input[k])
                assert c is not None
                feeds[n.input[k]] = np.ascontiguousarray(constant[0].astype(c.dtype))
            try:
                self.values[name] = ort_oracle(node_alone(g, i, False, feeds))(
                    [n.output[0]], feeds)[n.output[0]]
            except Exception as e:  # any failure of the one-node model
                raise VerifyError(f"ONNX Runtime could not run {n.op_type} {g.names[i]!r} "
                                  f"on image {src!r}: {type(e).__name__}: {e}") from None
        like, x = self.values[name], self._input(src)
        try:
            if constant is not None:
                try:
                    value = recorded_constant(g, i, constant[1], constant[0])
                except ValueError as e:
                    raise VerifyError(str(e)) from None
                kernel = build(ImageOp(n.op_type, g.names[i], int(constant[1]["constant_input"]),
                                       value, like.shape, g.opset))
            else:
                kernel = self._kernel(i)
            why = None if kernel is not None else f"no MPSCNN kernel for ONNX {n.op_type}"
        except NotExpressible as e:
            kernel, why = None, str(e)
        if kernel is None or x.image is None:
            self.vals[name] = self._oracle(name)
            self.report.not_verified.append({
                "name": g.names[i], "op": n.op_type,
                "reason": f"{why or 'its image is not one the executor holds'} (run on "
                          f"image {src!r} before the fully connected layer): the oracle's "
                          "value used"})
            return name
        row = Row(len(self.report.rows) + 1, g.names[i], n.op_type, kernel.mps, False, name,
                  list(like.shape), notes=[f"run on image {src!r}, before the fully "
                                           "connected layer the permutation is folded into"])
        try:
            iso = self._oracle(src).image
            if iso is not None:
                y_iso, err = self._op_result(kernel, [iso], i, [self._delta(iso, src)])
                row.isolated = self._check(Val(y_iso), like, err)
            y, err = self._op_result(kernel, [x.image], i, [self._delta(x.image, src)])
            self.vals[name] = Val(y)
            row.chained = self._check(self.vals[name], like, err)
        except ValueError as e:
            row.error = str(e)
            self.vals[name] = self._oracle(name)
        self.report.rows.append(row)
        return name

    def _run_pointwise(self, i: int, kernel: Kernel, like: np.ndarray) -> bool:
        """A neuron (one input, elementwise) on a tensor that is not an image (YOLO's
        Sigmoid after its 5-D detect reshape): the MPS neuron computes each value alone,
        so it runs on the oracle's input laid out as one row of pixels, and is judged in
        isolation (the walk holds no image to chain from)."""
        n = self.g.nodes[i]
        src = self.values.get(kernel.images[0]) if len(kernel.images) == 1 else None
        if n.op_type not in _NEURONS or src is None or src.shape != like.shape \
                or src.dtype.kind != "f":
            return False
        flat = as_val(src.reshape(1, 1, -1, 1), self.storage).image
        return self._judge_row(i, kernel, [flat], [src], like)  # type: ignore[list-item]

    def _run_flat_arithmetic(self, i: int, like: np.ndarray) -> bool:
        """Add/Sub/Mul/Div of tensors that are not images (5-D and up), each operand the
        result's shape or a constant scalar: elementwise, so MPSCNN arithmetic on the
        oracle's operands laid out as one row of pixels, judged in isolation."""
        n = self.g.nodes[i]
        ins = [t for t in n.input if t]
        if n.op_type not in ARITHMETIC_OPS or len(ins) != 2 or like.dtype.kind != "f":
            return False
        images, strides, constants, flat, srcs = [], [], {}, [], []
        for k, t in enumerate(ins):
            c = self.exported.get(t, self.g.const(t))  # as the export wrote it, if it did
            v = self.values.get(t)
            if c is not None and c.size == 1 and c.dtype.kind == "f":
                constants[k] = constant_image(c.reshape(1, 1, 1, 1), 4, np.float32)
                strides.append((0, 0, 0))
            elif c is None and v is not None and v.shape == like.shape and v.dtype.kind == "f":
                images.append(t)
                strides.append((1, 1, 1))
                flat.append(as_val(v.reshape(1, 1, 1, -1), self.storage).image)
                srcs.append(v)
            else:
                return False
        if not images:
            return False
        kernel = arithmetic_kernel(*ARITHMETIC_OPS[n.op_type], images, strides, constants,
                                   (1, 1, 1, like.size))
        return self._judge_row(i, kernel, flat, srcs, like)

    def _judge_row(self, i: int, kernel: Kernel, flat: list[R.Image], srcs: list[np.ndarray],
                   like: np.ndarray) -> bool:
        """``kernel`` on the oracle's operands ``srcs`` laid out as the images ``flat``,
        compared with the oracle's ``like``; the operands' error is their rounding to
        the image type (the oracle's values are the inputs)."""
        n = self.g.nodes[i]
        deltas = [np.abs(x.nhwc() - np.asarray(a, np.float64).reshape(x.shape))
                  for x, a in zip(flat, srcs)]
        try:
            y, err = self._op_result(kernel, flat, None, deltas)
        except ValueError:
            return False
        row = Row(len(self.report.rows) + 1, self.g.names[i], n.op_type, kernel.mps, False,
                  n.output[0], list(like.shape),
                  notes=["run on the oracle's input as one row of pixels (not an image)"])
        row.isolated = T.check(y.nhwc().reshape(like.shape), like, self.atol, self.rtol,
                               err.reshape(like.shape))
        self.report.rows.append(row)
        self.report.operators_verified += 1
        self.done.add(i)
        return True

    def _run_kernel(self, i: int, kernel: Kernel, xs: list[R.Image], like: np.ndarray) -> None:
        n = self.g.nodes[i]
        out = n.output[0]
        row = Row(len(self.report.rows) + 1, self.g.names[i], n.op_type, kernel.mps, False,
                  out, list(like.shape))
        try:
            iso = [self._oracle(t).image if t in self.values else None
                   for t in kernel.images]
            flat = self._input(kernel.images[0]).flat if like.ndim == 2 else self._ncw(out)
            if all(v is not None for v in iso):
                y_iso, err = self._op_result(kernel, iso, i)  # type: ignore[arg-type]
                row.isolated = self._check(Val(y_iso, flat), like, err)
            y, err = self._op_result(kernel, xs, i)
            self.vals[out] = Val(y, flat)
            row.chained = self._check(self.vals[out], like, err)
        except ValueError as e:
            if "multiple of 4" in str(e):  # a model MPS cannot run as it is
                self._borrow(i, str(e))
                return
            row.error = str(e)
            self.vals[out] = self._oracle(out, like)
        self.report.rows.append(row)
        self.report.operators_verified += 1
        self.done.add(i)
