"""Running one exported recurrent direction from its files (MPS's cell formulas, or the
framework's own for a GRU MPS cannot compute), and ONNX Runtime running a recurrent node
alone: the pieces :mod:`.recurrent` and :mod:`.rnn_probe` share."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..reference import rnn as ref
from .ort import onnx_runtime_oracle

__all__ = ["compare", "model_cell", "node_alone", "onnx_value", "run_exported"]

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


def model_cell(entry: dict[str, Any], arrays: dict[str, np.ndarray], x: np.ndarray,
                h0: np.ndarray | None) -> np.ndarray:
    """Y of a ``linear_before_reset=1`` GRU direction, computed from its files with the
    framework's cell rather than MPS's."""
    hidden, common, neurons = _settings(entry["recurrent"], h0)
    return ref.gru_reset_after(x, arrays, hidden, neurons=neurons, **common)[0]


def _neuron(spec: Any) -> Any:
    # a gate MPS has no neuron for was exported without one: identity (and exact: false)
    return ("None", 1.0, 1.0) if spec is None else spec


def node_alone(graph: Any, i: int, f16: bool, feeds: dict[str, np.ndarray]) -> Any:
    """A model of node ``i`` alone: its constant inputs as initializers (rounded through
    float16 when ``f16``), every other input (and a constant given in ``feeds`` in its
    place) a graph input."""
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
        c = graph.const(name) if name not in feeds else None
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
    alone = node_alone(graph, i, f16, feeds)
    return onnx_runtime_oracle(alone)([node.output[0]], feeds)[node.output[0]]
