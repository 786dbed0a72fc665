"""verify's core: an export folder, a graph, its input and an oracle in; a Report out.

The graph is an ``onnx.ModelProto`` (NCHW semantics, ONNX op names), whatever framework
the model came from; the oracle computes the model's own values:
``oracle(tensor_names) -> {name: array}``, and may leave out names it cannot give (verify
then compares what it has). The ONNX path (:func:`mpslayout.verify.verify`) passes the
model itself with ONNX Runtime as the oracle; a Keras front end passes its model
translated to ONNX, with Keras as the oracle.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .executor import Executor
from .files import ExportedLayer, VerifyError, load_export
from .graph import Graph
from .recurrent import RECURRENT_KINDS, check_layers
from .report import Report
from .tolerance import U16

__all__ = ["Oracle", "verify_graph"]


Oracle = Callable[[Sequence[str]], Mapping[str, np.ndarray]]


def verify_graph(outdir: str | os.PathLike[str], graph: Any, feeds: Mapping[str, Any],
                 oracle: Oracle, *, model_label: str, oracle_label: str = "the oracle",
                 input_label: str | None = None, atol: float = 1e-4, rtol: float = 1e-4,
                 storage: str | None = None,
                 loaded: tuple[dict[str, Any], list[ExportedLayer]] | None = None,
                 progress: Callable[[str], None] | None = None) -> Report:
    """Check the export in ``outdir`` against ``graph`` (an onnx.ModelProto) run by
    ``oracle`` on ``feeds`` ({graph input name: array}; float ones are read as float32,
    NCHW for images). ``loaded``: what :func:`load_export` gave for ``outdir``, when the
    caller has read it already (each read hashes every file).

    ``storage``: the MPS image type, "float16" or "float32" (default: the manifest's
    weight type). ``progress``: called with a line of progress ("layer i of n") as the walk
    goes. Raises :class:`VerifyError` when nothing can be compared (a corrupt export,
    unusable feeds); divergences are in the report.
    """
    # a bad file (NaN, inf, float16 overflow) shows as nan/inf in the report's numbers and
    # a note on its row, never as numpy's RuntimeWarning
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _verify_graph(outdir, graph, feeds, oracle, model_label=model_label,
                             oracle_label=oracle_label, input_label=input_label, atol=atol,
                             rtol=rtol, storage=storage, loaded=loaded, progress=progress)


def _verify_graph(outdir: str | os.PathLike[str], graph: Any, feeds: Mapping[str, Any],
                  oracle: Oracle, *, model_label: str, oracle_label: str,
                  input_label: str | None, atol: float, rtol: float, storage: str | None,
                  loaded: tuple[dict[str, Any], list[ExportedLayer]] | None,
                  progress: Callable[[str], None] | None) -> Report:
    if atol < 0 or rtol < 0 or not (math.isfinite(atol) and math.isfinite(rtol)):
        raise VerifyError(f"atol and rtol must be finite and >= 0, got {atol}, {rtol}")
    doc, layers = load_export(outdir) if loaded is None else loaded
    wdt = str(doc.get("weights_dtype", "float32"))
    st = np.dtype(storage or ("float32" if wdt == "uint8" else wdt))
    if st not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise VerifyError(f"storage must be float16 or float32, got {storage!r}")
    arrays = {}
    for k, v in feeds.items():
        a = np.asarray(v)
        arrays[str(k)] = np.ascontiguousarray(a.astype(np.float32) if a.dtype.kind == "f"
                                              else a)
    g = Graph(graph, {k: tuple(v.shape) for k, v in arrays.items()})
    missing = [vi.name for vi in g.inputs if vi.name not in arrays]
    if missing:
        raise VerifyError(f"no input given for {missing}")
    names = [o for n in g.nodes for o in n.output if o]
    if progress is not None:
        progress(f"running {oracle_label} on {len(g.nodes)} nodes")
    got = oracle(names)
    values = {**arrays, **{k: np.asarray(v) for k, v in got.items() if k in set(names)}}
    if input_label is None:
        input_label = "given; shape " + ", ".join(f"{k} {list(v.shape)}"
                                                  for k, v in arrays.items())
    report = Report(os.fspath(outdir), model_label, input_label, st.name, wdt, float(atol),
                    float(rtol), oracle=oracle_label)
    recurrent = [x for x in layers if x.kind in RECURRENT_KINDS]
    layers = [x for x in layers if x.kind not in RECURRENT_KINDS]
    ex = Executor(g, layers, values, st, U16 if wdt == "float16" else 0.0, report,
                  list(doc.get("skipped", [])) + list(doc.get("unsupported", [])))
    ex.progress = progress
    ex.run(arrays)
    if recurrent:  # sequences, not images: checked node by node (verify/recurrent.py)
        if progress is not None:
            progress(f"{len(recurrent)} recurrent layers")
        done = check_layers(g, recurrent, values, report)
        before = len(report.not_verified)
        report.not_verified = [x for x in report.not_verified if x["name"] not in done]
        report.operators_verified += before - len(report.not_verified)
    return report
