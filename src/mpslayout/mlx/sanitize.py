"""``sanitize``: a PyTorch / ONNX / Keras state_dict into an MLX port's parameters, each
converted by the kind of the MLX module that owns it (never by its shape).

Source names (docs/mlx.md, "Names"), for the MLX module at path ``P``:

- convolutions, Linear, norms, PReLU, Embedding: PyTorch/ONNX ``P.weight``, ``P.bias``,
  ``P.running_mean``, ``P.running_var`` (``P.num_batches_tracked`` is dropped, listed as
  ignored); Keras ``P.kernel`` (``P.depthwise_kernel``), ``P.bias``, ``P.gamma``,
  ``P.beta``, ``P.moving_mean``, ``P.moving_variance``, ``P.alpha``, ``P.embeddings``
  (``/`` in Keras paths reads as ``.``, a ``:0`` suffix is dropped);
- ``MultiHeadAttention`` at P: PyTorch ``P.in_proj_weight`` / ``P.in_proj_bias`` split in
  three rows blocks into ``P.query_proj``, ``P.key_proj``, ``P.value_proj`` (or
  ``P.q_proj_weight`` ...), ``P.out_proj.*`` as a Linear;
- recurrent modules: an MLX LSTM/GRU/RNN at ``T`` (one layer, forward), ``T.{k}`` or
  ``T.layers.{k}`` (layer k, forward), ``T.reverse``, ``T.reverse.{k}`` or
  ``T.reverse.layers.{k}`` (the ``_reverse`` direction) reads PyTorch's
  ``T.weight_ih_l{k}[_reverse]``, ``weight_hh_...``, ``bias_ih_...``, ``bias_hh_...``; an
  LSTMCell/GRUCell/RNNCell at ``T`` is ``T.weight_ih`` ...; ONNX ``T.W``, ``T.R``, ``T.B``
  (the reverse module: the same tensors, direction 1); Keras ``T.kernel``,
  ``T.recurrent_kernel``, ``T.bias`` (or under ``T.<x>cell.``);
- any other module's arrays: the same name, the same shape;
- where the MLX model has an ``nn.Sequential`` at ``S``, a source name ``S.{i}.*`` reads
  as MLX's ``S.layers.{i}.*``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from .. import engine
from . import rules
from .arrays import mlx_available, to_mx
from .modules import MHA_CHILDREN, Entry, describe, sequential_paths, to_mlx_name
from .schema import Weights, tensor_entry
from .sources import read_state_dict

__all__ = ["SOURCES", "sanitize"]

SOURCES = ("torch", "onnx", "keras", "mlx")
IGNORED = ("num_batches_tracked",)
_KERAS_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
               "running_var": "moving_variance"}
_CONV = {"torch": ("OIW", "OIHW", "OIDHW"), "keras": ("WIO", "HWIO", "DHWIO")}
_CONVT = {"torch": ("IOW", "IOHW", "IODHW"), "keras": ("WOI", "HWOI", "DHWOI")}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _keras_name(k: str) -> str:
    k = k[:-2] if k.endswith(":0") else k
    return k.replace("/", ".")


class _Job:
    """The state of one sanitize call: the source tensors, what was consumed, the result."""

    def __init__(self, sd: Weights, source: str, dtype: Any) -> None:
        self.sd = sd
        self.source = source
        self.dtype = dtype
        self.used: set[str] = set()
        self.out = Weights(facts={"source": source})

    def get(self, name: str) -> np.ndarray | None:
        a = self.sd.get(name)
        if a is not None:
            self.used.add(name)
        return a

    def cast(self, a: np.ndarray) -> np.ndarray:
        if self.dtype is None or (a.dtype.kind != "f" and a.dtype.name != "bfloat16"):
            return np.ascontiguousarray(a)
        return engine.permute(a, tuple(range(a.ndim)), dtype=self.dtype)

    def put(self, e: Entry, pname: str, a: np.ndarray, layout: str, src: str) -> None:
        full = e.param(pname)
        if e.known_shapes and pname not in e.params:
            self.used.discard(src)  # the port has no such parameter: listed as unused
            return
        want = e.params.get(pname)
        if e.known_shapes and want is not None and tuple(a.shape) != tuple(want):
            raise ValueError(f"{full}: {src!r} of shape {self.sd[src].shape} gives "
                             f"{tuple(a.shape)} in MLX's layout, but the MLX {e.type} has "
                             f"{full} of shape {tuple(want)}")
        self.out[full] = a
        self.out.tensors[full] = tensor_entry(e.kind, layout)


def _check(e: Entry, pname: str, src: str, got: tuple[int, ...], expect: Callable[..., Any],
           what: str) -> None:
    """Refuse a source tensor whose shape cannot be this parameter in the source layout."""
    want = e.params.get(pname)
    if not e.known_shapes or want is None:
        return
    exp = tuple(expect(tuple(want)))
    if tuple(got) != exp:
        raise ValueError(f"{src}: a {what} for MLX's {e.param(pname)} of shape {tuple(want)} "
                         f"must have shape {exp}, got {tuple(got)}")


def _conv(job: _Job, e: Entry, flatten: Mapping[str, Any]) -> None:
    src = job.source
    fam = "keras" if src == "keras" else "torch"
    if src == "keras" and _is_depthwise(job, e):
        name = e.param("depthwise_kernel")
        name = name if name in job.sd else e.param("kernel")
        k = job.get(name)
        layout = "HWCM"[-(e.rank + 2):]
        if k.ndim != e.rank + 2 or e.kind != "conv":
            raise ValueError(f"{name} has shape {k.shape}; a Keras depthwise kernel for the "
                             f"MLX {e.type} {e.path!r} is {layout}")
        _check(e, "weight", name, k.shape,
               lambda s: (*s[1:-1], e.groups, s[0] // max(e.groups, 1)),
               f"Keras depthwise kernel ({layout})")
        job.put(e, "weight", rules.depthwise_weights(k, layout=layout, dtype=job.dtype),
                layout, name)
    else:
        name = e.param("kernel" if src == "keras" else "weight")
        w = job.get(name)
        if w is not None:
            table = _CONV if e.kind == "conv" else _CONVT
            layout = table[fam][e.rank - 1]
            if w.ndim != e.rank + 2:
                raise ValueError(f"{name} has shape {w.shape}; a {src} {e.type} weight is "
                                 f"{layout} ({e.rank + 2}-D)")
            if e.kind == "conv":
                exp = ((lambda s: (*s[1:-1], s[-1], s[0])) if fam == "keras"
                       else (lambda s: (s[0], s[-1], *s[1:-1])))
                _check(e, "weight", name, w.shape, exp, f"{src} {e.type} weight ({layout})")
                out = rules.conv_weights(w, layout=layout, dtype=job.dtype)
            else:
                exp = ((lambda s: (*s[1:-1], s[0], s[-1])) if fam == "keras"
                       else (lambda s: (s[-1], s[0], *s[1:-1])))
                _check(e, "weight", name, w.shape, exp, f"{src} {e.type} weight ({layout})")
                out = rules.conv_transpose_weights(w, layout=layout, dtype=job.dtype)
            job.put(e, "weight", out, layout, name)
    _plain(job, e, "bias", e.param("bias"))


def _is_depthwise(job: _Job, e: Entry) -> bool:
    """A Keras DepthwiseConv kernel ``(*K, C, M)``: named ``depthwise_kernel`` (Keras 2),
    or Keras 3's ``kernel`` for an MLX conv with ``groups=C`` and one input channel per
    group whose shape is ``(*K, C, O/C)``, not a grouped Conv2D's ``(*K, 1, O)`` (the two
    are the same tensor when C = 1)."""
    if e.param("depthwise_kernel") in job.sd:
        return True
    k, want = job.sd.get(e.param("kernel")), e.params.get("weight")
    if k is None or e.kind != "conv" or e.groups == 1 or k.ndim < 3:
        return False
    if want is None:  # described by a mapping: (*K, C, M) has C = groups, not 1
        return k.shape[-2] == e.groups
    return want[-1] == 1 and tuple(k.shape) == (*want[1:-1], e.groups, want[0] // e.groups)


def _plain(job: _Job, e: Entry, pname: str, name: str, reshape: bool = False) -> None:
    a = job.get(name)
    if a is None:
        return
    want = e.params.get(pname)
    if reshape and want is not None and a.size == int(np.prod(want)) and \
            all(d == 1 for d in a.shape[:-1]):
        a = a.reshape(want)  # Keras PReLU alpha (1, 1, C) with shared axes
    _check(e, pname, name, a.shape, lambda s: s, f"{job.source} {e.type} {pname}")
    job.put(e, pname, job.cast(a), job.source, name)


def _linear(job: _Job, e: Entry, flatten: Mapping[str, Any]) -> None:
    keras = job.source == "keras"
    name = e.param("kernel" if keras else "weight")
    w = job.get(name)
    if w is not None:
        layout = "IO" if keras else "OI"
        if w.ndim != 2:
            raise ValueError(f"{name} has shape {w.shape}; a {job.source} Linear weight is "
                             f"{layout} (2-D)")
        _check(e, "weight", name, w.shape, (lambda s: s[::-1]) if keras else (lambda s: s),
               f"{job.source} Linear weight ({layout})")
        shape = flatten.get(e.path)
        out = rules.linear_weights(w, layout=layout, input_shape=shape,
                                   flatten="HWC" if keras else "CHW", dtype=job.dtype)
        job.put(e, "weight", out, layout if shape is None or keras else layout + "/CHW", name)
    _plain(job, e, "bias", e.param("bias"))


def _mha(job: _Job, e: Entry, entries: Mapping[str, Entry], done: set[str]) -> None:
    if job.source == "keras":
        return  # Keras EinsumDense projections are not mapped (docs/mlx.md)
    p = e.path + "." if e.path else ""
    packed = job.get(p + "in_proj_weight")
    bias = job.get(p + "in_proj_bias")
    for j, child in enumerate(MHA_CHILDREN[:3]):
        ce = entries.get(p + child)
        if ce is None:
            continue
        if packed is not None:
            e_dim = packed.shape[0] // 3
            w = packed[j * e_dim:(j + 1) * e_dim]
            src = p + "in_proj_weight"
        else:
            src = p + "qkv"[j] + "_proj_weight"
            w = job.get(src)
        if w is not None:
            _check(ce, "weight", src, w.shape, lambda s: s, "PyTorch MultiheadAttention "
                   "projection (rows of in_proj_weight)")
            job.put(ce, "weight", rules.linear_weights(w, dtype=job.dtype), "OI", src)
        if bias is not None:
            b = bias[j * (bias.shape[0] // 3):(j + 1) * (bias.shape[0] // 3)]
            job.put(ce, "bias", job.cast(b), job.source, p + "in_proj_bias")
        done.add(ce.path)


_REV = re.compile(r"^(?P<t>.*?)\.reverse(?:\.layers)?(?:\.(?P<k>\d+))?$")
_FWD = re.compile(r"^(?P<t>.*?)(?:\.forward)?(?:\.layers)?\.(?P<k>\d+)$")
_FWD1 = re.compile(r"^(?P<t>.*)\.forward$")
_DIRECTION = re.compile(r"\.(?:reverse|forward)(?=\.|$)")


def _torch_candidates(path: str) -> list[tuple[str, str]]:
    """(source prefix, suffix) pairs an MLX recurrent module at ``path`` may read, in order:
    ``T.reverse[.layers][.k]`` -> ``T.*_l{k}_reverse``; ``T[.forward][.layers].k`` ->
    ``T.*_l{k}``; ``T.forward`` -> ``T.*_l0``; ``P`` -> ``P.*_l0``, then a cell's ``P.*``."""
    m = _REV.match(path)
    if m:
        return [(m["t"], f"_l{int(m['k'] or 0)}_reverse")]
    out = []
    m = _FWD.match(path) or _FWD1.match(path)
    if m:
        out.append((m["t"], f"_l{int(m.groupdict().get('k') or 0)}"))
    return [*out, (path, "_l0"), (path, "")]


