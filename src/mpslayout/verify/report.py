"""What verify found: one :class:`Row` per compared tensor, the operators not verified
(and why), and the :class:`Report` that prints them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EXIT_STATUS", "Check", "Report", "Row"]

# the verdicts and their exit status (docs/verify.md): 2 is a usage error (argparse's)
EXIT_STATUS = {"ok": 0, "failed": 1, "nothing_checkable": 3}


@dataclass
class Check:
    """Largest absolute error, the same over the largest |oracle value| of the tensor, the largest
    ratio of an element's error to its tolerance (<= 1 passes), the verdict, and (weights
    requantized to 8 bits) the fraction of the tolerance their quantization bound makes at
    the element closest to failing."""

    max_abs: float
    max_rel: float
    worst: float
    ok: bool
    quant_share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"max_abs": _num(self.max_abs), "max_rel": _num(self.max_rel),
                             "error_over_tolerance": _num(self.worst), "ok": self.ok}
        if self.quant_share is not None:
            d["quantization_share"] = _num(self.quant_share)
        return d


def _num(x: float) -> float | str:
    """A float for JSON: "inf" and "nan" as strings, which every JSON parser reads."""
    return x if math.isfinite(x) else str(x)


@dataclass
class Row:
    """One compared tensor: an exported layer (``layer`` True) or a weightless operator."""

    index: int
    name: str
    op: str
    kind: str
    layer: bool
    tensor: str
    shape: list[int]
    isolated: Check | None = None
    chained: Check | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    # a cell the manifest declares MPS cannot compute (a GRU with linear_before_reset=1):
    # ``files`` is the exported files run with the model's own cell
    declared_inexact: bool = False
    files: Check | None = None
    # a recurrent layer whose input leaves its recurrent matrices untested: its files run
    # from a seeded random state over several steps against the oracle's own cell
    state: Check | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(
            c is None or c.ok for c in (self.isolated, self.chained, self.files, self.state))

    @property
    def files_ok(self) -> bool:
        """Declared not computable by MPS, and its files hold the model's weights."""
        return (self.declared_inexact and self.error is None and self.files is not None
                and self.files.ok and (self.state is None or self.state.ok))

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "op": self.op, "kind": self.kind,
                "layer": self.layer, "tensor": self.tensor, "shape": self.shape,
                "isolated": None if self.isolated is None else self.isolated.as_dict(),
                "chained": None if self.chained is None else self.chained.as_dict(),
                "files": None if self.files is None else self.files.as_dict(),
                "state": None if self.state is None else self.state.as_dict(),
                "declared_inexact": self.declared_inexact,
                "error": self.error, "notes": self.notes, "ok": self.ok}


