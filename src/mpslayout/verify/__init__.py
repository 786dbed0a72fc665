"""``mpslayout verify``: does an export compute what the original model computes?

Runs the exported layers in the reference executor (:mod:`mpslayout.reference`, an
executable restatement of docs/layouts.md) and the original model in an oracle (ONNX
Runtime for ONNX models) on the same input, and compares them tensor by tensor. The
weights, biases and MPS geometry come only from the export folder (``manifest.json`` and
its ``.bin`` files, checked against their sizes and SHA-256); the model supplies the graph
(which layer feeds which, and the weightless operators between them) and the judge's
numbers. Nothing here calls mpslayout's converters: a check that reused the code under
test would prove nothing.

Every compared tensor is checked twice:

- *isolated*: the layer alone, fed the oracle's own input to it (rounded to the storage
  type), so a wrong layer is named even when errors from earlier layers would blur it;
- *chained*: the reference executor's own result after running every layer before it, as
  an app would on the device.

Each graph operator is verified (it has a row), shape-only (no arithmetic), or listed as
not verified with the reason. The tolerance model is in :mod:`.tolerance` and
docs/verify.md.

Modules: :mod:`.files` (reading the export), :mod:`.graph` (the ONNX graph),
:mod:`.layers` (exported layers and the nodes they stand for), :mod:`.executor` (the
walk: :mod:`.walk` its state, :mod:`.layer_steps` and :mod:`.op_steps` its two kinds of
step), :mod:`.tolerance`, :mod:`.report`, :mod:`.core` (:func:`verify_graph`, any
oracle), :mod:`.onnx_path` (:func:`verify`, ONNX Runtime and the input rules).
"""

from __future__ import annotations

from .core import Oracle, verify_graph
from .files import ExportedLayer, Uncheckable, VerifyError, load_export
from .onnx_path import verify
from .report import EXIT_STATUS, Check, Report, Row

__all__ = ["EXIT_STATUS", "Check", "ExportedLayer", "Oracle", "Report", "Row", "Uncheckable",
           "VerifyError", "load_export", "verify", "verify_graph"]
