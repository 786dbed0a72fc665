"""MLX safetensors files written and read by this package ("never twice").

:func:`save` writes the safetensors format itself (8-byte little-endian header length,
the JSON header, the raw little-endian bytes) to a temporary file in the target folder and
renames it into place; ``mx.load`` and ``nn.Module.load_weights`` read it. The metadata
records, per tensor, its kind and source layout and that it is in MLX's layout
(:mod:`mpslayout.mlx.schema`). :func:`load` reads any safetensors file into numpy
(memory-mapped) and returns a :class:`~mpslayout.mlx.schema.Weights` carrying the record.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .arrays import to_numpy
from .schema import Weights, from_metadata, to_metadata

__all__ = ["load", "save"]

# safetensors dtype code <-> numpy dtype name (BF16 through ml_dtypes)
_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
          "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64",
          "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL"}
_NAMES = {v: k for k, v in _CODES.items()}


def _numpy(x: Any, name: str) -> np.ndarray:
    a = to_numpy(x, name)
    if a.dtype.name not in _CODES:
        raise TypeError(f"tensor {name!r} has dtype {a.dtype}, which safetensors cannot hold")
    return a


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
    header: dict[str, Any] = {}
    arrays = []
    offset = 0
    for name, x in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        a = _numpy(x, name)
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        header[name] = {"dtype": _CODES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
        entry = known.get(name) or {"kind": "tensor", "source_layout": "mlx"}
        record[name] = {"kind": str(entry["kind"]), "source_layout": str(entry["source_layout"]),
                        "layout": "mlx"}
    header["__metadata__"] = to_metadata(record, facts)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mpslayout-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for a in arrays:
                f.write(np.ascontiguousarray(a).tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """(header dict, byte offset of the data) of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{os.fspath(path)!r} is not a safetensors file (too short)")
        n = int.from_bytes(head, "little")
        size = os.fstat(f.fileno()).st_size
        if n > size - 8:
            raise ValueError(f"{os.fspath(path)!r}: header length {n} exceeds the file")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)!r}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{os.fspath(path)!r}: header is not a JSON object")
    return header, 8 + n


def load(path: str | os.PathLike[str]) -> Weights:
    """All tensors of a safetensors file as read-only numpy arrays (memory-mapped), with
    the file's mpslayout record (``tensors``, ``facts``) when it has one."""
    header, start = read_header(path)
    meta = header.pop("__metadata__", None)
    doc = from_metadata(meta)
    size = os.path.getsize(path)
    out = {}
    for name, info in header.items():
        dt = _dtype(info["dtype"], name)
        shape = tuple(int(v) for v in info["shape"])
        b, e = (int(v) for v in info["data_offsets"])
        count = int(np.prod(shape)) if shape else 1
        if e - b != count * dt.itemsize or start + e > size or b < 0:
            raise ValueError(f"tensor {name!r}: data_offsets {[b, e]} do not hold "
                             f"{shape} {info['dtype']} inside the file")
        if count == 0:
            out[name] = np.zeros(shape, dt)
            continue
        mm = np.memmap(path, dtype=dt, mode="r", offset=start + b, shape=shape)
        out[name] = mm.view(np.ndarray)
    if doc is None:
        return Weights(out)
    facts = {k: v for k, v in doc.items() if k not in ("format", "version", "tensors")}
    return Weights(out, tensors=doc["tensors"], facts=facts)