@dataclass
class Report:
    outdir: str
    model: str
    input: str
    storage: str
    weights_dtype: str
    atol: float
    rtol: float
    oracle: str = "ONNX Runtime"
    rows: list[Row] = field(default_factory=list)
    not_verified: list[dict[str, str]] = field(default_factory=list)
    layers_checked: int = 0
    operators_verified: int = 0
    shape_operators: int = 0
    # accept layers declared not computable by MPS whose files hold the model's weights
    allow_inexact: bool = False
    # what was done to the model to run it (an opset upgrade), or what judged it instead
    model_notes: list[str] = field(default_factory=list)
    # weights the input did not reach (taps of a convolution that read only padding, a
    # recurrent matrix multiplied by a zero state): {layer, what, smallest_input?}
    untested: list[dict[str, Any]] = field(default_factory=list)

    def _passes(self, r: Row) -> bool:
        return r.ok or (self.allow_inexact and r.files_ok)

    @property
    def first_divergence(self) -> Row | None:
        return next((r for r in self.rows if not self._passes(r)), None)

    @property
    def ok(self) -> bool:
        return self.first_divergence is None and self.layers_checked > 0

    @property
    def verdict(self) -> str:
        """"ok", "failed" (a divergence or a layer that could not run), or
        "nothing_checkable" (no divergence, but the export holds no layer verify can run)."""
        if self.first_divergence is not None:
            return "failed"
        return "ok" if self.layers_checked > 0 else "nothing_checkable"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.verdict]

    def as_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {"ok": self.ok, "verdict": self.verdict, "exit_status": self.exit_status,
                "export": self.outdir, "model": self.model, "input": self.input,
                "storage": self.storage, "weights_dtype": self.weights_dtype,
                "atol": self.atol, "rtol": self.rtol, "oracle": self.oracle,
                "allow_inexact": self.allow_inexact,
                "layers_checked": self.layers_checked,
                "operators": {"verified": self.operators_verified,
                              "not_verified": len(self.not_verified),
                              "shape_only": self.shape_operators},
                "first_divergence": None if first is None else first.name,
                "model_notes": self.model_notes, "untested": self.untested,
                "rows": [r.as_dict() for r in self.rows], "not_verified": self.not_verified}

    def header(self) -> str:
        return f"mpslayout verify: {self.outdir} against {self.model}"

    def table(self, header: bool = True) -> str:
        def num(c: Check | None, attr: str) -> str:
            return "-" if c is None else f"{getattr(c, attr):.2e}"

        def worst(r: Row) -> str:
            w = [c.worst for c in (r.isolated, r.chained, r.state) if c is not None]
            return f"{max(w):.2g}" if w else "-"

        head = ["", "#", "layer / op", "kind", "output", "iso abs", "iso rel", "chain abs",
                "chain rel", "err/tol", "status"]
        body = []
        first = self.first_divergence
        for r in self.rows:
            status = ("ok" if r.ok else "ERROR" if r.error else
                      ("ok*" if self.allow_inexact else "INEXACT") if r.files_ok else "FAIL")
            mark = ">>" if r is first else ""
            body.append([mark, str(r.index), r.name, r.kind if r.layer else r.op,
                         "x".join(map(str, r.shape)), num(r.isolated, "max_abs"),
                         num(r.isolated, "max_rel"), num(r.chained, "max_abs"),
                         num(r.chained, "max_rel"), worst(r), status])
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [self.header()] if header else []
        lines += [f"input: {self.input}",
                  *(f"model: {n}" for n in self.model_notes),
                 f"storage {self.storage}, weights {self.weights_dtype}; atol {self.atol:g}, "
                 f"rtol {self.rtol:g}; rel = max abs / max |oracle|; err/tol <= 1 passes", ""]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        for row in body:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        lines.append("")
        for r in self.rows:
            for note in ([r.error] if r.error else []) + r.notes:
                lines.append(f"  {r.name}: {note}")
        for x in self.not_verified:
            lines.append(f"  not verified: {x['name']} ({x['op']}): {x['reason']}")
        for x in self.untested:
            lines.append(f"  untested: {x['layer']}: {x['what']}"
                         + (f"; smallest input that tests them: {x['smallest_input']}"
                            if x.get("smallest_input") else ""))
        if first is not None:
            what = "layer" if first.layer else "operator"
            lines.append(f"FAILED: first divergence at {what} {first.name!r} ({first.op} -> "
                         f"{first.tensor}): "
                         + (first.error or self._why(first))
                         + "".join(f"; {n}" for n in first.notes if "not exact" in n))
        elif self.layers_checked == 0:
            lines.append("NOTHING CHECKABLE: the export holds no layer verify can run (see "
                         "'not verified' above); nothing was compared (exit status 3)")
        else:
            expected = sum(r.kind == "expected" and not r.layer for r in self.rows)
            lines.append(f"OK: {self.layers_checked} exported layers and "
                         f"{len(self.rows) - self.layers_checked - expected} operators agree "
                         f"with {self.oracle}"
                         + (f"; its {expected} outputs match the expected values (--expect)"
                            if expected else ""))
            if self.untested:
                lines.append(f"untested: {len(self.untested)} layers hold weights this input "
                             "does not reach (listed above): give the smallest input named "
                             "there to test them")
            accepted = [r.name for r in self.rows if not r.ok]
            if accepted:
                lines.append(f"ok*: {', '.join(accepted)}: not computable by MPS (see the "
                             "notes); accepted by --allow-inexact because the files hold "
                             "the model's weights")
        lines.append(f"operators: {self.operators_verified} verified, "
                     f"{len(self.not_verified)} not verified, {self.shape_operators} "
                     "shape-only (no arithmetic)")
        return "\n".join(lines)

    @staticmethod
    def _why(r: Row) -> str:
        if r.files_ok:
            assert r.files is not None
            return ("MPS cannot compute this cell (the manifest says so; see its notes): "
                    "the MPS formula run from the files differs from the model by "
                    f"{r.isolated.max_abs if r.isolated else float('nan'):.3g}; the files "
                    "themselves hold the model's weights (the model's own cell run from "
                    f"them agrees, err/tol {r.files.worst:.2g}); --allow-inexact accepts "
                    "such layers")
        parts = []
        for label, c in (("isolated", r.isolated), ("chained", r.chained),
                         ("the model's own cell from the files", r.files),
                         ("from a random state", r.state)):
            if c is not None and not c.ok:
                parts.append(f"{label} max abs error {c.max_abs:.3g} (rel {c.max_rel:.3g})")
        return ", ".join(parts) + " beyond tolerance"


