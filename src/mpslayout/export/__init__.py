"""Whole-model export: a trained model file in, one folder of MPS weight files out.

``export(model, outdir)`` reads an ONNX model, a safetensors or PyTorch ``state_dict``
file, or a Keras ``.keras``/``.h5`` file, converts every supported layer with the public
converters of :mod:`mpslayout` (docs/layouts.md), and writes ``NAME.weights.bin`` (raw
little-endian, MPS layout), ``NAME.bias.bin`` (float32) and ``manifest.json`` (the MPS
geometry of every layer, byte sizes and SHA-256 of every file; schema in
``docs/manifest.schema.json``). Writes are atomic: a failure leaves no OUTDIR.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .plan import WEIGHT_KINDS, ExportError, Overrides, Plan
from .progress import Progress
from .targets.mps.writer import safe_stem, write_all

__all__ = ["ExportError", "export"]

FORMATS = ("onnx", "safetensors", "pytorch", "keras")
TARGETS = ("mps", "mlx")
_EXTENSIONS = {".onnx": "onnx", ".safetensors": "safetensors", ".pt": "pytorch",
               ".pth": "pytorch", ".keras": "keras", ".h5": "keras", ".hdf5": "keras"}


def _detect(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras"
    if head.startswith(b"PK\x03\x04"):
        return "pytorch"  # a zip: torch.save's format (a .keras zip has its extension)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    raise ValueError(
        f"cannot tell the format of {path}: use a .onnx, .safetensors, .pt/.pth, .keras or "
        ".h5 file name"
    )


def _shape_table(table: Mapping[str, Sequence[int]] | None, what: str,
                 ) -> dict[str, tuple[int, int, int]]:
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise TypeError(f"{what} must be a mapping of layer name to 3 ints, "
                        f"got {type(table).__name__}")
    out = {}
    for name, value in table.items():
        if not isinstance(name, str):
            raise TypeError(f"{what} keys must be layer names (str), got {name!r}")
        try:
            t = tuple(value)
        except TypeError:
            raise TypeError(f"{what}[{name!r}] must be 3 ints, got {value!r}") from None
        if len(t) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              or v < 1 for v in t):
            raise ValueError(f"{what}[{name!r}] must be 3 positive ints, got {value!r}")
        out[name] = (int(t[0]), int(t[1]), int(t[2]))
    return out


def _kinds_table(table: Mapping[str, str] | None) -> dict[str, str]:
    """``kinds`` checked: layer name -> a name of WEIGHT_KINDS."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise TypeError(f"kinds must be a mapping of layer name to kind, got "
                        f"{type(table).__name__}")
    for name, kind in table.items():
        if not isinstance(name, str) or not name or not isinstance(kind, str):
            raise TypeError(f"kinds maps layer names (str) to kinds (str), got {name!r}: "
                            f"{kind!r}")
        if kind not in WEIGHT_KINDS:
            raise ValueError(f"kinds[{name!r}] is {kind!r}; the kinds are "
                             f"{', '.join(WEIGHT_KINDS)}")
    return dict(table)


