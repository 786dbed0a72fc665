"""Verify exported recurrent layers (LSTM / GRU / RNN) against ONNX Runtime.

Each exported direction runs in :mod:`mpslayout.reference.rnn` (MPS's cell formulas) from
the export's own gate files, fed with ONNX Runtime's input to the node (and its initial
states), and is compared with the direction's slice of the node's output ``Y[t][dir]``.
The judge is the oracle's own value of ``Y`` (ONNX Runtime, or Keras through its ONNX
translation); when the export holds float16 weights, ONNX Runtime running that node alone
with the model's W, R (and P) rounded to float16, so that the rounding the export was asked
for is not counted as an error. A layer the manifest marks ``exact: false`` (a cell MPS
cannot compute) is still compared; its row carries the manifest's reason. For a GRU with
``linear_before_reset=1`` (PyTorch's, Keras ``reset_after=True``) the files are also run with
the model's own cell (:func:`mpslayout.reference.rnn.gru_reset_after`, which reads the
output gate's recurrent bias the export keeps apart): that check says whether the files
hold the model's weights, whatever MPS can compute.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..reference import rnn as ref
from ..rnn import GRU_GATES, LSTM_GATES, ONNX_OPS
from .report import Check, Row
from .rnn_cells import compare, model_cell, onnx_value, run_exported
from .rnn_probe import probe_state, reaches_state

__all__ = ["RECURRENT_KINDS", "check_layers", "compare", "entry_problem", "onnx_value",
           "run_exported"]

RECURRENT_KINDS = frozenset(ONNX_OPS)


def _find_node(graph: Any, layer: Any, taken: set[tuple[int, int]]
               ) -> tuple[int | None, int]:
    """(node, direction) of the model whose ``W[direction]`` holds the same values as the
    layer's input-weight files, for an export that does not name its ONNX node (a
    PyTorch state_dict or a Keras file checked against an ONNX model). Values are
    compared as sorted multisets, so any reordering (a wrong gate order, a transposed
    block) still matches, and is then caught by the comparison itself."""
    rec = layer.entry["recurrent"]
    parts = [a for k, a in layer.arrays.items() if k.endswith("InputWeights")]
    if not parts:
        return None, 0
    mine = np.sort(np.concatenate([np.ravel(a) for a in parts]))
    for i, node in enumerate(graph.nodes):
        if node.op_type != ONNX_OPS[rec["cell"]] or len(node.input) < 2:
            continue
        w = graph.const(node.input[1])
        if w is None or w.ndim != 3:
            continue
        for d in range(w.shape[0]):
            theirs = np.sort(np.ravel(w[d]).astype(mine.dtype))
            if (i, d) not in taken and theirs.shape == mine.shape and np.array_equal(
                    theirs, mine, equal_nan=True):
                return i, d
    return None, 0


def _judge(graph: Any, i: int, values: dict[str, np.ndarray], f16: bool) -> np.ndarray:
    node = graph.nodes[i]
    if not f16:
        if node.output[0] not in values:
            raise LookupError(f"the oracle gave no value for {node.output[0]!r}")
        return values[node.output[0]]
    return onnx_value(graph, i, values, True)


def _named_node(graph: Any, src: dict[str, Any], rec: dict[str, Any]
                ) -> tuple[int | None, int]:
    """(node, direction) named by ``source.node`` (ONNX exports) or ``source.layer`` (a
    Keras export checked against its translation, which names each recurrent node after
    its layer), if that node is the layer's cell. The direction is the one recorded, else
    1 for the backward layer of a bidirectional node."""
    for key in ("node", "layer"):
        i = graph.by_name.get(src.get(key)) if isinstance(src.get(key), str) else None
        if i is None or graph.nodes[i].op_type != ONNX_OPS[rec["cell"]]:
            continue
        if "direction_index" in src:
            return i, int(src["direction_index"])
        both = graph.attrs(i).get("direction") in (b"bidirectional", "bidirectional")
        return i, int(both and rec.get("layerSequenceDirection") == "backward")
    return None, 0


_LAYERS = ("MPSRNNMatrixInferenceLayer", "MPSRNNImageInferenceLayer")


def entry_problem(entry: Any) -> str | None:
    """What makes a recurrent manifest entry unusable (a hand-edited or truncated
    manifest), or None: checked before anything runs, so verify names it on the layer's
    row instead of failing with a KeyError deep in the reference."""
    rec = entry.get("recurrent") if isinstance(entry, dict) else None
    if not isinstance(rec, dict):
        return "the manifest entry has no 'recurrent' object"
    if rec.get("cell") not in RECURRENT_KINDS or rec.get("cell") != entry.get("kind"):
        return f"recurrent.cell {rec.get('cell')!r} is not the layer's kind {entry.get('kind')!r}"
    for key in ("hidden_size", "input_size"):
        v = rec.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            return f"recurrent.{key} must be a positive integer, got {v!r}"
    if rec.get("layerSequenceDirection") not in ("forward", "backward"):
        return (f"recurrent.layerSequenceDirection must be 'forward' or 'backward', got "
                f"{rec.get('layerSequenceDirection')!r}")
    if rec.get("layer", _LAYERS[0]) not in _LAYERS:
        return f"recurrent.layer must be one of {list(_LAYERS)}, got {rec.get('layer')!r}"
    neurons = rec.get("neurons")
    wanted = {"lstm": tuple(LSTM_GATES.values()), "gru": tuple(GRU_GATES.values()),
              "rnn": ("input",)}
    extra = [rec.get("cellToOutputNeuron")] if rec["cell"] == "lstm" else []
    if not isinstance(neurons, dict) or any(k not in neurons for k in wanted[rec["cell"]]):
        return f"recurrent.neurons must name the neurons of {list(wanted[rec['cell']])}"
    for spec in [*neurons.values(), *extra]:
        if spec is None:
            continue
        if not isinstance(spec, dict) or spec.get("type") not in ref.MPS_NEURONS or not all(
                isinstance(spec.get(k, 1.0), (int, float)) for k in ("a", "b")):
            return (f"a neuron must be {{type: one of {sorted(ref.MPS_NEURONS)}, a, b}}, "
                    f"got {spec!r}")
    return None


def _probe(graph: Any, i: int, d: int, layer: Any, row: Row, report: Any, f16: bool) -> None:
    """The given input leaves the recurrent matrices (and an LSTM's forget gate) meeting
    only zeros: run the files from a random state against the oracle's cell, or say that
    those weights are untested (:mod:`.rnn_probe`)."""
    what = ("the given input (one timestep from a zero initial state) multiplies the "
            "recurrent matrices" + (" and the forget gate" if layer.kind == "lstm" else "")
            + " by zeros")
    check, how = probe_state(graph, i, d, layer, f16, report.atol, report.rtol)
    if check is None:
        row.notes.append(f"{what}: those weights are untested ({how})")
        report.untested.append({"layer": layer.name, "what": f"{what}; {how}",
                                "smallest_input": "2 or more timesteps, or a nonzero "
                                                  "initial state"})
        return
    row.state = check
    row.notes.append(f"{what}: also ran {how}: max abs error {check.max_abs:.3g}")


def check_layers(graph: Any, layers: list[Any], ort: dict[str, np.ndarray], report: Any
                 ) -> set[str]:
    """Append one row per exported recurrent direction to ``report`` (``ort``: the
    oracle's values); returns the names of the graph nodes verified."""

    done: set[str] = set()
    taken: set[tuple[int, int]] = set()
    alone: dict[int, np.ndarray] = {}
    f16 = report.weights_dtype == "float16"
    for layer in layers:
        src = layer.entry.get("source", {})
        src = src if isinstance(src, dict) else {}
        problem = entry_problem(layer.entry)
        if problem is not None:
            report.rows.append(Row(len(report.rows) + 1, layer.name, str(src.get("op", "?")),
                                   layer.kind, True, "?", [], error=problem))
            continue
        rec = layer.entry["recurrent"]
        i, d = _named_node(graph, src, rec)
        if i is None and src.get("node") is None:  # a state_dict export, or no such name
            i, d = _find_node(graph, layer, taken)
        if i is not None:
            taken.add((i, d))
        row = Row(len(report.rows) + 1, layer.name, str(src.get("op", layer.kind)),
                      layer.kind, True, "?", [])
        report.rows.append(row)
        if not rec.get("exact", True):
            row.declared_inexact = True
            row.notes.append("the manifest marks this cell not exact on MPS: "
                             + "; ".join(n.removeprefix("not exact: ")
                                         for n in layer.entry.get("notes", [])
                                         if n.startswith("not exact")))
        if i is None:
            row.error = (f"ONNX node {src.get('node')!r} of this layer is not in the model"
                         if src.get("node") is not None else
                         f"no {ONNX_OPS[rec['cell']]} node of the model has this layer's input "
                         "weights (matched by their values, whatever their order)")
            continue
        node = graph.nodes[i]
        attrs = graph.attrs(i)
        x = ort.get(node.input[0])
        if x is None:
            row.error = f"no value for the node's input {node.input[0]!r}"
            continue
        batch_first = int(attrs.get("layout", 0)) == 1
        if i not in alone:
            try:
                alone[i] = _judge(graph, i, ort, f16)
            except Exception as e:  # the judge itself cannot run: say so
                row.error = f"no judge for this node: {type(e).__name__}: {e}"
                continue
        y = alone[i]
        xs = np.swapaxes(x, 0, 1) if batch_first else x
        state = [ort.get(node.input[k]) if len(node.input) > k and node.input[k] else None
                 for k in (5, 6)]
        if batch_first:
            want = y[:, :, d].transpose(1, 0, 2)
            state = [None if s is None else np.swapaxes(s, 0, 1) for s in state]
        else:
            want = y[:, d]
        h0, c0 = (None if s is None else s[d] for s in state)
        row.tensor, row.shape = node.output[0], list(want.shape)
        try:
            got = run_exported(layer.entry, layer.arrays, xs, h0, c0)
        except ValueError as e:  # files that do not fit the manifest's sizes
            row.error = f"the files cannot run as this cell: {e}"
            continue
        if rec.get("clip") is not None:
            row.notes.append(f"clip={rec['clip']} is not computed by MPS")
        row.isolated = Check(*compare(got, want, report.atol, report.rtol))
        if rec["cell"] == "gru" and rec.get("linear_before_reset"):
            own = model_cell(layer.entry, layer.arrays, xs, h0)
            row.files = Check(*compare(own, want, report.atol, report.rtol))
            row.notes.append("the files run with the model's own cell (reset gate after the "
                             f"recurrent matrix): max abs error {row.files.max_abs:.3g}, "
                             + ("they hold the model's weights" if row.files.ok else
                                "so the FILES are wrong, not only the cell"))
        if not reaches_state(rec["cell"], xs.shape[0], h0, c0):
            _probe(graph, i, d, layer, row, report, f16)
        report.layers_checked += 1
        done.add(graph.names[i])
    return done