def _keras_base(job: _Job, path: str) -> str | None:
    """The Keras prefix of the MLX recurrent module at ``path``: ``P.kernel``,
    ``P.<x>cell.kernel``; a Bidirectional's ``T.forward_<x>[.<x>cell]`` for ``P`` or
    ``T.forward``, ``T.backward_<x>[.<x>cell]`` for ``T.reverse``."""
    m = _REV.match(path)
    if m:
        pats = [re.escape(m["t"]) + r"\.backward_\w+(?:\.\w*cell)?"]
    else:
        m = _FWD1.match(path)
        t = re.escape(m["t"] if m else path)
        pats = [re.escape(path), re.escape(path) + r"\.\w*cell", t + r"\.forward_\w+(?:\.\w*cell)?"]
    for pat in pats:
        hits = sorted(k[:-7] for k in job.sd if re.fullmatch(pat + r"\.kernel", k))
        if len(hits) > 1:
            raise ValueError(f"MLX recurrent module {path!r}: Keras tensors {hits} all match; "
                             "rename them so that one does")
        if hits:
            return hits[0]
    return None


def _recurrent(job: _Job, e: Entry, flatten: Mapping[str, Any]) -> None:
    fn = {"lstm": rules.lstm_params, "gru": rules.gru_params, "rnn": rules.rnn_params}[e.kind]
    src = job.source
    kwargs: dict[str, Any] = {"layout": src, "dtype": job.dtype}
    if src == "torch":
        for prefix, suf in _torch_candidates(e.path):
            names = [_join(prefix, n + suf) for n in ("weight_ih", "weight_hh", "bias_ih",
                                                    "bias_hh")]
            if names[0] in job.sd:
                break
        else:
            return
    elif src == "onnx":  # the module's path without its direction component
        base = _DIRECTION.sub("", e.path)
        kwargs["direction"] = 1 if _REV.match(e.path) else 0
        names = [_join(base, "W"), _join(base, "R"), _join(base, "B"), ""]
        if e.kind == "gru":
            kwargs["linear_before_reset"] = True
    else:
        base = _keras_base(job, e.path)
        if base is None:
            return
        names = [_join(base, "kernel"), _join(base, "recurrent_kernel"), _join(base, "bias"), ""]
    if names[0] not in job.sd:
        return
    arrays = [job.get(n) if n else None for n in names]
    if arrays[1] is None:
        raise ValueError(f"{names[0]} has no recurrent partner {names[1]!r} in the state_dict "
                         f"(MLX {e.type} {e.path!r})")
    try:
        params = fn(*arrays, **kwargs)
    except ValueError as err:
        raise ValueError(f"MLX {e.type} {e.path!r} from {', '.join(n for n in names if n)}: "
                         f"{err}") from None
    for pname, a in params.items():
        job.put(e, pname, a, src, names[0])


