"""Recurrent weights the given input cannot reach: with one timestep and a zero initial
state (a voice-activity model's real start), the recurrent matrices multiply zeros and
the forget gate scales a zero cell, so a layer with those weights swapped agrees with the
model exactly. Like a convolution's untested taps, that is no OK: the exported direction
is also run from its files for several steps from a seeded random state, against the
oracle's own cell (ONNX Runtime running the node alone on the same inputs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .report import Check
from .rnn_cells import compare, model_cell, node_alone, run_exported

__all__ = ["STEPS", "probe_state", "reaches_state"]

STEPS = 5  # timesteps of the probe, each from the state the last one left
_BATCH = 2


def reaches_state(cell: str, steps: int, h0: np.ndarray | None, c0: np.ndarray | None
                  ) -> bool:
    """Whether an input of ``steps`` timesteps from states ``h0``/``c0`` (None: zero)
    multiplies the recurrent matrices (and an LSTM's forget gate) by something nonzero."""
    if steps > 1:
        return True
    h = h0 is not None and bool(np.any(h0))
    c = c0 is not None and bool(np.any(c0))
    return h and (c or cell != "lstm")


class _Alone:
    """The view of one node :func:`node_alone` reads: its node, the model's constants."""

    def __init__(self, graph: Any, node: Any) -> None:
        self.nodes, self.model, self.const = [node], graph.model, graph.const


def probe_state(graph: Any, i: int, d: int, layer: Any, f16: bool, atol: float,
                rtol: float, seed: int = 0) -> tuple[Check | None, str]:
    """(the comparison, what was run) of exported direction ``d`` of recurrent node ``i``
    over :data:`STEPS` steps of a seeded standard normal input from a seeded random
    initial state, against ONNX Runtime running the node alone (its W, R, P rounded
    through float16 when ``f16``); (None, why) when that cannot run."""
    import onnx

    from .ort import onnx_runtime_oracle

    rec = layer.entry["recurrent"]
    cell = rec["cell"]
    node = onnx.NodeProto()
    node.CopyFrom(graph.nodes[i])
    w = graph.const(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim != 3:
        return None, "the node's W is not a constant"
    dirs, hidden, size = int(w.shape[0]), int(rec["hidden_size"]), int(w.shape[2])
    layout = int(graph.attrs(i).get("layout", 0))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((STEPS, _BATCH, size)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((dirs, _BATCH, hidden))).astype(np.float32)
    c0 = (0.5 * rng.standard_normal((dirs, _BATCH, hidden))).astype(np.float32)
    names = {0: "probe_x", 5: "probe_h0"}
    if cell == "lstm":
        names[6] = "probe_c0"
    ins = list(node.input) + [""] * (max(names) + 1 - len(node.input))
    if len(ins) > 4 and ins[4] and graph.const(ins[4]) is None:
        ins[4] = ""  # sequence lengths of the given input: every sequence full here
    elif len(ins) > 4 and ins[4]:
        return None, "the node has constant sequence lengths"
    for k, name in names.items():
        ins[k] = name
    del node.input[:]
    node.input.extend(ins)
    feeds = {"probe_x": x, "probe_h0": h0, "probe_c0": c0}
    if layout == 1:  # batch first: X (B, T, I), states (B, D, H)
        feeds = {"probe_x": x.swapaxes(0, 1), "probe_h0": h0.swapaxes(0, 1),
                 "probe_c0": c0.swapaxes(0, 1)}
    feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in names.values()}
    try:
        alone = node_alone(_Alone(graph, node), 0, f16, feeds)
        y = onnx_runtime_oracle(alone)([node.output[0]], feeds)[node.output[0]]
    except Exception as e:  # no ONNX Runtime, or it cannot run the node alone
        return None, f"ONNX Runtime cannot run the node alone: {type(e).__name__}: {e}"
    want = y[:, :, d].transpose(1, 0, 2) if layout == 1 else y[:, d]
    try:
        if cell == "gru" and rec.get("linear_before_reset"):  # MPS's cell differs anyway
            got = model_cell(layer.entry, layer.arrays, x, h0[d])
        else:
            got = run_exported(layer.entry, layer.arrays, x, h0[d],
                               c0[d] if cell == "lstm" else None)
    except ValueError as e:
        return None, f"the files cannot run as this cell: {e}"
    what = (f"{STEPS} steps of a seeded standard normal input (seed {seed}) from a seeded "
            "random initial state, the files against ONNX Runtime running the node alone")
    return Check(*compare(got, want, atol, rtol)), what
