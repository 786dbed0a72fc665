"""The export plan: what each tensor of a model IS, whatever file it came from and whatever
target it goes to.

A source (``sources/onnx``, ``sources/keras``, ``sources/torch``) reads a file into a
:class:`Plan`: one :class:`Layer` per layer, saying its role (``Layer.rule``: conv,
transposed, fc after a flatten, gates, ...), the framework layout of its tensors
(``Layer.params["layout"]``), the graph facts (flatten map, reshape, padding, activation:
``params`` and ``geometry``) and where the tensors are (:class:`TensorRef`, memory-mapped
where the format allows). A target (``targets/mps``, ``targets/mlx``) turns the plan into
its layouts and writes it. Nothing here knows a target's layout rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..engine import bfloat16_bits_to_float32

KINDS = ("convolution", "depthwise", "transposed", "fully_connected", "subpixel",
         "batch_normalization", "arithmetic", "tensor", "lstm", "gru", "rnn")
RULES = ("conv", "depthwise", "expand_depthwise", "transposed", "fc", "dense_reshape",
         "conv_subpixel", "batch_norm", "arithmetic", "tensor", "lstm", "gru", "rnn")
BN_ROLES = ("gamma", "beta", "mean", "variance")
# What ``--kind NAME=KIND`` (``kinds={NAME: KIND}``) may say a bare state_dict's weight is,
# with the PyTorch layout it then has (a graph says each layer's kind itself). Without it,
# a 3-D/4-D/5-D weight is a convolution and a 2-D one a Linear. Every target reads these.
WEIGHT_KINDS = {
    "conv": "Conv1d/Conv2d (O, I/groups, [kH,] kW), groups=1",
    "conv_transpose": "ConvTranspose1d/2d (I, O, [kH,] kW), groups=1",
    "depthwise": "a depthwise Conv1d/Conv2d (C, 1, [kH,] kW), groups=C",
    "linear": "Linear (O, I)",
}

_F4 = np.dtype(np.float32)


def is_bfloat16(dt: np.dtype) -> bool:
    return dt.itemsize == 2 and dt.name == "bfloat16"


def is_float(dt: np.dtype) -> bool:
    """Weights MPS can take after conversion: float16/32/64 and bfloat16."""
    return dt.kind == "f" or is_bfloat16(dt)


@dataclass
class TensorRef:
    """A tensor not yet read: ``opener()`` returns it (a memory map where possible)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    opener: Callable[[], np.ndarray]
    synthetic: bool = False  # computed by a reader (a folded bias), not a source tensor

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def load(self) -> np.ndarray:
        a = self.opener()
        if a.shape != self.shape or a.dtype != self.dtype:
            raise ValueError(
                f"tensor {self.name!r} read back as {a.dtype}{list(a.shape)}, "
                f"declared {self.dtype}{list(self.shape)}"
            )
        return a


def bfloat16_ref(bits: TensorRef) -> TensorRef:
    """A bfloat16 tensor given as a ref to its raw bits (``<u2``): as ``ml_dtypes.bfloat16``
    when ml_dtypes is installed, else widened to the float32 values it holds (exact, through
    the engine's bfloat16 -> float32 path), so no reader needs ml_dtypes for bfloat16."""
    try:
        import ml_dtypes
    except ImportError:
        return TensorRef(bits.name, bits.shape, _F4,
                         lambda: bfloat16_bits_to_float32(bits.opener()).reshape(bits.shape))
    bf16 = np.dtype(ml_dtypes.bfloat16)
    return TensorRef(bits.name, bits.shape, bf16, lambda: bits.opener().view(bf16))


def const_tensor(name: str, values: Any) -> TensorRef:
    """A small tensor computed by a reader (a folded bias, a default BN vector)."""
    a = np.asarray(values)
    return TensorRef(name, a.shape, a.dtype, lambda: a, synthetic=True)


@dataclass
class QuantRef(TensorRef):
    """A float weight given as 8-bit ``q`` with ``scale`` and ``zero_point`` (per tensor or
    along ``axis``), read as its float values ``(q - zero_point) * scale``; ``parts`` are
    the source tensors it stands for, ``origin`` the operator that defined it
    (DequantizeLinear, ConvInteger, ...). A target may keep the bytes of ``q``."""

    q: TensorRef | None = None
    scale: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    zero_point: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))
    axis: int | None = None
    parts: list[str] = field(default_factory=list)
    origin: str = "DequantizeLinear"