def _simple(job: _Job, e: Entry, flatten: Mapping[str, Any]) -> None:
    keras = job.source == "keras"
    for pname in e.params:
        if e.kind == "norm" and keras:
            name = e.param(_KERAS_NORM.get(pname, pname))
        elif e.kind == "prelu" and keras:
            name = e.param("alpha")
        elif e.kind == "embedding" and keras:
            name = e.param("embeddings")
        else:
            name = e.param(pname)
        _plain(job, e, pname, name, reshape=e.kind == "prelu")


_HANDLERS = {"conv": _conv, "conv_transpose": _conv, "linear": _linear, "lstm": _recurrent,
             "gru": _recurrent, "rnn": _recurrent}


def _as_mlx(job: _Job, entries: dict[str, Entry]) -> None:
    """Already MLX's layout: same names, shapes checked, nothing moved (dtype= casts)."""
    for e in entries.values():
        for pname, want in e.params.items():
            name = e.param(pname)
            a = job.get(name)
            if a is None:
                continue
            if e.known_shapes and want is not None and tuple(a.shape) != tuple(want):
                raise ValueError(f"{name}: already in MLX's layout with shape {a.shape}, but "
                                 f"the MLX {e.type} has shape {tuple(want)}")
            job.out[name] = job.cast(a)
            rec = job.sd.tensors.get(name)
            job.out.tensors[name] = dict(rec) if rec else tensor_entry(e.kind, "mlx")


