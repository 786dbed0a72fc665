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

import math
from typing import Any

import numpy as np

from ..reference import rnn as ref
from ..rnn import GRU_GATES, LSTM_GATES, ONNX_OPS
from .ort import onnx_runtime_oracle
from .report import Check, Row

__all__ = ["RECURRENT_KINDS", "check_layers", "onnx_value", "run_exported"]

RECURRENT_KINDS = frozenset(ONNX_OPS)
_WEIGHT_INPUTS = (1, 2, 7)  # W, R, P: stored in the weights' dtype; B stays float32


def _settings(rec: dict[str, Any], h0: np.ndarray | None
              ) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(hidden size, the arguments every reference cell takes, the gates' neurons) of one
    exported direction's manifest settings."""
    common = {"reverse": rec["layerSequenceDirection"] == "backward", "h0": h0}
    return (int(rec["hidden_size"]), common,
            {k: _neuron(v) for k, v in rec["neurons"].items()})


def run_exported(entry: dict[str, Any], arrays: dict[str, np.ndarray], x: np.ndarray,
                 h0: np.ndarray | None = None, c0: np.ndarray | None = None) -> np.ndarray:
    """Y ``(T, B, H)`` of one exported direction on ``x`` ``(T, B, I)``, from its files and
    the descriptor settings in its manifest entry; an MPSRNNImageInferenceLayer takes ``x``
    ``(T, B, height, width, I)`` and gives ``(T, B, height, width, H)``."""
    rec = entry["recurrent"]
    hidden, common, neurons = _settings(rec, h0)
    common["image"] = rec.get("layer") == "MPSRNNImageInferenceLayer"
    if rec["cell"] == "lstm":
        return ref.lstm(x, arrays, hidden, neurons=neurons,
                        cell_to_output=_neuron(rec["cellToOutputNeuron"]), c0=c0,
                        diagonal=bool(rec.get("memoryWeightsAreDiagonal", True)), **common)[0]
    if rec["cell"] == "gru":
        return ref.gru(x, arrays, hidden, neurons=neurons,
                       p=float(rec.get("gatePnormValue", 1.0)),
                       flip=bool(rec.get("flipOutputGates", False)), **common)[0]
    return ref.single_gate(x, arrays, hidden, neuron=neurons["input"], **common)[0]


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


def _model_cell(entry: dict[str, Any], arrays: dict[str, np.ndarray], x: np.ndarray,
                h0: np.ndarray | None) -> np.ndarray:
    """Y of a ``linear_before_reset=1`` GRU direction, computed from its files with the
    framework's cell rather than MPS's."""
    hidden, common, neurons = _settings(entry["recurrent"], h0)
    return ref.gru_reset_after(x, arrays, hidden, neurons=neurons, **common)[0]


def _neuron(spec: Any) -> Any:
    # a gate MPS has no neuron for was exported without one: identity (and exact: false)
    return ("None", 1.0, 1.0) if spec is None else spec


def _node_alone(graph: Any, i: int, f16: bool, feeds: dict[str, np.ndarray]) -> Any:
    """A model of node ``i`` alone: its constant inputs as initializers (rounded through
    float16 when ``f16``), every other input a graph input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    node = onnx.NodeProto()
    node.CopyFrom(graph.nodes[i])
    inits, inputs = [], []
    seen: set[str] = set()
    for pos, name in enumerate(node.input):
        if not name or name in seen:  # one tensor read twice (initial_h = initial_c)
            continue
        seen.add(name)
        c = graph.const(name)
        if c is not None:
            if f16 and c.dtype.kind == "f" and pos in _WEIGHT_INPUTS:
                c = c.astype(np.float16).astype(c.dtype)
            inits.append(numpy_helper.from_array(c, name))
        else:
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(feeds[name].dtype),
                list(feeds[name].shape)))
    outs = [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)]
    del node.output[1:]  # Y_h, Y_c are not compared
    g = helper.make_graph([node], "alone", inputs, outs, inits)
    m = helper.make_model(g, opset_imports=list(graph.model.opset_import))
    m.ir_version = graph.model.ir_version
    return m


def compare(got: np.ndarray, want: np.ndarray, atol: float, rtol: float
             ) -> tuple[float, float, float, bool]:
    w = want.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - w)
        tol = atol + rtol * np.abs(w)
        ratio = np.where(np.isnan(diff), np.inf, diff / tol)
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    if np.isnan(diff).any():
        max_abs = math.inf
    scale = float(np.max(np.abs(w))) if w.size else 0.0
    worst = float(np.max(ratio)) if ratio.size else 0.0
    return max_abs, max_abs / scale if scale else max_abs, worst, worst <= 1.0


def onnx_value(graph: Any, i: int, values: dict[str, np.ndarray], f16: bool = False
               ) -> np.ndarray:
    """ONNX Runtime's ``Y`` of recurrent node ``i`` run alone on ``values`` of its inputs,
    its W, R (and P) rounded through float16 when ``f16``."""

    node = graph.nodes[i]
    feeds = {n: values[n] for n in node.input if n and graph.const(n) is None and n in values}
    alone = _node_alone(graph, i, f16, feeds)
    return onnx_runtime_oracle(alone)([node.output[0]], feeds)[node.output[0]]


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
            own = _model_cell(layer.entry, layer.arrays, xs, h0)
            row.files = Check(*compare(own, want, report.atol, report.rtol))
            row.notes.append("the files run with the model's own cell (reset gate after the "
                             f"recurrent matrix): max abs error {row.files.max_abs:.3g}, "
                             + ("they hold the model's weights" if row.files.ok else
                                "so the FILES are wrong, not only the cell"))
        report.layers_checked += 1
        done.add(graph.names[i])
    return done
