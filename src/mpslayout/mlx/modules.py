"""What each parameter of an MLX port is: the type of the ``mlx.nn`` module that owns it.

:func:`describe` reads an ``mlx.nn.Module`` (its modules, their types, their parameters'
shapes) or, so that the package works without mlx, a mapping ``{module_path: type_name}``
with MLX's class names (``{"conv1": "Conv2d", "rnn": "LSTM", "rnn.reverse": "LSTM"}``,
or ``{"dw": {"type": "Conv2d", "groups": 8}}``); then no MLX shape is known and only ranks
and the framework's own shapes are checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PARAMS", "TYPES", "Entry", "describe"]

# MLX class name -> (kind, spatial rank); kinds as in schema.KINDS
TYPES: dict[str, tuple[str, int]] = {
    "Conv1d": ("conv", 1), "Conv2d": ("conv", 2), "Conv3d": ("conv", 3),
    "ConvTranspose1d": ("conv_transpose", 1), "ConvTranspose2d": ("conv_transpose", 2),
    "ConvTranspose3d": ("conv_transpose", 3), "Linear": ("linear", 0),
    "LSTM": ("lstm", 0), "GRU": ("gru", 0), "RNN": ("rnn", 0),
    "BatchNorm": ("norm", 0), "LayerNorm": ("norm", 0), "GroupNorm": ("norm", 0),
    "RMSNorm": ("norm", 0), "InstanceNorm": ("norm", 0), "PReLU": ("prelu", 0),
    "Embedding": ("embedding", 0), "MultiHeadAttention": ("mha", 0),
}
# the parameters each type may own (python/mlx/nn/layers/*.py); the first is required
PARAMS: dict[str, tuple[str, ...]] = {
    "conv": ("weight", "bias"), "conv_transpose": ("weight", "bias"),
    "linear": ("weight", "bias"), "lstm": ("Wx", "Wh", "bias"),
    "gru": ("Wx", "Wh", "b", "bhn"), "rnn": ("Wxh", "Whh", "bias"),
    "norm": ("weight", "bias", "running_mean", "running_var"), "prelu": ("weight",),
    "embedding": ("weight",), "mha": (),
}
MHA_CHILDREN = ("query_proj", "key_proj", "value_proj", "out_proj")
REFUSED = {"QuantizedLinear": "quantize after loading: sanitize into a port with nn.Linear, "
                              "then call nn.quantize(model)",
           "QuantizedEmbedding": "quantize after loading: sanitize into a port with "
                                 "nn.Embedding, then call nn.quantize(model)"}


@dataclass
class Entry:
    """One MLX module: its path, MLX type name, kind, spatial rank, groups and its own
    parameters ``{name: shape}`` (shape None when described by a mapping)."""

    path: str
    type: str
    kind: str
    rank: int
    groups: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    known_shapes: bool = True

    def param(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name


def describe(model: Any) -> dict[str, Entry]:
    """``{module_path: Entry}`` for every module that owns parameters (MHA included, for
    the names of PyTorch's packed projection)."""
    if isinstance(model, Mapping) and not hasattr(model, "named_modules"):
        return _from_mapping(model)  # (an mlx.nn.Module is a dict too)
    try:
        import mlx.core as mx
        import mlx.nn as nn
    except ImportError:
        raise TypeError("model is not a mapping {module_path: MLX type name}, and mlx is "
                        "not installed to read it as an mlx.nn.Module") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an mlx.nn.Module or a mapping {{path: type}}, got "
                        f"{type(model).__name__}")
    out: dict[str, Entry] = {}
    for path, mod in model.named_modules():
        own = {k: tuple(v.shape) for k, v in mod.items() if isinstance(v, mx.array)}
        name = _type_name(mod, nn)
        if name in REFUSED and own:
            raise ValueError(f"module {path!r} is an nn.{name}: {REFUSED[name]}")
        if name is None:
            if own:
                out[path] = Entry(path, type(mod).__name__, "tensor", 0, params=own)
            continue
        kind, rank = TYPES[name]
        groups = int(getattr(mod, "groups", 1) or 1)
        out[path] = Entry(path, name, kind, rank, groups, own)
    return out


def _type_name(mod: Any, nn: Any) -> str | None:
    for name in (*REFUSED, *TYPES):
        cls = getattr(nn, name, None)
        if cls is not None and isinstance(mod, cls):
            return name
    return None


def _from_mapping(spec: Mapping[str, Any]) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    lower = {k.lower(): k for k in TYPES}
    for path, value in spec.items():
        tname, groups = value, 1
        if isinstance(value, Mapping):  # {"type": "Conv2d", "groups": 4}
            tname, groups = value.get("type"), int(value.get("groups", 1))
        if not isinstance(path, str) or not isinstance(tname, str):
            raise TypeError(f"model mapping must be {{module_path: MLX type name}}, got "
                            f"{path!r}: {tname!r}")
        if tname in REFUSED:
            raise ValueError(f"module {path!r} is an nn.{tname}: {REFUSED[tname]}")
        name = lower.get(tname.lower())
        if name is None:
            raise ValueError(f"module {path!r}: unknown MLX type {tname!r}; known: "
                             f"{', '.join(TYPES)}")
        kind, rank = TYPES[name]
        params = {p: None for p in PARAMS[kind]}
        out[path] = Entry(path, name, kind, rank, groups, params, known_shapes=False)
        if kind == "mha":
            for child in MHA_CHILDREN:
                cp = f"{path}.{child}" if path else child
                out[cp] = Entry(cp, "Linear", "linear", 0,
                                params={"weight": None, "bias": None}, known_shapes=False)
    return out


def sequential_paths(model: Any) -> list[str]:
    """Paths of the ``nn.Sequential`` modules of an MLX model, shortest first (none for a
    mapping). MLX's Sequential keeps its modules in ``layers``: ``S.layers.0`` where
    PyTorch's ``nn.Sequential`` has ``S.0``."""
    if isinstance(model, Mapping) and not hasattr(model, "named_modules"):
        return []
    import mlx.nn as nn

    return sorted((p for p, m in model.named_modules() if isinstance(m, nn.Sequential)),
                  key=len)


def to_mlx_name(name: str, sequentials: list[str]) -> str:
    """A source name with ``.layers`` put after each MLX Sequential: ``S.{i}.x`` is
    ``S.layers.{i}.x`` (outer Sequentials first, so nested ones match)."""
    for p in sequentials:
        pre = f"{p}." if p else ""
        if name.startswith(pre):
            rest = name[len(pre):]
            head = rest.split(".", 1)[0]
            if head.isdigit():
                name = f"{pre}layers.{rest}"
    return name


def to_source_name(name: str, sequentials: list[str]) -> str:
    """The inverse of :func:`to_mlx_name` (inner Sequentials first)."""
    for p in reversed(sequentials):
        pre = f"{p}.layers." if p else "layers."
        if name.startswith(pre) and name[len(pre):].split(".", 1)[0].isdigit():
            name = (f"{p}." if p else "") + name[len(pre):]
    return name