@dataclass
class ComputedRef(TensorRef):
    """A tensor the source file computes from others (a weight made by ``ConstantOfShape``,
    ``Transpose(W)``, ``Mul(W, c)``): ``parts`` are the source tensors it is computed from,
    ``origin`` the operators that compute it. Its values are the computation's."""

    parts: list[str] = field(default_factory=list)
    origin: str = ""


def _float_values(q: TensorRef, scale: np.ndarray, zp: np.ndarray, axis: int | None
                  ) -> np.ndarray:
    """``(q - zp) * scale`` in float32, as DequantizeLinear computes it."""
    a = q.load().astype(np.int32)
    shape = [1] * a.ndim
    if axis is not None and scale.size > 1:
        shape[axis] = -1
    s = scale.astype(np.float32).reshape(shape if scale.size > 1 else ())
    z = zp.astype(np.int32).reshape(shape if zp.size > 1 else ())
    return ((a - z).astype(np.float32) * s).astype(np.float32)


def quant_ref(name: str, q: TensorRef, scale: np.ndarray, zp: np.ndarray | None,
              axis: int | None, parts: list[str], origin: str) -> QuantRef:
    """A :class:`QuantRef` for 8-bit ``q`` with per-tensor or per-``axis`` scale and zero
    point (None: 0)."""
    zp_a = np.zeros(1, np.int32) if zp is None else np.asarray(zp).astype(np.int32).ravel()
    s = np.asarray(scale, np.float32).ravel()
    return QuantRef(name, q.shape, np.dtype(np.float32),
                    lambda: _float_values(q, s, zp_a, axis), q=q, scale=s, zero_point=zp_a,
                    axis=axis, parts=parts, origin=origin)


@dataclass
class Layer:
    """One exported layer: manifest fields plus the converter rule and its arguments.

    ``scale`` (float64, broadcastable against the weight tensor as stored) multiplies the
    weights before conversion: batch-norm and affine folding, Gemm's alpha. ``tensors``
    maps the roles of a batch-norm layer (gamma, beta, mean, variance) to their tensors.
    ``carried``: source tensors the layer holds beyond its weight, bias and ``tensors``
    (folded batch norms, fused constants); the manifest's ``source.tensors`` is all of them.
    Rule "arithmetic" writes ``weight`` (the constant, already (1, C, H, W)) as 4-channel
    image slices; rule "tensor" writes ``weight`` as it is in the source, cast to the
    export dtype.
    """

    name: str
    kind: str
    rule: str
    source: dict[str, Any]
    weight: TensorRef | None = None
    bias: TensorRef | None = None
    params: dict[str, Any] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)
    scale: np.ndarray | None = None
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    file_stem: str = ""
    carried: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")

    @property
    def source_bytes(self) -> int:
        refs = [self.weight, self.bias, *self.tensors.values()]
        return sum(r.nbytes for r in refs if r is not None)

    def source_tensors(self) -> list[str]:
        """Every source tensor name this layer carries, in order, without repeats."""
        names: list[str] = []
        for key in ("weights", "bias"):
            v = self.source.get(key)
            if isinstance(v, str):
                names.append(v)
        names.extend(r.name for r in self.tensors.values() if not r.synthetic)
        names.extend(self.carried)
        for ref in (self.weight, self.bias, *self.tensors.values()):
            # an 8-bit weight's q, scale, zp; the initializers a computed tensor comes from
            names.extend(getattr(ref, "parts", ()))
        names.extend(f["tensor"] for f in self.source.get("fused", []))
        return list(dict.fromkeys(names))

    def names(self) -> set[str]:
        """Every name ``only=`` may use for this layer."""
        out = {self.name, self.file_stem}
        out.update(v for k, v in self.source.items() if k in ("node", "layer", "module")
                   and isinstance(v, str))
        if self.weight is not None:
            out.add(self.weight.name)
        return out


class ExportError(ValueError):
    """An export failed while converting or writing one layer (``.layer`` names it)."""

    def __init__(self, message: str, layer: str | None = None) -> None:
        super().__init__(message)
        self.layer = layer


