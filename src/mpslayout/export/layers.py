"""What a reader hands to the writer: lazy tensors and layer specs, and the one place where a
layer spec becomes calls to the public converters of :mod:`mpslayout.mps`.

Readers never touch a layout rule: they say which rule applies (``Layer.rule`` and
``Layer.params``) and where the tensors are (:class:`TensorRef`, memory-mapped where the
format allows). :func:`convert_layer` then converts one layer, in chunks of output channels
where the rule keeps channel slices contiguous, so that peak memory stays near the
largest single tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import images, mps, quantize
from ..engine import _cast_code, bfloat16_bits_to_float32
from . import manifest as mf

KINDS = ("convolution", "depthwise", "transposed", "fully_connected", "subpixel",
         "batch_normalization", "arithmetic", "tensor", "lstm", "gru", "rnn")
RULES = ("conv", "depthwise", "expand_depthwise", "transposed", "fc", "dense_reshape",
         "conv_subpixel", "batch_norm", "arithmetic", "tensor", "lstm", "gru", "rnn")
BN_ROLES = ("gamma", "beta", "mean", "variance")
CHUNK_BYTES = 64 << 20  # output bytes converted at a time where a rule allows slicing

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
        names.extend(getattr(self.weight, "parts", ()))  # an 8-bit weight's q, scale, zp
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


# ----------------------------------------------------------------------- conversion


def _call(fn: Callable[..., Any], a: np.ndarray, dtype: np.dtype) -> Any:
    """``fn(a, dtype=dtype)``, through float32 when the engine has no direct cast."""
    if _cast_code(a.dtype, dtype) is not None:
        return fn(a, dtype=dtype)
    r = fn(a, dtype=_F4)
    if isinstance(r, tuple):
        return (r[0].astype(dtype), *tuple(r[1:]))
    return r.astype(dtype)


def _converter(layer: Layer) -> tuple[Callable[..., Any], int | None]:
    """The converter call for ``layer`` and the source axis along which it may be chunked
    (its output channels, when slices of that axis give leading slices of the result)."""
    p = layer.params
    rule = layer.rule
    if rule == "conv":
        groups = p.get("groups", 1)
        return (lambda a, dtype: mps.conv_weights(
            a, layout=p["layout"], groups=groups, dtype=dtype),
            None if groups != 1 else (0 if p["layout"] == "OIHW" else 3))
    if rule == "depthwise":
        return (lambda a, dtype: mps.depthwise_weights(a, layout=p["layout"], dtype=dtype),
                0 if p["layout"] == "OIHW" else 2)
    if rule == "expand_depthwise":
        return (lambda a, dtype: mps.expand_depthwise(
            a, layout=p["layout"], in_channels=p.get("in_channels"), dtype=dtype), None)
    if rule == "transposed":
        groups = p.get("groups", 1)
        return (lambda a, dtype: mps.conv_transpose_weights(
            a, layout=p["layout"], groups=groups, dtype=dtype),
            None if groups != 1 else (1 if p["layout"] == "IOHW" else 2))
    if rule == "fc":
        return (lambda a, dtype: mps.fc_weights(
            a, input_shape=p.get("input_shape"), layout=p["layout"],
            flatten=p.get("flatten", "CHW"), dtype=dtype), 0 if p["layout"] == "OI" else 1)
    raise ValueError(f"rule {rule!r} has no single-call converter")


def _prepare(a: np.ndarray, scale: np.ndarray | None, axis: int | None,
             start: int, stop: int) -> np.ndarray:
    """Apply ``scale`` (batch-norm fold, alpha) to a chunk, in float64, giving float32."""
    if scale is None:
        return a
    s = scale
    if axis is not None and s.ndim == a.ndim and s.shape[axis] > 1:
        idx = [slice(None)] * s.ndim
        idx[axis] = slice(start, stop)
        s = s[tuple(idx)]
    return (a.astype(np.float64) * s).astype(np.float32)


QUANTIZABLE = ("conv", "depthwise", "expand_depthwise", "transposed", "fc", "dense_reshape",
               "conv_subpixel")


def convert_layer(layer: Layer, dtype: np.dtype,
                  chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, np.ndarray, int]]:
    """:func:`convert_floats`, or for ``dtype`` uint8 its float32 result quantized
    (convolution and fully connected weights; other layers stay float32)."""
    if dtype != np.uint8:
        yield from convert_floats(layer, dtype, chunk_bytes)
        return
    if layer.rule not in QUANTIZABLE:
        yield from convert_floats(layer, _F4, chunk_bytes)
        return
    parts: list[np.ndarray] = []
    rest = []
    for role, a, nbytes in convert_floats(layer, _F4, chunk_bytes):
        if role == "weights" and a.dtype != np.uint8:
            parts.append(a)  # float32 chunks, output channels first
        else:
            rest.append((role, a, nbytes))  # bias, or an 8-bit source layer's files
    if parts:
        yield from requantize(layer, np.concatenate(parts), layer.params.get("quantize",
                                                                               "linear"))
    yield from rest


def requantize(layer: Layer, weights: np.ndarray, mode: str
               ) -> Iterator[tuple[str, np.ndarray, int]]:
    """``--dtype uint8`` on float weights (already in MPS layout, output channels first):
    the weights and their ranges or table (the caller yields the bias)."""
    q, table = quantize.quantize_weights(weights, mode=mode)
    layer.geometry["quantization"] = {"type": mode, "source": "float", "exact": False,
                                      "source_tensors": []}
    yield "weights", q, q.nbytes
    yield ("ranges" if mode == "linear" else "lut"), table, 0


def convert_floats(layer: Layer, dtype: np.dtype,
                   chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, np.ndarray, int]]:
    """Yield ``(role, array, source_bytes)``: the weights, possibly in several chunks whose
    concatenation along axis 0 is the whole result, then the float32 vectors (bias, or a
    batch norm's gamma/beta/mean/variance). ``source_bytes`` is for progress."""
    if layer.rule in ("lstm", "gru", "rnn"):  # one file per gate data source
        from .rnn_layers import convert

        yield from convert(layer, dtype)
        return
    if layer.rule in ("arithmetic", "tensor"):
        ref = layer.weight
        if ref is None:
            raise ValueError(f"layer {layer.name!r} has no tensor")
        a = ref.load()
        if layer.rule == "arithmetic":  # (1, C, H, W) -> (ceil(C/4), H, W, 4)
            yield "constant", _call(images.image_slices, a, dtype), ref.nbytes
        elif is_float(a.dtype):
            yield "tensor", _call(lambda x, dtype: np.asarray(x).astype(dtype), a, dtype), \
                ref.nbytes
        else:
            yield "tensor", np.ascontiguousarray(a), ref.nbytes
        return
    if layer.rule == "batch_norm":
        for role in BN_ROLES:
            ref = layer.tensors[role]
            yield role, mps.bias(ref.load()), ref.nbytes
        return
    w_ref = layer.weight
    if w_ref is None:
        raise ValueError(f"layer {layer.name!r} has no weight tensor")
    src = w_ref.load()
    p = layer.params
    if layer.rule in ("dense_reshape", "conv_subpixel"):
        a = _prepare(src, layer.scale, None, 0, 0)
        b = None if layer.bias is None else layer.bias.load()
        if layer.rule == "dense_reshape":
            layout, image = p["layout"], (1, 1, a.shape[1 if p["layout"] == "OI" else 0])
            if p.get("input_shape") is not None:  # it reads an image: its columns first
                a = mps.fc_weights(a, input_shape=p["input_shape"], layout=layout,
                                   flatten=p.get("flatten", "CHW"))
                layout, image, a = "OI", a.shape[1:], a.reshape(a.shape[0], -1)
            w, b_out = _call(lambda x, dtype: mps.dense_reshape(
                x, b, shape=p["shape"], layout=layout, order=p["order"],
                target=p["target"], dtype=dtype), a, dtype)
            w = w.reshape(w.shape[0], *image)  # OHWI over the image the layer reads
        else:  # a convolution before a CRD depth-to-space: channel c*r*r + y*r + x
            w = mps.conv_weights(a, layout=p["layout"])
            rows, b_out = _call(lambda x, dtype: mps.dense_reshape(
                x, b, shape=p["shape"], layout="OI", order="CHW", target="rows",
                dtype=dtype), w.reshape(w.shape[0], -1), dtype)
            w = rows.reshape(w.shape)
        del src, a
        yield "weights", w, w_ref.nbytes
        if b_out is not None:
            yield "bias", b_out, 0 if layer.bias is None else layer.bias.nbytes
        return
    fn, axis = _converter(layer)
    if getattr(w_ref, "q", None) is not None:  # 8-bit source weights: bytes kept
        from .onnx_quant import uint8_layer

        files = uint8_layer(layer, lambda u: fn(u, dtype=np.dtype(np.uint8)))
        if files is not None:
            yield from files
            return
    if axis is None or src.size == 0:
        yield "weights", _call(fn, _prepare(src, layer.scale, None, 0, 0), dtype), w_ref.nbytes
    else:
        n = src.shape[axis]
        per_index = max(1, src.size // n * dtype.itemsize)
        step = max(1, chunk_bytes // per_index)
        idx: list[Any] = [slice(None)] * src.ndim
        for start in range(0, n, step):
            stop = min(n, start + step)
            idx[axis] = slice(start, stop)
            chunk = _prepare(src[tuple(idx)], layer.scale, axis, start, stop)
            yield "weights", _call(fn, chunk, dtype), w_ref.nbytes * (stop - start) // n
    del src
    if layer.bias is not None:
        yield "bias", mps.bias(layer.bias.load()), layer.bias.nbytes


def reshape_alternatives(bias: np.ndarray | None, n: int, shape: tuple[int, int, int],
                         order: str) -> list[dict[str, Any]]:
    """Which ``dense_reshape`` targets are exact for this layer, each with the reason when
    it is not. Checked by the converter itself, on a zero-width weight so nothing big is
    read."""
    h, w, _ = shape
    why = {"rows": "",
           "subpixel": "" if h == w else f"needs a square reshape (H == W), got {h}x{w}"}
    try:
        mps.dense_reshape(np.zeros((n, 0), _F4), bias, shape=shape, order=order,
                          target="conv_transpose")
        why["conv_transpose"] = ""
    except ValueError as e:
        why["conv_transpose"] = str(e)
    return [{"target": t, "available": not r, "reason": r or None} for t, r in why.items()]


def reshape_layer(name: str, source: dict[str, Any], w: TensorRef, b: TensorRef | None,
                  params: dict[str, Any], geo: dict[str, Any], shape: tuple[int, int, int],
                  order: str, node: str | None = None,
                  scale: np.ndarray | None = None) -> Layer:
    """A fully connected layer followed by a reshape to ``shape`` (H, W, C) in ``order``:
    a sub-pixel convolution when H == W, else HWC-ordered rows for MPSNNReshape
    (docs/layouts.md section 6, Dense followed by Reshape); the other exact targets are listed
    in the manifest."""
    h, ww, c = shape
    target = "subpixel" if h == ww else "rows"
    alts = reshape_alternatives(None if b is None else b.load(), geo["output_channels"],
                                shape, order)
    params.update(shape=tuple(shape), order=order, target=target)
    mf.add_reshape(geo, shape, order, target, alts, node)
    layer = Layer(name, "subpixel" if target == "subpixel" else "fully_connected",
                  "dense_reshape", source, w, b, params, geo, scale)
    layer.notes.append(
        f"rows reordered from {order} to HWC for a reshape to {h}x{ww}x{c}"
        + (f"; MPS runs it as a {h}x sub-pixel convolution of the 1x1 output"
           if target == "subpixel" else "; follow it with MPSNNReshape to HxWxC")
    )
    return layer


# ----------------------------------------------------------------------- a reader's result


@dataclass
class Overrides:
    """What the user said the graph does not (``input_shapes``, ``reshapes``), by layer
    name; remembers which names were used so that a typo is an error, not a no-op.
    ``input_dims``: the graph inputs' dims, by input name (checked by the ONNX reader)."""

    input_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    reshapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    input_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    used: set[tuple[str, str]] = field(default_factory=set)

    def get(self, what: str, names: Any) -> tuple[int, int, int] | None:
        table = self.input_shapes if what == "input_shapes" else self.reshapes
        for n in names:
            if n in table:
                self.used.add((what, n))
                return table[n]
        return None

    def unused(self) -> list[str]:
        return [f"{what}[{n!r}]" for what in ("input_shapes", "reshapes")
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
