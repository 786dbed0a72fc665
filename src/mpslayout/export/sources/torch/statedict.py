"""Export by rule from a PyTorch-style ``state_dict`` (safetensors or .pt files): there is
no graph, so each ``MODULE.weight`` is converted by its shape alone and the manifest says
what was assumed. What the graph would tell, the user passes: the (C, H, W) a Linear
reads after a flatten (``input_shapes``) and the (H, W, C) of a ``view`` after it
(``reshapes``, PyTorch's C, H, W order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import geometry as mf
from ...plan import WEIGHT_KINDS, Layer, Overrides, Plan, TensorRef, const_tensor, is_float
from ...reshape import reshape_layer
from . import rnn as statedict_rnn

ASSUMPTIONS = [
    "tensor names follow PyTorch's state_dict convention (MODULE.weight, MODULE.bias, "
    "MODULE.running_mean, ...); a module's layer type is read from its weight's shape",
    "a 4-D weight is a Conv2d in OIHW layout with groups=1, a 3-D one a Conv1d (O, I, K), "
    "taken by MPS as kernel height 1 (O, 1, K, I): ConvTranspose and grouped convolutions "
    "cannot be told apart in a state_dict; --kind NAME=conv_transpose or "
    "NAME=depthwise says what one is (a (C, 1, kH, kW) weight has the same bytes as a "
    "depthwise (C, kH, kW) one)",
    "strides, padding and dilation are not stored in a state_dict: no MPS offsets are given",
    "a 2-D weight is a Linear (OI) reading a plain vector, unless input_shapes gives the "
    "(C, H, W) image flattened before it (torch.flatten order C, H, W)",
    "reshapes (H, W, C) after a Linear are PyTorch view(-1, C, H, W) reshapes (order C, H, W)",
    "a module with running_mean and running_var is a BatchNorm with epsilon 1e-5 (PyTorch's "
    "default; epsilon is not stored in a state_dict)",
    "a floating tensor no rule claims (LayerNorm weight/bias, embeddings, ...) is exported "
    "as it is, as a kind 'tensor' layer named after the tensor",
]
_ROLES = {"weight": "weight", "bias": "bias"}

_BN_KEYS = {"weight": "gamma", "bias": "beta", "running_mean": "mean",
            "running_var": "variance"}


def _modules(tensors: dict[str, TensorRef]) -> dict[str, dict[str, TensorRef]]:
    out: dict[str, dict[str, TensorRef]] = {}
    for name, ref in tensors.items():
        prefix, _, leaf = name.rpartition(".")
        out.setdefault(prefix, {})[leaf] = ref
    return out


def plan(tensors: dict[str, TensorRef], fmt: str, overrides: Overrides) -> Plan:
    p = Plan(fmt, assumptions=list(ASSUMPTIONS))
    for prefix, leaves in _modules(tensors).items():
        if statedict_rnn.is_recurrent(leaves):  # nn.LSTM / GRU / RNN weight families
            used = statedict_rnn.module(p, prefix or "(root)", leaves)
        else:
            used = _module(p, prefix or "(root)", leaves, overrides)
        for leaf, ref in leaves.items():
            if leaf in used or leaf == "num_batches_tracked":
                continue
            if not is_float(ref.dtype):
                p.skip(ref.name, "tensor", f"dtype {ref.dtype} is not floating point: not a "
                       "learned tensor")
                continue
            source = {"format": fmt, "module": prefix or "(root)", "input": None,
                      "output": None}
            layer = Layer(ref.name, "tensor", "tensor", source, ref,
                          geometry={"role": _ROLES.get(leaf, "operand")}, carried=[ref.name])
            layer.notes.append("not the weight, bias or statistics of a Conv2d, Linear or "
                               "BatchNorm module: exported as it is in the file")
            p.layers.append(layer)
    return p


def _skip_dtype(p: Plan, refs: list[TensorRef]) -> bool:
    bad = [r for r in refs if not is_float(r.dtype)]
    for r in bad:
        p.skip(r.name, "tensor", f"dtype {r.dtype} is not floating point (quantized?): no "
               "MPS layer reads it", [r.name])
    return bool(bad)


def _batch_norm(p: Plan, name: str, leaves: dict[str, TensorRef]) -> set[str]:
    """A BatchNorm module; without affine parameters, gamma is 1 and beta 0."""
    stats = [leaves["running_mean"], leaves["running_var"]]
    if _skip_dtype(p, [leaves[k] for k in ("weight", "bias", "running_mean", "running_var")
                       if k in leaves]):
        return set(leaves)
    c = stats[0].shape[0] if len(stats[0].shape) == 1 else 0
    refs = {role: leaves[key] for key, role in _BN_KEYS.items() if key in leaves}
    refs.setdefault("gamma", const_tensor(f"{name}:gamma", np.ones(c, np.float32)))
    refs.setdefault("beta", const_tensor(f"{name}:beta", np.zeros(c, np.float32)))
    if c == 0 or any(r.shape != (c,) for r in refs.values()):
        p.skip(name, "BatchNorm", "weight, bias, running_mean and running_var must be "
               "vectors of one length", [r.name for r in refs.values() if not r.synthetic])
        return set(leaves)
    source = {"format": p.format, "module": name, "weights": None, "bias": None,
              "tensors": {k: v.name for k, v in refs.items()}}
    geo = {"input_channels": c, "output_channels": c, "epsilon": 1e-5,
           "input_shape": mf.image(None, None, c), "output_shape": mf.image(None, None, c)}
    p.layers.append(Layer(name, "batch_normalization", "batch_norm", source, geometry=geo,
                          tensors=refs, notes=["epsilon 1e-5 assumed (PyTorch's default)"]))
    return set(_BN_KEYS) | {"num_batches_tracked"}


def _module(p: Plan, name: str, leaves: dict[str, TensorRef], over: Overrides) -> set[str]:
    """Add the layer of one module; returns the leaves it used."""
    w, b = leaves.get("weight"), leaves.get("bias")
    if "running_mean" in leaves and "running_var" in leaves and (w is None or len(w.shape) == 1):
        return _batch_norm(p, name, leaves)
    if w is None:
        return set()
    source: dict[str, Any] = {"format": p.format, "module": name, "weights": w.name,
                              "bias": b.name if b is not None else None}
    used = {"weight", "bias"} if b is not None else {"weight"}
    if _skip_dtype(p, [w] + ([b] if b is not None else [])):
        return used
    rank = len(w.shape)
    kind = over.get("kinds", [name, w.name])
    if kind is not None:
        p.assumptions.append(f"{name!r}: its weight {list(w.shape)} taken as {kind} "
                             f"({WEIGHT_KINDS[kind]}), as kinds (--kind) says")
        if (kind == "linear") != (rank == 2) or rank not in (2, 3, 4):
            raise ValueError(f"kinds[{name!r}]={kind!r}, but its weight {w.name!r} is "
                             f"{rank}-D {list(w.shape)}: {WEIGHT_KINDS[kind]}")
    if rank == 5:
        p.refuse(name, "Conv3d", "a 5-D weight (Conv3d): MPSCNN has no 3-D convolution",
                 [w.name] + ([b.name] if b is not None else []))
        return used
    if rank in (3, 4):
        return _conv(p, name, w, b, source, kind or "conv") or used
    if rank != 2:  # not a layer rule's: the leaves become "tensor" layers
        return set()
    if b is not None and (len(b.shape) != 1 or b.shape[0] != w.shape[0]):
        p.skip(name, "module", f"bias shape {list(b.shape)} does not match weight shape "
               f"{list(w.shape)}", [w.name, b.name])
        return used
    o, n = w.shape
    names = [name, w.name]
    given = over.get("input_shapes", names)
    hwc = None
    params: dict[str, Any] = {"layout": "OI"}
    if given is not None:
        c, h, ww = given
        if c * h * ww != n:
            raise ValueError(f"input_shapes[{name!r}]={given} holds {c * h * ww} values but "
                             f"{w.name!r} has {n} inputs")
        hwc = (h, ww, c)
        params.update(input_shape=given, flatten="CHW")
    geo = mf.fc_geometry(n_in=n, n_out=o, source=hwc, flatten="CHW")
    shape = over.get("reshapes", names)
    if shape is None:
        layer = Layer(name, "fully_connected", "fc", source, w, b, params, geo)
        layer.notes.append("read as Linear (OI)" + (f" after a flatten of (C, H, W)={given}"
                                                    if given else " on a plain vector"))
        p.layers.append(layer)
        return used
    if shape[0] * shape[1] * shape[2] != o:
        raise ValueError(f"reshapes[{name!r}]={shape} holds {shape[0] * shape[1] * shape[2]} "
                         f"values but {w.name!r} has {o} outputs")
    p.layers.append(reshape_layer(name, source, w, b, params, geo, shape, "CHW"))
    return used


def _conv(p: Plan, name: str, w: TensorRef, b: TensorRef | None, source: dict[str, Any],
          kind: str) -> set[str] | None:
    """A Conv1d/2d, ConvTranspose1d/2d or depthwise module's layer; returns None (the
    caller's ``used``) or, when the bias does not fit, lists the module and returns the
    leaves it leaves behind (naming the kind the shapes suggest and the flag)."""
    dims = "1d" if len(w.shape) == 3 else "2d"
    out_axis = 1 if kind == "conv_transpose" else 0
    if b is not None and (len(b.shape) != 1 or b.shape[0] != w.shape[out_axis]):
        hint = ""
        if kind == "conv" and len(b.shape) == 1 and b.shape[0] == w.shape[1]:
            hint = (f"; it does as a ConvTranspose{dims} (I, O, ...): if it is one, pass "
                    f"--kind {name}=conv_transpose (kinds={{{name!r}: 'conv_transpose'}})")
        elif kind == "conv_transpose" and len(b.shape) == 1 and b.shape[0] == w.shape[0]:
            hint = f"; it does as a Conv{dims}: drop --kind {name}=conv_transpose"
        p.skip(name, "module", f"bias shape {list(b.shape)} does not match weight shape "
               f"{list(w.shape)} read as {WEIGHT_KINDS[kind]}{hint}", [w.name, b.name])
        return {"weight", "bias"}
    a0, a1, kh, kw = w.shape if len(w.shape) == 4 else (w.shape[0], w.shape[1], 1, w.shape[2])
    w4 = w  # a Conv1d's (A, B, K) stays 3-D: the target reads it as kernel height 1
    what = f"Conv{dims}" if kind == "conv" else (
        f"ConvTranspose{dims}" if kind == "conv_transpose" else f"depthwise Conv{dims}")
    note = (f"read as {what} ({WEIGHT_KINDS[kind]}); strides, padding and dilation unknown"
            + ("; a Conv1d is an MPS convolution of kernel height 1, the sequence along the "
               "width" if dims == "1d" else ""))
    if kind == "conv_transpose":
        geo = mf.transposed_geometry(kh=kh, kw=kw, cin=a0, cout=a1, groups=1, stride=(1, 1),
                                     dilation=(1, 1), pads=None, output_padding=(0, 0))
        geo["strides"] = geo["dilations"] = geo["output_padding"] = None
        layer = Layer(name, "transposed", "transposed", source, w4, b, {"layout": "IOHW"}, geo)
    elif kind == "depthwise":
        if a1 != 1:
            raise ValueError(f"kinds[{name!r}]='depthwise', but its weight {w.name!r} "
                             f"{list(w.shape)} is not (C, 1, ...): one input channel per "
                             "output channel")
        geo = mf.conv_geometry(kh=kh, kw=kw, cin=a0, cout=a0, groups=a0, stride=(1, 1),
                               dilation=(1, 1), pads=None)
        geo["strides"] = geo["dilations"] = None
        layer = Layer(name, "depthwise", "depthwise", source, w4, b, {"layout": "OIHW"}, geo)
    else:
        geo = mf.conv_geometry(kh=kh, kw=kw, cin=a1, cout=a0, groups=1, stride=(1, 1),
                               dilation=(1, 1), pads=None)
        geo["strides"] = geo["dilations"] = None
        layer = Layer(name, "convolution", "conv", source, w4, b, {"layout": "OIHW"}, geo)
    layer.notes.append(note)
    p.layers.append(layer)
    return None
