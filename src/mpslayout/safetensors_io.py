"""The safetensors file format, written in one place (format-neutral: numpy only).

A safetensors file is ``N`` (u64, little-endian), then ``N`` bytes of a JSON object
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ..., "__metadata__": {str:
str}}``, padded with spaces so the data starts 8-byte aligned), then the tensors' raw
little-endian bytes, back to back, at the offsets the header gives (relative to the end of
the header).

:func:`read` is the one reader: it checks the whole header against the file before
anything is read (the length, JSON without a name given twice, every tensor's dtype, shape
and ``data_offsets``, which must tile the data from its first byte to the file's end with
no overlap or gap, as the safetensors library requires, and ``__metadata__`` str -> str),
and names the file and the tensor in what it refuses. The PyTorch source
(:mod:`mpslayout.export.sources.torch.safetensors`) and :func:`mpslayout.mlx.files.load`
read through it.

:func:`write` streams tensors into a temporary file in the destination's folder and
renames it into place: a reader sees the old file or the complete new one, and a failure
(an exception, ``KeyboardInterrupt``) leaves neither a new file nor a temporary one.
:mod:`mpslayout.mlx.files` (``save``, arrays in memory) and the MLX export target
(layers converted one at a time) both write through it.
"""

from __future__ import annotations

import json
import math
import operator
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Union

import numpy as np

__all__ = ["CODES", "ITEMSIZE", "MAX_HEADER", "Entry", "Header", "dtype_code", "read",
           "read_header", "write"]

# numpy dtype name -> safetensors dtype code (bfloat16: ml_dtypes' dtype)
CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
         "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64",
         "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL"}
# bytes per element of every code a file may hold (the 8-bit floats are written as bytes)
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 << 20  # the largest header the safetensors library reads

Data = Union[bytes, bytearray, memoryview, np.ndarray]
Producer = Union[Data, Callable[[], Data]]
Metadata = Union[Mapping[str, str], Callable[[], Mapping[str, str]], None]


def dtype_code(dt: Any, name: str = "tensor") -> str:
    """The safetensors dtype code of numpy dtype ``dt`` (``"F32"``, ``"BF16"``, ...)."""
    code = CODES.get(np.dtype(dt).name)
    if code is None:
        raise TypeError(f"tensor {name!r} has dtype {dt}, which safetensors cannot hold")
    return code


