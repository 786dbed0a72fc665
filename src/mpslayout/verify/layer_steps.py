"""The step for an exported layer: run it from the export's files on the oracle's input
(isolated) and on the executor's own (chained), with what rounding and input errors
explain of each difference."""

from __future__ import annotations

import numpy as np

from .. import reference as R
from . import tolerance as T
from .files import VerifyError
from .layers import Segment, arithmetic_layer, run_layer, tap_problem, terms
from .report import Row
from .values import Val, as_image, as_val
from .walk import Walk

__all__ = ["LayerSteps"]


class LayerSteps(Walk):
    """Exported layers, with the nodes their segment absorbs."""

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