def sanitize(model: Any, state_dict: Any, source: str = "torch", *,
             flatten: Mapping[str, Any] | None = None, dtype: Any = None,
             strict: bool = True) -> Weights:
    """The parameters of the MLX port ``model`` from ``state_dict`` in ``source``'s layouts.

    ``model``: the ``mlx.nn.Module`` (each tensor's kind is the type of the module owning
    it), or ``{module_path: MLX type name}`` without mlx. ``state_dict``: numpy / torch /
    mx arrays by name, or a .safetensors / .pt / .pth / .npz path. ``source``: ``"torch"``,
    ``"onnx"``, ``"keras"`` or ``"mlx"`` (nothing converted, shapes still checked; also
    what happens to a dict or file marked as MLX layout by this package, whatever
    ``source`` says). ``flatten={"fc1": (C, H, W)}``: the Linear at ``fc1`` reads a
    ``torch.flatten`` of a CxHxW map (its columns go to HWC order). ``dtype``: cast float
    tensors (float16, "bfloat16", float32).

    Returns a :class:`~mpslayout.mlx.schema.Weights` (a dict ``{mlx_name: array}``, mx
    arrays when mlx is installed, numpy otherwise) that records each tensor's kind and
    source layout, and lists ``unused`` source names, ``missing`` MLX parameters and
    ``ignored`` ones. ``strict=True`` raises ValueError naming both lists when either is
    not empty. Load with ``model.load_weights(list(weights.items()))``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}; got {source!r}")
    entries = describe(model)
    sd = read_state_dict(state_dict)
    marked = bool(sd.tensors) and sd.is_mlx and len(sd) > 0
    original: dict[str, str] = {}  # MLX-style name -> the name in the state_dict
    if not marked:
        seq = sequential_paths(model)
        for k in sd:
            original[to_mlx_name(_keras_name(k) if source == "keras" else k, seq)] = k
        if len(original) != len(sd):
            raise ValueError("state_dict names collide once Keras '/' reads as '.' and "
                             "MLX Sequential's 'layers.' is inserted")
        sd = Weights({n: sd[k] for n, k in original.items()})
    flat = dict(flatten or {})
    bad = [k for k in flat if k not in entries or entries[k].kind != "linear"]
    if bad:
        raise ValueError(f"flatten names {bad}, which are not Linear modules of the model")
    job = _Job(sd, "mlx" if marked else source, dtype)
    if job.source == "mlx":
        _as_mlx(job, entries)
    else:
        done: set[str] = set()
        for e in entries.values():
            if e.kind == "mha":
                _mha(job, e, entries, done)
        for e in entries.values():
            if e.path in done and e.kind == "linear":
                continue
            _HANDLERS.get(e.kind, _simple)(job, e, flat)
    _report(job, entries, strict, original)
    if mlx_available():
        for k in list(job.out):
            job.out[k] = to_mx(job.out[k])
    return job.out


def _report(job: _Job, entries: dict[str, Entry], strict: bool,
            original: Mapping[str, str]) -> None:
    out = job.out
    left = [k for k in job.sd if k not in job.used]
    out.ignored = sorted(original.get(k, k) for k in left if k.rsplit(".", 1)[-1] in IGNORED)
    out.unused = sorted(original.get(k, k) for k in left if k.rsplit(".", 1)[-1] not in IGNORED)
    missing = []
    for e in entries.values():
        for i, pname in enumerate(e.params):
            if e.param(pname) in out or (not e.known_shapes and i > 0) or e.kind == "mha":
                continue
            missing.append(e.param(pname))
    out.missing = sorted(missing)
    if strict and (out.unused or out.missing):
        raise ValueError(f"state_dict and model do not match (strict=True): source tensors "
                         f"no MLX parameter takes: {out.unused}; MLX parameters no source "
                         f"tensor fills: {out.missing}")
