"""The step for an exported layer: run it from the export's files on the oracle's input
(isolated) and on the executor's own (chained), with what rounding and input errors
explain of each difference."""

from __future__ import annotations

import numpy as np

from .. import reference as R
from . import tolerance as T
from .files import VerifyError
from .layers import Segment, TapCoverage, arithmetic_layer, run_layer, tap_coverage, terms
from .meaning import channel_image
from .quant_bounds import requantized, weight_error
from .report import Row
from .values import Val, as_image
from .walk import Walk

__all__ = ["LayerSteps"]


class LayerSteps(Walk):
    """Exported layers, with the nodes their segment absorbs."""

    def _flat(self, seg: Segment) -> str | None:
        rs = seg.layer.entry.get("reshape")
        like = self.values.get(seg.end)
        if rs is not None and like is not None and like.ndim == 2:
            return str(rs.get("source_order", "CHW"))
        return self._ncw(seg.end)

    def _quant_term(self, seg: Segment, x: R.Image, dest: tuple[int, int] | None
                    ) -> np.ndarray | None:
        """What requantized 8-bit weights explain (NHWC): the layer on ``|x|`` with each
        weight replaced by its error bound (:mod:`.quant_bounds`); None when
        the weights are not requantized or no bound is known (the row says which)."""
        if not requantized(seg.layer):
            return None
        if seg.layer.name not in self.quant_bounds:
            self.quant_bounds[seg.layer.name] = weight_error(self.g, seg, self.values)
        e, _ = self.quant_bounds[seg.layer.name]
        w = seg.layer.arrays.get("weights")
        if e is None or w is None:
            return None
        per_weight = np.broadcast_to(e.astype(np.float32), w.shape)
        return run_layer(self.g, seg, x, dest, self.values, magnitude=True, bias=False,
                         weights=np.ascontiguousarray(per_weight)).nhwc().astype(np.float64)

    def _layer(self, seg: Segment, x: R.Image, src_t: str
               ) -> tuple[R.Image, np.ndarray, np.ndarray | None]:
        """The layer's result on ``x``, what rounding, ``x``'s own error and requantized
        weights explain, and the part of that the weights' quantization makes (or None)."""
        dest = self._dest(seg.end)
        pre = run_layer(self.g, seg, x, dest, self.values)
        delta = self._delta(x, src_t)
        with np.errstate(invalid="ignore", over="ignore"):  # an unknown input error is inf
            if seg.layer.kind == "arithmetic":
                moved = arithmetic_layer(self.g, seg, self.values).bound([x], [delta])
            else:  # linear in x: the layer on |d| with |w| and no bias
                moved = run_layer(self.g, seg, as_image(delta), dest,
                                  self.values, magnitude=True, bias=False).nhwc()
        mag = run_layer(self.g, seg, x, dest, self.values, magnitude=True).nhwc()
        u_w = self.u_w if seg.layer.kind != "batch_normalization" else 0.0
        if seg.layer.entry.get("weights_dtype") == "uint8":
            u_w = max(u_w, T.U16)  # MPS dequantizes 8-bit weights to half precision
        moved = np.where(np.isnan(moved), np.inf, moved)
        err = moved + (terms(seg, x) * T.U32 + u_w) * mag + self.u_s * np.abs(pre.nhwc())
        # the weight error meets the oracle's input, at most |x| + |d| from 0
        with np.errstate(invalid="ignore", over="ignore"):
            q = self._quant_term(seg, as_image(np.abs(x.nhwc()) + delta), dest)
        errs = [err] if q is None else [err + q, err]  # with and without quantization
        y = pre
        for j in seg.post:
            k = self._kernel(j)
            if k is None:
                raise VerifyError(f"no reference kernel for {self.g.names[j]!r}")
            nxt = k.run([y], None)
            with np.errstate(invalid="ignore", over="ignore"):
                errs = [k.bound([y], [e]) + k.stores * self.u_s * np.abs(nxt.nhwc())
                        for e in errs]
            y = nxt
        errs = [np.where(np.isnan(e), np.inf, e) for e in errs]
        return y, errs[0], (errs[0] - errs[1] if len(errs) > 1 else None)

    def _run_layer(self, seg: Segment) -> None:
        self.done.update(seg.nodes)
        g = self.g
        main = g.nodes[seg.nodes[0]]
        like = self.values.get(seg.end)
        x_or = self.values.get(main.input[0])
        if seg.layer.kind == "batch_normalization" and like is not None and x_or is not None \
                and like.ndim not in (2, 4) and x_or.shape == like.shape and not seg.post \
                and seg.end not in self.ncw:  # an (N, C, L) sequence is an image already
            self._run_channel_layer(seg, x_or, like)
            return
        img_in = seg.reads or next(t for k, t in enumerate(main.input[:2])
                                   if seg.layer.kind != "arithmetic" or g.const(t) is None)
        if seg.pre and not seg.problem:
            try:  # a relu between the permute and the flatten: run on the image first
                for j in seg.pre:
                    img_in = self._on_image(j, img_in, seg.pre_constants.get(j))
            except VerifyError as e:
                seg.problem = str(e)
        if like is None and self._input(img_in).image is not None:
            try:
                y, _, _ = self._layer(seg, self._input(img_in).image,  # type: ignore[arg-type]
                                      self._image_tensor(img_in))
                self.vals[seg.end] = Val(y, self._flat(seg))
                self._unjudged(seg.nodes, f"layer {seg.layer.name!r}'s output {seg.end!r}")
                return
            except (VerifyError, ValueError, KeyError):
                pass  # reported as a row below
        self.report.operators_verified += len(seg.nodes)
        row = Row(len(self.report.rows) + 1, seg.layer.name, main.op_type, seg.layer.kind, True,
                  seg.end, [] if like is None else list(like.shape), notes=seg.notes)
        bad = {k: int(np.sum(~np.isfinite(a))) for k, a in seg.layer.arrays.items()
               if a.dtype.kind == "f" and not np.all(np.isfinite(a))}
        if bad:
            row.notes.append("its files hold values that are not finite: " + ", ".join(
                f"{n} in {k}" for k, n in bad.items()))
        self.report.rows.append(row)
        self.report.layers_checked += 1
        x_val = self._input(img_in)
        try:
            if seg.problem:
                raise VerifyError(seg.problem)
            if like is None:
                raise VerifyError(f"the oracle did not give tensor {seg.end!r}")
            if x_val.image is None:
                raise VerifyError(f"its input {img_in!r} is not an image the reference "
                                  "executor holds")
            dest = self._dest(seg.end)
            cov = None if dest is None else tap_coverage(g, seg, x_val.image, dest)
            if cov is not None and cov.none_read:
                raise VerifyError(f"the input is too small to test this layer: "
                                  f"{cov.describe()}, so no weight of it meets the image; "
                                  "give a larger --input")
            if cov is not None and not cov.complete:
                self._untested_taps(seg, row, cov)
            src_t = img_in if seg.reads else self._image_tensor(img_in)
            if src_t in self.values:  # isolated: the oracle's input, rounded to storage
                x_iso = self._oracle(src_t).image
                if x_iso is None:
                    raise VerifyError(f"the oracle's {src_t!r} is not an image")
                y_iso, err, part = self._layer(seg, x_iso, src_t)
                row.isolated = self._check(Val(y_iso, self._flat(seg)), like, err, part)
            y, err, part = self._layer(seg, x_val.image, src_t)
            self.vals[seg.end] = Val(y, self._flat(seg))
            row.chained = self._check(self.vals[seg.end], like, err, part)
        except (VerifyError, ValueError, KeyError) as e:
            row.error = str(e) if isinstance(e, VerifyError) else f"{type(e).__name__}: {e}"
            if seg.end in self.values:
                self.vals[seg.end] = self._oracle(seg.end)
        if requantized(seg.layer):
            row.notes.append(self._quant_note(seg, row))

    def _untested_taps(self, seg: Segment, row: Row, cov: TapCoverage) -> None:
        """Taps of the kernel that read only padding at this input size: the layer is
        judged on the taps that are read; the untested ones are listed, with the smallest
        model input that would read them (None at a size the model fixes)."""
        entry: dict[str, object] = {"layer": seg.layer.name, "what": cov.describe(),
                                    "kernel": {"height": cov.k[1], "width": cov.k[0]},
                                    "untested_taps": {"rows": cov.unread[1],
                                                      "columns": cov.unread[0]}}
        if self.fixed_size:
            entry["smallest_input"] = None
            row.notes.append(f"at the model's fixed input size {cov.describe()}: those weights "
                             "do not affect this model and are not tested")
        else:
            entry["smallest_input"] = self._smallest_input(cov)
            row.notes.append(f"{cov.describe()}: judged on the taps that are read; the others "
                             "are untested at this input size (smallest input that tests "
                             f"them: {entry['smallest_input'] or 'unknown'})")
        self.report.untested.append(entry)

    def _smallest_input(self, cov: TapCoverage) -> str | None:
        """The model's image input, its height and width scaled so that this layer's
        source reaches the size at which every tap reads (the layer's source scales with
        the input, as strided layers divide it)."""
        for vi in self.g.inputs:
            v = self.vals.get(vi.name)
            shape = None if v is None or v.image is None else self.values.get(vi.name)
            if shape is None or shape.ndim != 4:
                continue
            dims = list(shape.shape)
            for axis, pos in ((1, 2), (0, 3)):  # height, width of NCHW
                need = cov.need[axis]
                if need is None:
                    return None
                if need > cov.n_in[axis]:
                    dims[pos] = -(-dims[pos] * need // cov.n_in[axis])
            return f"{vi.name}=" + ",".join(map(str, dims))
        return None

    def _run_channel_layer(self, seg: Segment, x: np.ndarray, like: np.ndarray) -> None:
        """A batch normalization of an (N, C, ...) tensor that is not an image (BatchNorm1d
        on (N, C, L), BatchNorm3d): per channel, so run as an image of C channels with the
        trailing axes as pixels, on the oracle's input (isolated; nothing to chain from)."""
        row = Row(len(self.report.rows) + 1, seg.layer.name, self.g.nodes[seg.nodes[0]].op_type,
                  seg.layer.kind, True, seg.end, list(like.shape), notes=[
                      *seg.notes, f"a {like.ndim}-D tensor run as an image of {like.shape[1]} "
                      "channels, its trailing axes as pixels (per-channel: the same "
                      "function), on the oracle's input"])
        self.report.rows.append(row)
        self.report.layers_checked += 1
        self.report.operators_verified += len(seg.nodes)
        img = channel_image(x, self.storage)
        exact = np.asarray(x, np.float64).reshape(img.batch, img.channels, -1, 1)
        delta = np.abs(img.nhwc().astype(np.float64) - exact.transpose(0, 2, 3, 1))
        try:
            dest = (img.width, img.height)
            y = run_layer(self.g, seg, img, dest, self.values)
            moved = run_layer(self.g, seg, as_image(delta), dest, self.values,
                              magnitude=True, bias=False).nhwc()
            mag = run_layer(self.g, seg, img, dest, self.values, magnitude=True).nhwc()
            err = moved + terms(seg, img) * T.U32 * mag + self.u_s * np.abs(y.nhwc())
            row.isolated = T.check(y.nchw().astype(np.float64).reshape(like.shape), like,
                                   self.atol, self.rtol,
                                   err.transpose(0, 3, 1, 2).reshape(like.shape))
        except (VerifyError, ValueError, KeyError) as e:
            row.error = str(e) if isinstance(e, VerifyError) else f"{type(e).__name__}: {e}"
        self.vals[seg.end] = self._oracle(seg.end, like)

    def _quant_note(self, seg: Segment, row: Row) -> str:
        """What the tolerance allowed for the requantized weights, and how much of it."""
        e, what = self.quant_bounds.get(seg.layer.name, (None, "no bound computed"))
        if e is None:
            return ("weights requantized to 8 bits from floats; their quantization error is "
                    f"not in the tolerance ({what}): raise --atol to accept it")
        shares = [f"{c.quant_share:.0%} ({label})" for label, c in
                  (("isolated", row.isolated), ("chained", row.chained))
                  if c is not None and c.quant_share is not None]
        return ("weights requantized to 8 bits from floats: the tolerance includes the layer "
                f"on |x| with each weight's bound ({what}); at the element closest to "
                "failing that is " + (", ".join(shares) or "-") + " of the tolerance")
