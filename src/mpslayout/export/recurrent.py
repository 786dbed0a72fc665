"""Recurrent layers in the plan: one :class:`Layer` per direction (an MPSRNN layer with an
``MPSLSTMDescriptor``, ``MPSGRUDescriptor`` or ``MPSRNNSingleGateDescriptor``), whose files
are the descriptor's gate data sources, one file per property (``STEM.<property>.bin``,
biases ``STEM.<property>.bias.bin``). The sources (ONNX, state_dict, Keras) only find the
tensors and the cell's settings; a target applies its rules (MPS: :mod:`mpslayout.rnn`,
docs/layouts.md section 9).
"""

from __future__ import annotations

from typing import Any

from .. import rnn
from .plan import Layer, TensorRef

CELLS = {"lstm": ("MPSLSTMDescriptor", 4), "gru": ("MPSGRUDescriptor", 3),
         "rnn": ("MPSRNNSingleGateDescriptor", 1)}
RULES = tuple(CELLS)
DIRECTIONS = ("forward", "backward")

# ONNX activation -> MPSCNNNeuronType (a, b), with ONNX's default alpha/beta; None: no
# MPS neuron computes it
_ONNX_NEURONS: dict[str, tuple[str, float | None, float | None] | None] = {
    "Sigmoid": ("Sigmoid", None, None),
    "Tanh": ("TanH", 1.0, 1.0),
    "Relu": ("ReLU", 0.0, None),
    "LeakyRelu": ("ReLU", 0.01, None),
    "HardSigmoid": ("HardSigmoid", 0.2, 0.5),
    "Affine": ("Linear", 1.0, 0.0),
    "ScaledTanh": ("TanH", 1.0, 1.0),
    "Elu": ("ELU", 1.0, None),
    "Softsign": ("SoftSign", None, None),
    "Softplus": ("SoftPlus", 1.0, 1.0),
    "ThresholdedRelu": None,
}
# Keras activation names -> the ONNX spelling above
KERAS_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu",
                     "hard_sigmoid": "KerasHardSigmoid", "linear": "Affine",
                     "softsign": "Softsign", "softplus": "Softplus", "elu": "Elu"}

# the ONNX activations that take activation_alpha / activation_beta (ONNX Runtime hands the
# node's lists out, in order, to these only)
TAKES_ALPHA = frozenset(("LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu",
                         "Affine"))
TAKES_BETA = frozenset(("ScaledTanh", "HardSigmoid", "Affine"))

SIGMOID = {"type": "Sigmoid", "a": 1.0, "b": 1.0}
TANH = {"type": "TanH", "a": 1.0, "b": 1.0}


def neuron(name: str, alpha: float | None = None, beta: float | None = None
           ) -> dict[str, Any] | None:
    """The MPS neuron of an ONNX activation (a dict type/a/b), None when MPS lacks it;
    ``alpha``/``beta`` count only for the activations that take them.
    Keras 3's hard_sigmoid is relu6(x + 3) / 6: HardSigmoid a = 1/6, b = 0.5."""
    if name == "KerasHardSigmoid":
        return {"type": "HardSigmoid", "a": 1.0 / 6.0, "b": 0.5}
    spec = _ONNX_NEURONS.get(name)
    if spec is None:
        return None
    kind, a, b = spec
    a = alpha if alpha is not None and name in TAKES_ALPHA else a
    b = beta if beta is not None and name in TAKES_BETA else b
    return {"type": kind, "a": 1.0 if a is None else float(a),
            "b": 1.0 if b is None else float(b)}


def gate_neurons(cell: str, acts: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Per-gate neurons from the framework's activation list: LSTM (f, g, h) -> gates
    i, f, o get f, the cell gate g, cellToOutput h; GRU (f, g) -> z, r get f, output g;
    RNN (f,)."""
    if cell == "lstm":
        f, g, h = acts
        return {"inputGate": f, "forgetGate": f, "cellGate": g, "outputGate": f,
                "cellToOutput": h}
    if cell == "gru":
        f, g = acts
        return {"inputGate": f, "recurrentGate": f, "outputGate": g}
    return {"input": acts[0]}


def recurrent_layer(name: str, cell: str, source: dict[str, Any], tensors: dict[str, TensorRef],
                    *, layout: str, direction: int, index: int, hidden: int, inputs: int,
                    neurons: dict[str, Any], notes: list[str], pair: list[str] | None = None,
                    settings: dict[str, Any] | None = None) -> Layer:
    """One direction of a recurrent layer. ``tensors``: W, R and optionally B, P in the
    framework's packing; ``index`` is the direction index into ONNX tensors (else 0)."""
    descriptor, _ = CELLS[cell]
    missing = [k for k, v in neurons.items() if v is None]
    exact = not missing and not any(n.startswith("not exact") for n in notes)
    if missing:
        notes = [*notes, f"not exact: MPS has no neuron for the activation of {missing}; "
                 "those gates are written with no neuron"]
    rec: dict[str, Any] = {
        "descriptor": descriptor,
        "layer": "MPSRNNMatrixInferenceLayer",
        "cell": cell,
        "hidden_size": hidden,
        "input_size": inputs,
        "layerSequenceDirection": DIRECTIONS[direction],
        "bidirectional": None if pair is None else {
            "layers": pair, "order": list(DIRECTIONS), "combine": "concatenate"},
        "neurons": {k: v for k, v in neurons.items() if k != "cellToOutput"},
        "exact": exact,
    }
    if cell == "lstm":
        rec["cellToOutputNeuron"] = neurons["cellToOutput"]
        rec["memoryWeightsAreDiagonal"] = "P" in tensors
    if cell == "gru":
        rec.update(gatePnormValue=1.0, flipOutputGates=False, linear_before_reset=0)
    rec.update(settings or {})
    if cell == "gru" and rec["linear_before_reset"] and "B" in tensors:
        # the framework's cell needs this bias apart (inside r * (...)); MPS has no place
        # for it, so it is written beside the gates rather than dropped
        rec["not_mps_properties"] = [rnn.RECURRENT_BIAS]
        notes = [*notes, f"{rnn.RECURRENT_BIAS}: the output gate's recurrent bias, no MPS "
                 "property (already summed into outputGateInputWeights.bias); written for a "
                 "custom kernel and for verify, which checks the files with the model's cell"]
    geo = {"input_channels": inputs, "output_channels": hidden, "input_shape": None,
           "output_shape": None, "recurrent": rec}
    layer = Layer(name, cell, cell, source, geometry=geo, tensors=dict(tensors),
                  params={"layout": layout, "direction": index}, notes=list(notes))
    return layer
