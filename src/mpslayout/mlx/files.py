"""MLX safetensors files written and read by this package ("never twice").

:func:`save` writes the file through :func:`mpslayout.safetensors_io.write` (the format's
one writer: a temporary file in the target folder renamed into place); ``mx.load`` and
``nn.Module.load_weights`` read it. The metadata records, per tensor, its kind and source
layout and that it is in MLX's layout (:mod:`mpslayout.mlx.schema`). :func:`load` reads
any safetensors file into numpy (memory-mapped) and returns a
:class:`~mpslayout.mlx.schema.Weights` carrying the record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import safetensors_io
from ..safetensors_io import dtype_code, read_header
from .arrays import to_numpy
from .schema import Weights, from_metadata, to_metadata

__all__ = ["dtype_code", "load", "read_header", "save"]

# safetensors dtype code -> numpy dtype name (BF16 through ml_dtypes)
_NAMES = {v: k for k, v in safetensors_io.CODES.items()}


def save(path: str | os.PathLike[str], weights: Mapping[str, Any],
         metadata: Mapping[str, Any] | None = None, *,
         tensors: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """Write ``weights`` (numpy or mx arrays, already in MLX's layout) to ``path``.

    ``tensors``: each tensor's ``{"kind", "source_layout", "layout"}`` (default: the
    ``tensors`` record of a :class:`Weights`, e.g. :func:`mpslayout.mlx.sanitize`'s
    result; a name it lacks is recorded as ``{"kind": "tensor", "source_layout": "mlx"}``).
    ``metadata``: free facts (JSON-serializable) stored beside the record. Atomic: a reader
    sees the old file or the complete new one.
    """
    record: dict[str, dict[str, str]] = {}
    known = tensors if tensors is not None else getattr(weights, "tensors", {})
    facts = dict(getattr(weights, "facts", {}))
    facts.update(metadata or {})
    entries = []
    for name, x in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        a = to_numpy(x, name)
        entries.append((name, dtype_code(a.dtype, name), a.shape, a))
        entry = known.get(name) or {"kind": "tensor", "source_layout": "mlx"}
        record[name] = {"kind": str(entry["kind"]), "source_layout": str(entry["source_layout"]),
                        "layout": "mlx"}
    safetensors_io.write(path, entries, to_metadata(record, facts))


def _dtype(code: str, name: str) -> np.dtype:
    if code not in _NAMES:
        raise ValueError(f"tensor {name!r} has safetensors dtype {code!r}, not supported")
    if code == "BF16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(f"tensor {name!r} is bfloat16: reading it needs the ml_dtypes "
                            "package") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_NAMES[code]).newbyteorder("<")


def load(path: str | os.PathLike[str]) -> Weights:
    """All tensors of a safetensors file as read-only numpy arrays (memory-mapped), with
    the file's mpslayout record (``tensors``, ``facts``) when it has one."""
    header = safetensors_io.read(path)  # checked against the file: offsets, sizes, dtypes
    doc = from_metadata(header.metadata)
    out = {}
    for name, e in header.tensors.items():
        dt = _dtype(e.code, name)
        if e.nbytes == 0:
            out[name] = np.zeros(e.shape, dt)
            continue
        mm = np.memmap(path, dtype=dt, mode="r", offset=e.offset, shape=e.shape)
        out[name] = mm.view(np.ndarray)
    if doc is None:
        return Weights(out)
    facts = {k: v for k, v in doc.items() if k not in ("format", "version", "tensors")}
    return Weights(out, tensors=doc["tensors"], facts=facts)