@dataclass(frozen=True)
class Entry:
    """One tensor of a file: its dtype code, shape, and bytes ``[offset, offset +
    nbytes)`` of the file (``offset`` counted from the file's start)."""

    name: str
    code: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: the JSON object as in the file (``__metadata__``
    included), where the data starts, the tensors in header order, and the metadata."""

    path: str
    raw: dict[str, Any]
    start: int
    tensors: dict[str, Entry]
    metadata: dict[str, str] | None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the header names {k!r} twice")
        out[k] = v
    return out


def _ints(v: Any, what: str, name: str, path: str) -> list[int]:
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) or x < 0
                                      for x in v):
        raise ValueError(f"{path}: tensor {name!r}: {what} must be a list of non-negative "
                         f"integers, got {v!r}")
    return v


def _tensor(path: str, name: str, info: Any, data_size: int, start: int) -> Entry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{path}: tensor {name!r} needs exactly dtype, shape and "
                         f"data_offsets, got {info!r}")
    code = info["dtype"]
    if not isinstance(code, str) or code not in ITEMSIZE:
        raise ValueError(f"{path}: tensor {name!r} has unknown safetensors dtype {code!r} "
                         f"(known: {', '.join(ITEMSIZE)})")
    shape = tuple(_ints(info["shape"], "shape", name, path))
    offsets = _ints(info["data_offsets"], "data_offsets", name, path)
    if len(offsets) != 2 or offsets[0] > offsets[1]:
        raise ValueError(f"{path}: tensor {name!r} has data_offsets {offsets}, not "
                         "[begin, end] with begin <= end")
    begin, end = offsets
    nbytes = math.prod(shape) * ITEMSIZE[code]
    if end - begin != nbytes:
        raise ValueError(f"{path}: tensor {name!r} declares {code}{list(shape)} ({nbytes} "
                         f"bytes) but data_offsets {offsets} hold {end - begin} bytes")
    if end > data_size:
        raise ValueError(f"{path} is truncated or corrupted: tensor {name!r} ends at byte "
                         f"{end} of the data, which has only {data_size} bytes")
    return Entry(name, code, shape, start + begin, nbytes)


def read(path: str | os.PathLike[str]) -> Header:
    """The checked header of the safetensors file at ``path``; ValueError naming the file
    (and the tensor) for anything the format does not allow, before any data is read."""
    where = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{where} is not a safetensors file: {size} bytes, shorter than "
                             "the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER:
            raise ValueError(f"{where}: safetensors header length {n} is absurd (over "
                             f"{MAX_HEADER} bytes); not a safetensors file or corrupted")
        if 8 + n > size:
            raise ValueError(f"{where} is truncated: its header needs {n} bytes but the file "
                             f"has {size - 8} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{where}: the safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the safetensors header is not a JSON object")
    start = 8 + n
    data_size = size - start
    metadata = header.get("__metadata__")
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values())):
        raise ValueError(f"{where}: __metadata__ must map strings to strings, got "
                         f"{_short(metadata)}")
    tensors = {name: _tensor(where, name, info, data_size, start)
               for name, info in header.items() if name != "__metadata__"}
    at, last = 0, ""  # the tensors must tile the data: no overlap, no gap, nothing after
    for e in sorted(tensors.values(), key=lambda e: (e.offset, e.nbytes)):
        begin = e.offset - start
        if begin < at:
            raise ValueError(f"{where}: tensors {last!r} and {e.name!r} overlap")
        if begin > at:
            raise ValueError(f"{where}: tensor {e.name!r} starts at byte {begin} of the data, "
                             f"leaving bytes {at}..{begin} that no tensor holds (a gap)")
        at, last = begin + e.nbytes, e.name
    if at != data_size:
        raise ValueError(f"{where}: {data_size - at} bytes after the last tensor's data (at "
                         f"byte {at} of {data_size}) that no tensor holds")
    return Header(where, header, start, tensors, metadata)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """(header dict, byte offset of the data) of a safetensors file, checked by
    :func:`read`."""
    h = read(path)
    return h.raw, h.start


def _entry(item: Any, taken: dict[str, Any], offset: int) -> tuple[str, int, Producer]:
    """Check one ``(name, code, shape, data)`` and record it in the header ``taken``;
    returns the name, its byte count and its data (or producer)."""
    try:
        name, code, shape, data = item
    except (TypeError, ValueError):
        raise TypeError("each tensor must be a (name, dtype code, shape, data) tuple, got "
                        f"{type(item).__name__}") from None
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {name!r}")
    if name == "__metadata__" or name in taken:
        raise ValueError(f"tensor name {name!r} is " + ("reserved by the format"
                         if name == "__metadata__" else "given twice"))
    if code not in ITEMSIZE:
        raise ValueError(f"tensor {name!r}: {code!r} is not a safetensors dtype "
                         f"({', '.join(ITEMSIZE)})")
    try:
        dims = [operator.index(d) for d in shape]
    except TypeError:
        raise TypeError(f"tensor {name!r}: shape must be a sequence of ints, got "
                        f"{shape!r}") from None
    if any(d < 0 or isinstance(s, bool) for d, s in zip(dims, shape)):
        raise ValueError(f"tensor {name!r}: shape {list(shape)} has a negative or bool size")
    nbytes = math.prod(dims) * ITEMSIZE[code]
    taken[name] = {"dtype": code, "shape": dims, "data_offsets": [offset, offset + nbytes]}
    return name, nbytes, data


def _buffer(name: str, info: dict[str, Any], data: Producer) -> memoryview:
    """The bytes of one tensor as the header describes them (a producer is called)."""
    if callable(data):
        data = data()
    if isinstance(data, np.ndarray):
        if data.dtype.name not in CODES or CODES[data.dtype.name] != info["dtype"]:
            raise TypeError(f"tensor {name!r} is declared {info['dtype']} but its array "
                            f"has dtype {data.dtype}")
        if list(data.shape) != info["shape"]:
            raise ValueError(f"tensor {name!r} is declared with shape {info['shape']} but "
                             f"its array has shape {list(data.shape)}")
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        view = memoryview(data).cast("B")
    except TypeError:
        raise TypeError(f"tensor {name!r}: data must be bytes, a numpy array or a function "
                        f"returning one, got {type(data).__name__}") from None
    begin, end = info["data_offsets"]
    if view.nbytes != end - begin:
        raise ValueError(f"tensor {name!r}: {view.nbytes} bytes given, its shape "
                         f"{info['shape']} {info['dtype']} needs {end - begin}")
    return view


def _header_bytes(header: dict[str, Any], metadata: Mapping[str, str] | None) -> bytes:
    if metadata is not None:
        bad = [(k, v) for k, v in metadata.items()
               if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata maps str to str; got {bad[0][0]!r}: "
                            f"{type(bad[0][1]).__name__}")
        header = {"__metadata__": dict(metadata), **header}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    if len(raw) > MAX_HEADER:
        raise ValueError(f"the safetensors header is {len(raw)} bytes, over the {MAX_HEADER} "
                         "that readers accept")
    return len(raw).to_bytes(8, "little") + raw


def _metadata(metadata: Metadata) -> Mapping[str, str] | None:
    return metadata() if callable(metadata) else metadata


def write(path: str | os.PathLike[str], tensors: Iterable[tuple[str, str, Sequence[int],
                                                                 Producer]],
          metadata: Metadata = None, *, mode: int = 0o644) -> int:
    """Write a safetensors file at ``path`` atomically; returns its size in bytes.

    ``tensors``: ``(name, dtype code, shape, data)`` in file order, ``data`` bytes-like, a
    numpy array (its dtype and shape must match) or a function returning one, called only
    when that tensor is written. ``metadata``: the ``__metadata__`` (str -> str), or a
    function returning it, called after the last tensor (so it may record what producing
    them found out).

    When ``tensors`` is a sequence and ``metadata`` is not a function, the header is known
    before any data: it is written first and each tensor goes straight into the file.
    Otherwise ``tensors`` is consumed once, in order, each tensor's bytes written to a
    temporary data file as it comes (memory stays near the largest tensor), and the file is
    then assembled from the header and that data. Either way the file is built under a
    temporary name in ``path``'s folder and renamed into place; on any failure, including
    ``KeyboardInterrupt``, the temporary files are removed and ``path`` is untouched.
    """
    out = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(out)
    made: list[str] = []

    def temporary(suffix: str) -> IO[bytes]:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".mpslayout-", suffix=suffix)
        made.append(name)
        return os.fdopen(fd, "wb")

    header: dict[str, Any] = {}
    try:
        if isinstance(tensors, Sequence) and not callable(metadata):
            offset = 0
            entries = []
            for item in tensors:
                name, nbytes, data = _entry(item, header, offset)
                entries.append((name, data))
                offset += nbytes
            with temporary(".tmp") as f:
                f.write(_header_bytes(header, metadata))
                for name, data in entries:
                    f.write(_buffer(name, header[name], data))
                f.flush()
                os.fsync(f.fileno())
        else:
            offset = 0
            with temporary(".data") as spool:
                for item in tensors:
                    name, nbytes, data = _entry(item, header, offset)
                    spool.write(_buffer(name, header[name], data))
                    offset += nbytes
            with temporary(".tmp") as f, open(made[0], "rb") as data_in:
                f.write(_header_bytes(header, _metadata(metadata)))
                shutil.copyfileobj(data_in, f, 16 << 20)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(made[-1], mode)
        os.replace(made[-1], out)
        made.pop()
        return os.path.getsize(out)
    finally:
        for name in made:
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