class SkipLayer(Exception):
    """Raised by a reader for a recognised layer it does not export; the message says why.
    ``unsupported``: list it as an unsupported operator rather than a skipped layer."""

    def __init__(self, reason: str, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.unsupported = unsupported


def batch_norm_fold(gamma: Any, beta: Any, mean: Any, var: Any, eps: float,
                    where: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), float64, with BN(x) = scale*x + shift per channel: the multiplier
    of the previous layer's weights and what its bias becomes (bias*scale + shift).
    A variance + epsilon that is not positive has no square root: the file is refused
    rather than folded into NaN weights."""
    denom = np.asarray(var, np.float64) + eps
    bad = np.flatnonzero(~(denom > 0))  # NaN counts as bad too
    if bad.size:
        raise ValueError(
            f"{where}: batch normalization channel {int(bad[0])} has variance + epsilon "
            f"= {denom[bad[0]]!r}, not positive: it cannot be folded (a corrupt model?)"
        )
    scale = np.asarray(gamma, np.float64) / np.sqrt(denom)
    return scale, np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale


def folded_bias(bias: TensorRef | None, n: int, name: str, scale: np.ndarray | None,
                shift: np.ndarray | None, bias_scale: float = 1.0) -> TensorRef | None:
    """The bias after folding (batch norm, per-channel affine, Gemm's beta):
    ``bias*beta*scale + shift``, in float64; ``bias`` itself when nothing changes it."""
    if scale is None and shift is None and bias_scale == 1.0:
        return bias
    b = np.zeros(n) if bias is None else np.asarray(bias.load(), np.float64).reshape(n)
    b = b * bias_scale
    if scale is not None:
        b = b * scale
    if shift is not None:
        b = b + shift
    return const_tensor(f"{name}:folded_bias", b)


# ----------------------------------------------------------------------- a reader's result


def scaled(a: np.ndarray, scale: np.ndarray | None, axis: int | None = None,
           start: int = 0, stop: int = 0) -> np.ndarray:
    """The weights the model computes with: ``a`` times a layer's ``scale`` (batch-norm
    fold, per-channel affine, Gemm's alpha), in float64, giving float32; ``a`` itself when
    there is no scale. ``axis``, ``start``, ``stop``: ``a`` is the slice
    ``start:stop`` of the weight along ``axis`` (a chunk), and so is the scale taken."""
    if scale is None:
        return a
    s = scale
    if axis is not None and s.ndim == a.ndim and s.shape[axis] > 1:
        idx = [slice(None)] * s.ndim
        idx[axis] = slice(start, stop)
        s = s[tuple(idx)]
    return (a.astype(np.float64) * s).astype(np.float32)


@dataclass
class Overrides:
    """What the user said the graph does not (``input_shapes``, ``reshapes``, ``kinds``:
    a state_dict weight's :data:`WEIGHT_KINDS`), by layer name; remembers which names were
    used so that a typo is an error, not a no-op. ``input_dims``: the graph inputs' dims,
    by input name (checked by the ONNX reader)."""

    input_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    reshapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    input_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    used: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for name, kind in self.kinds.items():
            if kind not in WEIGHT_KINDS:
                raise ValueError(f"kinds[{name!r}] is {kind!r}; the kinds are "
                                 f"{', '.join(WEIGHT_KINDS)}")

    def get(self, what: str, names: Any) -> Any:
        table = getattr(self, what)
        for n in names:
            if n in table:
                self.used.add((what, n))
                return table[n]
        return None

    def unused(self) -> list[str]:
        return [f"{what}[{n!r}]" for what in ("input_shapes", "reshapes", "kinds")
                for n in getattr(self, what) if (what, n) not in self.used]


@dataclass
class Plan:
    """A reader's result: the layers to write and what it could not or would not export."""

    format: str
    layers: list[Layer] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    unsupported: list[dict[str, Any]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    # arrays that are not model weights (optimizer slots): listed, never exported
    training_state: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, list[int | None]] = field(default_factory=dict)

    @staticmethod
    def _entry(name: str, op: str, reason: str, tensors: list[str] | None) -> dict[str, Any]:
        e: dict[str, Any] = {"name": name, "op": op, "reason": reason}
        if tensors:
            e["tensors"] = list(dict.fromkeys(tensors))
        return e

    def skip(self, name: str, op: str, reason: str, tensors: list[str] | None = None) -> None:
        """List a recognised layer not exported; ``tensors``: learned tensors it leaves behind."""
        self.skipped.append(self._entry(name, op, reason, tensors))

    def refuse(self, name: str, op: str, reason: str,
               tensors: list[str] | None = None) -> None:
        """List an operator with no MPS mapping; ``tensors``: learned tensors it leaves behind."""
        self.unsupported.append(self._entry(name, op, reason, tensors))

    def left_behind(self) -> list[str]:
        """"TENSOR (node NAME, OP): reason" for every learned tensor listed, not exported."""
        carried = {t for layer in self.layers for t in layer.source_tensors()}
        return [f"{t} (node {e['name']}, {e['op']}): {e['reason']}"
                for e in self.unsupported + self.skipped for t in e.get("tensors", [])
                if t not in carried]
