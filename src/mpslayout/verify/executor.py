"""Walks the graph in order: exported layers run from the export's files
(:mod:`.layer_steps`), weightless operators through the kernel table (:mod:`.op_steps`),
and anything else takes the oracle's value and is listed as not verified, with the
reason."""

from __future__ import annotations

import numpy as np

from .layer_steps import LayerSteps
from .layers import LAYER_OPS
from .op_steps import OpSteps
from .report import Row

__all__ = ["Executor"]


class Executor(LayerSteps, OpSteps):
    """One verify walk (state in :class:`.walk.Walk`)."""

    def run(self, feeds: dict[str, np.ndarray]) -> None:
        for name, a in feeds.items():
            self.vals[name] = self._oracle(name, a)
        for layer in self.unmapped:
            self.report.rows.append(Row(
                len(self.report.rows) + 1, layer.name,
                str(layer.entry.get("source", {}).get("op", "?")), layer.kind, True, "?", [],
                error=("no node of the model matches this layer (wrong --model?)"
                       if layer.kind in LAYER_OPS else
                       f"layer kind {layer.kind!r} is not one the verifier runs")))
        total, step = len(self.segments), 0
        for i in range(len(self.g.nodes)):
            if i in self.segments and self.progress is not None and i not in self.done:
                step += 1
                self.progress(f"layer {step} of {total}: {self.segments[i].layer.name}")
            if i in self.done or (i in self.fused and self._run_fused(self.fused[i])):
                continue
            if i in self.segments:
                self._run_layer(self.segments[i])
            else:
                self._run_op(i)