def _dims_table(table: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """``input_dims`` checked: input name -> a non-empty tuple of positive ints."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise TypeError("input_dims must be a mapping of graph input name to dims, "
                        f"got {type(table).__name__}")
    out = {}
    for name, value in table.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"input_dims keys must be graph input names (str), got {name!r}")
        try:
            t = tuple(value)
        except TypeError:
            raise TypeError(f"input_dims[{name!r}] must be a sequence of ints, got "
                            f"{value!r}") from None
        if not t or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in t):
            raise TypeError(f"input_dims[{name!r}] must be a non-empty sequence of ints, got "
                            f"{value!r}")
        if any(v < 1 for v in t):
            raise ValueError(f"input_dims[{name!r}] must be positive dims, got {list(t)}")
        if any(v > 1 << 31 for v in t):
            raise ValueError(f"input_dims[{name!r}] has an absurd dim: {list(t)}")
        out[name] = tuple(int(v) for v in t)
    return out


def _refuse_mlx_file(path: str) -> None:
    """Never twice: a safetensors file whose metadata says its tensors are already in MLX's
    layouts (``mpslayout export --target mlx``, ``mpslayout.mlx.save``) is not read as a
    PyTorch state_dict, which would permute every weight a second time."""
    from ..mlx.files import read_header
    from ..mlx.schema import from_metadata

    try:
        header, _ = read_header(path)
        doc = from_metadata(header.get("__metadata__"))
    except ValueError:
        return  # not readable as ours: the safetensors reader says what is wrong
    if doc is not None:
        raise ValueError(
            f"{path} is already in MLX's layouts (its metadata says so): exporting it would "
            "convert its weights a second time. Load it as it is "
            "(model.load_weights(path)), or get PyTorch's layouts back with "
            "mpslayout.mlx.to_torch(path, model)")


def _read(path: str, fmt: str, fold_bn: bool, overrides: Overrides) -> Plan:
    if overrides.kinds and fmt in ("onnx", "keras"):
        raise ValueError(f"kinds says what a bare state_dict's weight is; {path} is a {fmt} "
                         "file, whose graph says each layer's kind")
    if fmt == "onnx":
        from .sources.onnx import reader

        return reader.read(path, fold_bn=fold_bn, overrides=overrides)
    if overrides.input_dims and fmt != "keras":
        raise ValueError(f"input_dims fixes the inputs of an ONNX or Keras graph; {path} is "
                         f"a {fmt} file")
    if fmt == "keras":
        from .sources.keras import reader as keras_reader

        return keras_reader.read(path, fold_bn=fold_bn, overrides=overrides)
    if fold_bn:
        raise ValueError("fold_bn needs a graph (ONNX or Keras): a state_dict does not say "
                         "which layer a batch norm follows")
    if fmt == "safetensors":
        from .sources.torch import safetensors

        return safetensors.read(path, overrides=overrides)
    from .sources.torch import pt

    return pt.read(path, overrides=overrides)


def _only(only: str | Iterable[str] | None) -> list[str] | None:
    """``only=`` as a list of names, checked before any file is read."""
    if only is None:
        return None
    names = [only] if isinstance(only, str) else only
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f"only must be layer names, got {type(only).__name__}") from None
    if not names:
        raise ValueError("only= is empty: name at least one layer")
    bad = [x for x in names if not isinstance(x, str)]
    if bad:
        raise TypeError(f"only must be layer names (str), got {bad[0]!r}")
    return names


def _select(plan: Plan, only: list[str] | None) -> None:
    if only is None:
        return
    wanted = set(only)
    matched = set()
    kept = []
    for layer in plan.layers:
        hit = wanted & layer.names()
        if hit:
            kept.append(layer)
            matched |= hit
    missing = sorted(wanted - matched)
    if missing:
        names = ", ".join(repr(x.name) for x in plan.layers[:20])
        more = ", ..." if len(plan.layers) > 20 else ""
        raise ValueError(f"only= names no layer: {', '.join(map(repr, missing))}; the layers "
                         f"are {names}{more}")
    plan.layers = kept


def _listed(plan: Plan, most: int = 8) -> str:
    """Each node not exported, its op and why (the first ``most``)."""
    entries = plan.unsupported + plan.skipped
    out = [f"{e['name']} ({e['op']}): {e['reason']}" for e in entries[:most]]
    if len(entries) > most:
        out.append(f"... and {len(entries) - most} more")
    return "; ".join(out)


def export(
    model: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    dtype: Any = "float32",
    only: Iterable[str] | None = None,
    fold_bn: bool = False,
    strict: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    reshapes: Mapping[str, Sequence[int]] | None = None,
    input_dims: Mapping[str, Sequence[int]] | None = None,
    kinds: Mapping[str, str] | None = None,
    progress: bool = True,
    force: bool = False,
    quantize: str = "linear",
    target: str = "mps",
    bits: int = 4,
    group_size: int = 64,
) -> dict[str, Any]:
    """Export every supported layer of ``model`` to ``outdir``; returns the manifest.

    ``target``: "mps" (default: ``outdir`` is a folder of MPS weight files and
    ``manifest.json``) or "mlx" (``outdir`` is one ``.safetensors`` file in MLX's layouts,
    docs/mlx.md, that ``model.load_weights(path)`` of an MLX port with the same names
    reads; ``dtype`` "float32", "float16" or "bfloat16"; returns the file's metadata
    record). With the MLX target, ``quantize="affine"`` writes Linear and Embedding
    weights as ``nn.QuantizedLinear`` / ``QuantizedEmbedding`` load them (``weight``
    packed uint32, ``scales``, ``biases``: bit-identical to ``mx.quantize(w, group_size,
    bits)``), ``bits`` 2, 3, 4, 5, 6 or 8, ``group_size`` 32, 64 or 128.

    ``dtype``: "float32", "float16" or "uint8", the weight files' element type (biases are
    always float32). "uint8" quantizes the weights of convolution and fully connected
    layers per output channel (``quantize="linear"``: ``NAME.ranges.bin``) or with one
    256-entry table (``quantize="lut"``: ``NAME.lut.bin``), docs/layouts.md section 10;
    other layers stay float32. 8-bit source weights (QDQ, ConvInteger) are uint8 anyway.
    ``only``: layer names (node/layer names, weight tensor names or file stems)
    to export. ``fold_bn``: fold a BatchNormalization into the convolution or fully
    connected layer before it (ONNX, Keras). ``strict``: fail when a learned tensor is
    left behind (listed as skipped or unsupported, carried by no layer), naming each tensor
    and node; operators without learned tensors are listed, not failed.
    ``input_shapes``: ``{name: (C, H, W)}``, the image a fully connected layer reads
    through a flatten, where the file does not say (always needed for a state_dict).
    ``reshapes``: ``{name: (H, W, C)}``, a reshape after a fully
    connected layer (PyTorch ``view(-1, C, H, W)`` order for a state_dict).
    ``input_dims``: ``{input: (d0, d1, ...)}`` fixes an ONNX graph's input dims before shape
    inference (a Keras model's input layer's dims, NHWC, before its shapes are
    propagated), so that shapes the graph leaves symbolic (a Linear after a flatten, reshape
    targets, SAME padding, the manifest's image sizes) become known; without it the dims in
    the model are used. The manifest's ``inputs`` records the dims used. ``kinds``:
    ``{name: kind}`` for a bare state_dict (PyTorch .pt/.pth or safetensors), what a
    module's weight is (:data:`~mpslayout.export.plan.WEIGHT_KINDS`: conv, conv_transpose,
    depthwise, linear); without it a 3-D/4-D weight is a convolution and a 2-D one a
    Linear, and the manifest's assumptions say so. ``progress``:
    a progress bar on stderr when it is a terminal. ``force``: replace an existing OUTDIR
    (only an empty folder or an earlier export).

    Raises ValueError (bad arguments, unreadable or hostile files, :class:`ExportError`
    naming the layer that failed), FileExistsError, ImportError (a missing optional
    reader: ``pip install mpslayout[onnx]`` / ``[keras]``, or torch).
    """
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    # every argument is checked before a reader (and its optional package) is imported
    if isinstance(dtype, str) and dtype == "bfloat16" and target == "mlx":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError("dtype 'bfloat16' needs the ml_dtypes package: pip install "
                             "ml_dtypes") from None
        dtype = ml_dtypes.bfloat16
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        # a name numpy does not know ('bfloat16' without ml_dtypes) is a bad value
        err = ValueError if isinstance(dtype, str) else TypeError
        raise err(f"dtype must be 'float32', 'float16' or 'uint8', got {dtype!r}") from None
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "mlx":
        if out_dtype not in (np.dtype(np.float32), np.dtype(np.float16)) \
                and out_dtype.name != "bfloat16":
            raise ValueError("dtype must be 'float32', 'float16' or 'bfloat16' for the MLX "
                             f"target, got {dtype!r}")
    elif out_dtype not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8)):
        raise ValueError(f"dtype must be 'float32', 'float16' or 'uint8', got {dtype!r}")
    mlx_quant = None
    if target == "mlx" and quantize == "affine":
        from ..mlx.quantize import BITS, GROUP_SIZES

        if bits not in BITS or group_size not in GROUP_SIZES:
            raise ValueError(f"bits must be one of {BITS} and group_size one of "
                             f"{GROUP_SIZES}, got {bits!r}, {group_size!r}")
        mlx_quant = {"bits": int(bits), "group_size": int(group_size)}
    elif quantize not in ("linear", "lut"):
        raise ValueError(f"quantize must be 'linear' or 'lut' ('affine' with target='mlx'),"
                         f" got {quantize!r}")
    only = _only(only)
    for flag, value in (("fold_bn", fold_bn), ("strict", strict), ("progress", progress),
                        ("force", force)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
    overrides = Overrides(_shape_table(input_shapes, "input_shapes"),
                          _shape_table(reshapes, "reshapes"), _dims_table(input_dims),
                          _kinds_table(kinds))
    if target == "mlx":
        from .targets.mlx.writer import check_outfile

        check_outfile(outdir, force)  # before reading a big model for nothing
    else:
        from .targets.mps.writer import check_outdir

        check_outdir(outdir, force)
    fmt = _detect(path)
    if fmt == "safetensors":
        _refuse_mlx_file(path)
    plan = _read(path, fmt, fold_bn, overrides)
    unused = overrides.unused()
    if unused:
        raise ValueError(f"{', '.join(unused)} name no layer they apply to (input_shapes: one "
                         "reading a flattened image; reshapes: one feeding a reshape; kinds: "
                         "a module of the state_dict with a weight)")
    taken: set[str] = set()
    for layer in plan.layers:  # stems of the whole model, so that only= does not rename
        layer.file_stem = safe_stem(layer.name, taken)
    _select(plan, only)
    left = plan.left_behind()
    if strict and left:
        raise ValueError(f"strict: {len(left)} learned tensor(s) left behind: "
                         + "; ".join(left))
    if not plan.layers:
        raise ValueError(f"{path} has no layer mpslayout can export"
                         + (f" ({len(plan.unsupported)} unsupported, {len(plan.skipped)} "
                            "skipped): " + _listed(plan)
                            if plan.unsupported or plan.skipped else ""))
    from .. import __version__

    fields = {
        "source": {"file": os.path.basename(path), "format": plan.format,
                   "bytes": os.path.getsize(path)},
        "options": {
            "only": sorted(only) if only is not None else None,
            "fold_bn": fold_bn,
            "strict": strict,
            "input_shapes": {k: list(v) for k, v in overrides.input_shapes.items()},
            "reshapes": {k: list(v) for k, v in overrides.reshapes.items()},
            "input_dims": {k: list(v) for k, v in overrides.input_dims.items()},
            "kinds": dict(overrides.kinds),
        },
        "inputs": plan.inputs,
        "skipped": plan.skipped,
        "unsupported": plan.unsupported,
        "assumptions": plan.assumptions,
    }
    if plan.training_state:
        fields["training_state"] = plan.training_state
    bar = Progress(len(plan.layers), sum(x.source_bytes for x in plan.layers), progress)
    if target == "mlx":
        from .targets.mlx.writer import write_mlx

        fields["generator"] = f"mpslayout {__version__}"
        fields["weights_dtype"] = out_dtype.name
        if mlx_quant is not None:
            fields["options"]["quantize"] = {"mode": "affine", **mlx_quant}
        return write_mlx(os.fspath(outdir), plan, out_dtype, force=force, progress=bar,
                         facts=fields, quantize=mlx_quant)
    if out_dtype == np.uint8:
        fields["options"]["quantize"] = quantize
        for layer in plan.layers:
            layer.params["quantize"] = quantize
    return write_all(outdir, plan.layers, out_dtype, force=force, progress=bar,
                     manifest_fields=fields, version=__version__)


class _CallableModule(types.ModuleType):
    """Lets ``mpslayout.export(model, outdir)`` call :func:`export` while
    ``mpslayout.export`` stays this package (``mpslayout.export.sources``...)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
