"""The MLX target's conversion: one plan :class:`~mpslayout.export.plan.Layer` becomes the
named parameters of the MLX module that computes it, through MLX's layout rules
(:mod:`mpslayout.mlx.rules`, docs/mlx.md), and a record of the layer for the file's
metadata (what verify runs it from).

Names (docs/mlx.md, "Export"): a state_dict's keys (``conv1.weight``), with a recurrent
module's ``weight_ih_l{k}[_reverse]`` family mapped onto MLX's ``Wx``/``Wh``/``bias``
(``b``/``bhn`` for a GRU; ``Wxh``/``Whh`` for an RNN) at ``T``, ``T.layers.{k}``,
``T.reverse`` or ``T.reverse.layers.{k}``, the paths :func:`mpslayout.mlx.sanitize`
reads; an ONNX model's initializer names (a recurrent node's parameters under its layer
name); a Keras model's MLX names under the layer's name (``LAYER.weight``, ``LAYER.bias``,
``LAYER.running_mean``, ``LAYER.Wx``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ....mlx import rules
from ....mlx.quantize import affine_quantize
from ...plan import Layer, scaled

__all__ = ["MlxLayer", "NotForMlx", "convert_layer", "names"]

# the plan's recurrent layout names -> mpslayout.mlx.rules' source names
_RNN_SOURCE = {"ONNX": "onnx", "PyTorch": "torch", "Keras": "keras"}
# the neurons mlx.nn.LSTM / GRU / RNN compute at each gate (recurrent.py)
_GATE_NEURONS = {
    "lstm": {"inputGate": ("Sigmoid",), "forgetGate": ("Sigmoid",), "outputGate": ("Sigmoid",),
             "cellGate": ("TanH",), "cellToOutput": ("TanH",)},
    "gru": {"inputGate": ("Sigmoid",), "recurrentGate": ("Sigmoid",), "outputGate": ("TanH",)},
    "rnn": {"input": ("TanH", "ReLU")},
}
_BN = {"gamma": "weight", "beta": "bias", "mean": "running_mean", "variance": "running_var"}
# the plan's framework layout of a 4-D convolution weight -> the same at rank 3 and 5
_CONV_BY_RANK = {"OIHW": {3: "OIW", 4: "OIHW", 5: "OIDHW"},
                 "HWIO": {3: "WIO", 4: "HWIO", 5: "DHWIO"}}
_CONVT_BY_RANK = {"IOHW": {3: "IOW", 4: "IOHW", 5: "IODHW"},
                  "HWOI": {3: "WOI", 4: "HWOI", 5: "DHWOI"}}


class NotForMlx(ValueError):
    """A layer MLX has no module for (the message says why): listed, its tensors left
    behind, so that ``strict`` fails naming them."""


@dataclass
class MlxLayer:
    """One converted layer: ``arrays`` {MLX name: array}, ``tensors`` {MLX name: {"kind",
    "source_layout"}} and ``record`` (the layer's entry in the file's metadata)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tensors: dict[str, dict[str, str]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def put(self, name: str, a: np.ndarray, kind: str, source_layout: str) -> None:
        if name in self.arrays:
            raise ValueError(f"two tensors of one layer are both named {name!r}")
        self.arrays[name] = a
        self.tensors[name] = {"kind": kind, "source_layout": source_layout}

    def rename(self, old: str, new: str) -> str:
        """Give tensor ``old`` the name ``new`` (in the record too); returns ``new``."""
        self.arrays[new] = self.arrays.pop(old)
        self.tensors[new] = self.tensors.pop(old)
        table = self.record.get("tensors", {})
        for role, name in table.items():
            if name == old:
                table[role] = new
        return new


def _base(layer: Layer) -> str:
    """The module path a layer's parameters go under."""
    src = layer.source
    fmt = src.get("format")
    if fmt == "keras":  # a layer in two parts (SeparableConv2D): LAYER.depthwise, ...
        base = str(src.get("layer") or layer.name)
        return f"{base}.{src['part']}" if src.get("part") else base
    if fmt in ("pytorch", "safetensors") and src.get("module") not in (None, "(root)"):
        return str(src["module"])
    w = src.get("weights")
    if isinstance(w, str) and w.endswith(".weight"):
        return w[: -len(".weight")]
    return layer.name


def names(layer: Layer) -> tuple[str, str]:
    """(weight name, bias name) of a layer with one weight: the source's own names where
    it has them (state_dict keys, ONNX initializers), else ``BASE.weight``/``BASE.bias``."""
    src = layer.source
    base = _base(layer)
    fmt = src.get("format")
    if fmt == "keras":
        return f"{base}.weight", f"{base}.bias"
    w, b = src.get("weights"), src.get("bias")
    w_name = w if isinstance(w, str) and w else f"{base}.weight"
    real_bias = isinstance(b, str) and b and layer.bias is not None \
        and not layer.bias.synthetic
    b_name = b if real_bias else (f"{base}.bias" if w_name.endswith(".weight") or
                                  w_name == f"{base}.weight" else f"{w_name}_bias")
    return w_name, b_name


def _recurrent_path(layer: Layer, stacked: bool) -> str:
    """``T``, ``T.layers.{k}``, ``T.reverse`` or ``T.reverse.layers.{k}`` for one direction of
    one layer of a recurrent module (docs/mlx.md); ``stacked``: the module has several
    layers, so every one of them is at ``.layers.{k}``."""
    src = layer.source
    rec = layer.geometry.get("recurrent", {})
    backward = rec.get("layerSequenceDirection") == "backward"
    k = int(rec.get("stack_index", 0))
    fmt = src.get("format")
    if fmt in ("pytorch", "safetensors"):
        base = str(src.get("module", layer.name))
    elif fmt == "keras":
        base = str(src.get("layer", layer.name))
    else:
        base = str(src.get("node", layer.name))
    path = base + (".reverse" if backward else "")
    return f"{path}.layers.{k}" if stacked else path


def _weight(layer: Layer) -> np.ndarray:
    ref = layer.weight
    if ref is None:
        raise ValueError(f"layer {layer.name!r} has no weight tensor")
    return scaled(ref.load(), layer.scale)


def _bias(layer: Layer, out: MlxLayer, name: str, dtype: np.dtype | None) -> None:
    if layer.bias is not None:
        b = np.asarray(layer.bias.load()).reshape(-1)
        out.put(name, b.astype(dtype or np.float32), "bias", "O")


def _recurrent(layer: Layer, out: MlxLayer, dtype: np.dtype | None, stacked: bool) -> None:
    t = {k: v.load() for k, v in layer.tensors.items()}
    if "P" in t:
        raise NotForMlx("peephole weights (P): mlx.nn.LSTM has no peepholes")
    rec = layer.geometry.get("recurrent", {})
    acts = {**rec.get("neurons", {}), "cellToOutput": rec.get("cellToOutputNeuron")}
    for gate, spec in acts.items():
        if gate not in _GATE_NEURONS[layer.rule]:
            continue
        kind = (spec or {}).get("type")
        if kind not in _GATE_NEURONS[layer.rule][gate]:
            raise NotForMlx(f"gate {gate} uses {kind or 'no neuron'}; mlx.nn."
                            f"{layer.rule.upper()} computes "
                            f"{' or '.join(_GATE_NEURONS[layer.rule][gate])} there")
    source = _RNN_SOURCE[layer.params["layout"]]
    b = t.get("B")
    b_ih = b_hh = None
    if b is not None:
        if source == "torch":
            b_ih, b_hh = b[0], b[1]
        else:
            b_ih = b  # ONNX (dirs, 2GH) and Keras bias: split by the rule
    kw: dict[str, Any] = {"layout": source, "direction": layer.params.get("direction", 0),
                          "dtype": dtype}
    try:
        if layer.rule == "lstm":
            params = rules.lstm_params(t["W"], t["R"], b_ih, b_hh, **kw)
        elif layer.rule == "gru":
            extra = {"onnx": {"linear_before_reset": bool(rec.get("linear_before_reset"))},
                     "keras": {"reset_after": b is not None and np.ndim(b) == 2},
                     "torch": {}}[source]
            params = rules.gru_params(t["W"], t["R"], b_ih, b_hh, **kw, **extra)
        else:
            params = rules.rnn_params(t["W"], t["R"], b_ih, b_hh, **kw)
    except ValueError as e:
        if "cell mlx.nn" in str(e) or "does not compute" in str(e):
            raise NotForMlx(str(e)) from None
        raise
    path = _recurrent_path(layer, stacked)
    for pname, a in params.items():
        out.put(f"{path}.{pname}", a, layer.rule, source)
    out.record["module"] = path
    if layer.rule == "rnn":
        out.record["nonlinearity"] = (acts.get("input") or {}).get("type")


def _quantized(out: MlxLayer, w_name: str, quantize: dict[str, int] | None,
               source_layout: str) -> None:
    """``--quantize affine``: the converted weight of a Linear / Embedding replaced by
    ``nn.QuantizedLinear``'s ``weight`` (packed uint32), ``scales`` and ``biases``
    (bit-identical to ``mx.quantize``); a weight whose rows do not split into groups
    stays as it is, and the record says so."""
    if quantize is None:
        return
    w = out.arrays[w_name]
    gs, bits = quantize["group_size"], quantize["bits"]
    if w.ndim != 2 or w.shape[-1] % gs:
        out.record.setdefault("notes", []).append(
            f"not quantized: {w.shape[-1]} inputs do not split into groups of {gs}")
        return
    wq, scales, biases = affine_quantize(w, group_size=gs, bits=bits)
    stem = w_name[: -len(".weight")] if w_name.endswith(".weight") else w_name
    out.arrays[w_name] = wq
    for suffix, a in (("scales", scales), ("biases", biases)):
        name = f"{stem}.{suffix}" if stem != w_name else f"{stem}_{suffix}"
        out.put(name, a, out.tensors[w_name]["kind"], source_layout)
        out.record.setdefault("tensors", {})[suffix] = name
    out.record["quantization"] = {"mode": "affine", "bits": bits, "group_size": gs}


def convert_layer(layer: Layer, dtype: np.dtype | None = None, stacked: bool = False,
                  quantize: dict[str, int] | None = None) -> MlxLayer:
    """The MLX parameters of ``layer`` (``dtype``: float16/bfloat16 weights, None: as in
    the source) and its metadata record; ``stacked``: a recurrent layer of a module with
    several layers; ``quantize`` ({"bits", "group_size"}): Linear and Embedding weights
    as ``nn.QuantizedLinear`` / ``QuantizedEmbedding`` load them. Raises
    :class:`NotForMlx` for a layer MLX has no module for."""
    out = MlxLayer()
    p = layer.params
    rule = layer.rule
    out.record = {"name": layer.name, "rule": rule, "source": dict(layer.source),
                  "params": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in p.items() if k != "quantize"},
                  "geometry": layer.geometry}
    w_name, b_name = names(layer)
    if rule in ("lstm", "gru", "rnn"):
        _recurrent(layer, out, dtype, stacked)
    elif rule in ("conv", "depthwise", "expand_depthwise", "conv_subpixel"):
        w = _weight(layer)
        layout = p["layout"]
        if layout == "HWCM":  # Keras depthwise (kH, kW, C, M)
            a = rules.depthwise_weights(w, layout="HWCM" if w.ndim == 4 else "WCM",
                                        dtype=dtype)
        else:
            a = rules.conv_weights(w, layout=_CONV_BY_RANK[layout][w.ndim], dtype=dtype)
        out.put(w_name, a, "conv", layout)
        _bias(layer, out, b_name, dtype)
    elif rule == "transposed":
        w = _weight(layer)
        groups = int(p.get("groups", 1))
        if groups != 1:
            raise NotForMlx(f"a transposed convolution with groups={groups}: "
                            "mx.conv_transpose supports only groups=1 (port it as "
                            f"{groups} ConvTranspose layers, docs/mlx.md)")
        layout = p["layout"]
        out.put(w_name, rules.conv_transpose_weights(
            w, layout=_CONVT_BY_RANK[layout][w.ndim], dtype=dtype), "conv_transpose", layout)
        _bias(layer, out, b_name, dtype)
    elif rule in ("fc", "dense_reshape"):
        w = _weight(layer)
        ishape = p.get("input_shape")
        out.put(w_name, rules.linear_weights(
            w, layout=p["layout"], input_shape=None if ishape is None else tuple(ishape),
            flatten=p.get("flatten", "CHW"), dtype=dtype), "linear", p["layout"])
        out.record["tensors"] = {"weight": w_name}
        _quantized(out, w_name, quantize, p["layout"])
        _bias(layer, out, b_name, dtype)
    elif rule == "batch_norm":
        base = _base(layer) if layer.source.get("format") != "onnx" else layer.name
        for role, mlx_name in _BN.items():
            ref = layer.tensors[role]
            name = (ref.name if layer.source.get("format") == "onnx" and not ref.synthetic
                    else f"{base}.{mlx_name}")
            a = np.asarray(ref.load()).reshape(-1).astype(dtype or np.float32)
            out.put(name, a, "norm", "C")
            out.record.setdefault("tensors", {})[mlx_name] = name
    elif rule in ("tensor", "arithmetic"):
        ref = layer.weight
        if ref is None:
            raise ValueError(f"layer {layer.name!r} has no tensor")
        a = np.asarray(ref.load())
        layout = "source"
        if rule == "arithmetic" and a.ndim == 4:  # (1, C, H, W) against NCHW -> NHWC
            a, layout = np.ascontiguousarray(a.transpose(0, 2, 3, 1)), "NCHW"
        if dtype is not None and a.dtype.kind == "f":
            a = a.astype(dtype)
        name = ref.name if not ref.synthetic else f"{layer.name}.weight"
        out.put(name, a, "tensor", layout)
        if layer.source.get("op") in ("Gather", "Embedding") and a.ndim == 2:
            out.record["tensors"] = {"weight": name}  # an embedding table
            _quantized(out, name, quantize, layout)
    else:
        raise NotForMlx(f"rule {rule!r} has no MLX module")
    table = out.record.setdefault("tensors", {})
    for n in out.arrays:
        if n not in table.values():
            table["weight" if n == w_name else "bias" if n == b_name
                  else n.rsplit(".", 1)[-1]] = n
    return out
