"""Keras ``LSTM``, ``GRU``, ``SimpleRNN``, ``ConvLSTM2D`` and ``Bidirectional`` layers: one
MPS recurrent layer per direction (docs/layouts.md, section 9), ``ConvLSTM2D`` as an
``MPSRNNImageInferenceLayer`` whose gate data sources are convolutions. Called from the
Keras reader with the reader (its variable table) and the layer node.

Keras 3 (.keras) keeps an RNN's variables in its cell: ``<layer>/cell/vars/0..2`` (kernel,
recurrent_kernel, bias), under ``forward_layer`` / ``backward_layer`` for Bidirectional;
legacy .h5 files name them ``.../kernel:0``, ``.../recurrent_kernel:0``, ``.../bias:0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...attrs import as_pair
from ...plan import SkipLayer, TensorRef, is_float
from ...recurrent import KERAS_ACTIVATIONS, gate_neurons, neuron, recurrent_layer

CLASSES = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn", "ConvLSTM2D": "lstm"}
IMAGE_CLASSES = ("ConvLSTM2D",)  # convolutional cells: MPSRNNImageInferenceLayer
_ROLES = ("kernel", "recurrent_kernel", "bias")
# Bidirectional merge_mode -> MPSRNNBidirectionalCombineMode (None: no exact MPS mode)
_COMBINE = {"concat": "concatenate", "sum": "add", None: "none"}


def _keras_neuron(name: Any) -> dict[str, Any] | None:
    if isinstance(name, dict):  # a serialized function
        name = name.get("config", name.get("class_name"))
    return neuron(KERAS_ACTIVATIONS.get(str(name), f"keras:{name}"))


def _vars(reader: Any, n: Any, sub: str) -> dict[str, TensorRef]:
    """kernel / recurrent_kernel / bias of the cell under ``sub`` ("" or forward/backward)."""
    src = reader.src
    table = src.meta["datasets"]
    if src.zipped:
        base = f"{n.var_path}/{sub + '/' if sub else ''}cell/vars/"
        paths = [base + str(i) for i in range(3) if base + str(i) in table]
        roles = list(_ROLES[:len(paths)])
    else:
        names = src.meta["weight_names"].get(n.name) or []
        paths, roles = [], []
        for nm in names:
            if sub and sub.split("_")[0] not in nm:
                continue
            leaf = nm.rsplit("/", 1)[-1].split(":")[0]
            if leaf in _ROLES:
                paths.append(f"model_weights/{n.name}/{nm}")
                roles.append(leaf)
    refs = {}
    for role, p in zip(roles, paths):
        if p not in table:
            raise SkipLayer(f"variable {p!r} is missing")
        shape, dt, _ = table[p]
        ref = src.ref(p, tuple(shape), np.dtype(dt))
        if not is_float(ref.dtype):
            raise SkipLayer(f"variable {p!r} is {ref.dtype}, not floating point")
        refs[role] = ref
    if "kernel" not in refs or "recurrent_kernel" not in refs:
        raise SkipLayer(f"no kernel / recurrent_kernel found for {sub or 'the cell'}")
    return refs


def _image(cfg: dict[str, Any], k: tuple[int, ...], rk: tuple[int, ...], notes: list[str]
           ) -> dict[str, Any]:
    """The MPSRNNImageInferenceLayer settings of a ConvLSTM2D (kernel ``(kH, kW, I, 4H)``,
    recurrent kernel ``(kH, kW, H, 4H)``), and a "not exact" note for each setting MPS does
    not compute as Keras does (docs/layouts.md section 9, "Image RNNs")."""
    try:
        strides = as_pair(cfg.get("strides", 1), "strides", minimum=1, scalar=True)
        dilation = as_pair(cfg.get("dilation_rate", 1), "dilation_rate", minimum=1,
                           scalar=True)
    except ValueError as e:
        raise SkipLayer(str(e)) from None
    padding = str(cfg.get("padding", "valid")).lower()
    if padding not in ("same", "valid"):
        raise SkipLayer(f"padding={padding!r} is neither 'same' nor 'valid'")
    h = rk[-2]
    sizes = {k[:2], rk[:2]}
    big = any(v > 1 for v in k[:2])
    if padding == "valid" and big:
        notes.append(f"not exact: padding='valid' shrinks each step's image by the {k[0]}x"
                     f"{k[1]} kernel, and Keras then convolves that smaller state; "
                     "MPSRNNLayer.h requires all intermediate images to be of the same size "
                     "and gives the input convolution no offset: MPS's input convolution is "
                     "centred ('same' padding)")
    if strides != (1, 1):
        notes.append(f"not exact: strides={list(strides)} shrink the image; MPSRNNLayer.h "
                     "requires all intermediate images to be of the same size")
    if dilation != (1, 1) and big:
        notes.append(f"not exact: dilation_rate={list(dilation)}: Keras dilates the input "
                     "convolution only; MPSRNNLayer.h does not say whether the image RNN "
                     "reads a data source's dilationRateX/Y")
    even = sorted({v for size in sizes for v in size if v % 2 == 0})
    if even:
        notes.append(f"not exact: even kernel size {even}: Keras's 'same' padding (always "
                     "used by the recurrent convolution) starts the window (k-1)//2 before "
                     "the pixel, MPS's centred window k//2: one pixel apart")
    notes.append("MPSRNNImageInferenceLayer converts float32 weights to float16 for its "
                 "convolutions (MPSRNNLayer.h, useFloat32Weights)")

    def source(shape: tuple[int, ...]) -> dict[str, int]:
        return {"kernelHeight": int(shape[0]), "kernelWidth": int(shape[1]),
                "inputFeatureChannels": int(shape[2]), "outputFeatureChannels": int(h)}

    return {"layer": "MPSRNNImageInferenceLayer", "image": {
        "input_weights": source(k), "recurrent_weights": source(rk), "padding": padding,
        "recurrent_padding": "same", "strides": list(strides), "dilation_rate": list(dilation),
        "data_format": str(cfg.get("data_format") or "channels_last")}}


def _one(reader: Any, n: Any, cfg: dict[str, Any], cls: str, sub: str, name: str,
         backward: bool, pair: list[str] | None, extra: list[str]) -> None:
    cell = CLASSES[cls]
    refs = _vars(reader, n, sub)
    k, rk = refs["kernel"], refs["recurrent_kernel"]
    rank = 4 if cls in IMAGE_CLASSES else 2
    if len(k.shape) != rank or len(rk.shape) != rank:
        raise SkipLayer(f"kernel {list(k.shape)} / recurrent_kernel {list(rk.shape)} are not "
                        f"{rank}-D")
    hidden, n_in = rk.shape[-2], k.shape[-2]
    act, rec = cfg.get("activation", "tanh"), cfg.get("recurrent_activation", "sigmoid")
    acts = {"lstm": [rec, act, act], "gru": [rec, act], "rnn": [act]}[cell]
    notes = list(extra)
    settings: dict[str, Any] = {"return_sequences": bool(cfg.get("return_sequences", False)),
                                "go_backwards": bool(cfg.get("go_backwards", False))}
    if rank == 4:
        settings.update(_image(cfg, tuple(k.shape), tuple(rk.shape), notes))
    if cell == "gru":
        reset_after = bool(cfg.get("reset_after", True))
        settings.update(reset_after=reset_after, linear_before_reset=int(reset_after))
        if reset_after:
            notes.append("not exact: reset_after=True applies the reset gate after the "
                         "recurrent matrix (ONNX linear_before_reset=1); MPS's GRU applies it "
                         "before (reset_after=False). The two biases are summed")
    if cfg.get("go_backwards") and pair is None:
        notes.append("go_backwards=True: Keras returns the outputs in processing (reversed) "
                     "order; MPS's backward layer writes them at their time index")
    tensors = {"W": k, "R": rk}
    if "bias" in refs:
        tensors["B"] = refs["bias"]
    source = {"format": "keras", "layer": n.name, "op": n.cls, "weights": k.name,
              "recurrent_weights": rk.name, "bias": refs["bias"].name if "bias" in refs
              else None}
    reader.plan.layers.append(recurrent_layer(
        name, cell, source, tensors, layout="Keras", direction=1 if backward else 0,
        index=0, hidden=hidden, inputs=n_in, neurons=gate_neurons(cell, [
            _keras_neuron(a) for a in acts]),
        notes=notes, pair=pair, settings=settings))


def read_layer(reader: Any, n: Any) -> None:
    """Add the layers of one Keras recurrent (or Bidirectional) layer to ``reader.plan``."""
    if n.cls != "Bidirectional":
        _one(reader, n, n.cfg, n.cls, "", n.name, bool(n.cfg.get("go_backwards")), None, [])
        return
    inner = n.cfg.get("layer") or {}
    cls = str(inner.get("class_name", ""))
    if cls not in CLASSES:
        raise SkipLayer(f"Bidirectional around {cls or 'an unknown layer'}: only LSTM, GRU, "
                        "SimpleRNN and ConvLSTM2D are exported", unsupported=True)
    back = n.cfg.get("backward_layer") or inner
    mode = n.cfg.get("merge_mode", "concat")
    extra = []
    if mode not in _COMBINE:
        extra.append(f"not exact: merge_mode={mode!r} has no MPSRNNBidirectionalCombineMode "
                     "(None, Add, Concatenate): combine the two outputs yourself")
    names = [f"{n.name}.forward", f"{n.name}.backward"]
    for sub, cfg, backward, name in (("forward_layer", inner.get("config") or {}, False,
                                      names[0]),
                                     ("backward_layer", back.get("config") or {}, True,
                                      names[1])):
        _one(reader, n, cfg, cls, sub, name, backward, names, extra)
    for layer in reader.plan.layers[-2:]:
        layer.geometry["recurrent"]["bidirectional"]["combine"] = _COMBINE.get(mode, "none")
