"""Reads a ``.safetensors`` file without the safetensors package: an 8-byte little-endian
header length, a JSON header naming every tensor's dtype, shape and byte range, then the
data, which is memory-mapped tensor by tensor. Every declared size is checked against the
file before anything is read; the layers are then found by rule (:mod:`.statedict`).

bfloat16 tensors stay memory-mapped as ``ml_dtypes.bfloat16`` when ml_dtypes is installed.
Without it their raw bits are widened to float32 by the engine as they are read (exact, and
bit-identical to ml_dtypes' conversion); that float32 copy then counts towards peak memory.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ...plan import Overrides, Plan, TensorRef, bfloat16_ref
from . import statedict

MAX_HEADER = 100 << 20  # the safetensors library's own limit

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
           "BOOL": "?"}
_ONE_BYTE = ("F8_E4M3", "F8_E5M2")  # sizes are checked; the tensors are not exported


_BF16_BITS = np.dtype("<u2")


def _dtype(code: str) -> np.dtype:
    """The dtype the file stores; bfloat16 as its raw bits (``<u2``), see :func:`_ref`."""
    if code in _DTYPES:
        return np.dtype(_DTYPES[code])
    if code == "BF16":
        return _BF16_BITS
    raise ValueError(f"unknown safetensors dtype {code!r}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the header names tensor {k!r} twice")
        out[k] = v
    return out


def _ints(v: Any, what: str, name: str) -> list[int]:
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) or x < 0
                                      for x in v):
        raise ValueError(f"tensor {name!r}: {what} must be a list of non-negative integers, "
                         f"got {v!r}")
    return v


def read_header(path: str) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Every tensor of the file as a lazy memory map, and the unreadable ones with why."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file: {size} bytes, shorter than "
                             "the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER:
            raise ValueError(f"{path}: safetensors header length {n} is absurd (over "
                             f"{MAX_HEADER} bytes); not a safetensors file or corrupted")
        if 8 + n > size:
            raise ValueError(f"{path} is truncated: its header needs {n} bytes but the file "
                             f"has {size - 8} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: the safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    start = 8 + n
    data_size = size - start
    tensors: dict[str, TensorRef] = {}
    unreadable: dict[str, str] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ValueError(f"{path}: __metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{path}: tensor {name!r} needs exactly dtype, shape and "
                             f"data_offsets, got {info!r}")
        code = info["dtype"]
        if not isinstance(code, str):
            raise ValueError(f"{path}: tensor {name!r} has dtype {code!r}")
        shape = tuple(_ints(info["shape"], "shape", name))
        offsets = _ints(info["data_offsets"], "data_offsets", name)
        if len(offsets) != 2 or offsets[0] > offsets[1]:
            raise ValueError(f"{path}: tensor {name!r} has data_offsets {offsets}")
        begin, end = offsets
        itemsize = 1 if code in _ONE_BYTE else _dtype(code).itemsize
        count = math.prod(shape)
        if end - begin != count * itemsize:
            raise ValueError(
                f"{path}: tensor {name!r} declares {code}{list(shape)} ({count * itemsize} "
                f"bytes) but data_offsets {offsets} hold {end - begin} bytes"
            )
        if end > data_size:
            raise ValueError(
                f"{path} is truncated or corrupted: tensor {name!r} ends at byte {end} of the "
                f"data, which has only {data_size} bytes"
            )
        spans.append((begin, end, name))
        if code in _ONE_BYTE:
            unreadable[name] = f"dtype {code} (float8) is not an MPS weight type"
            continue
        tensors[name] = _ref(path, name, _dtype(code), shape, start + begin, code == "BF16")
    spans.sort()
    for (_, end0, a), (begin1, _, b) in zip(spans, spans[1:]):
        if begin1 < end0:
            raise ValueError(f"{path}: tensors {a!r} and {b!r} overlap")
    return tensors, unreadable


def _ref(path: str, name: str, dt: np.dtype, shape: tuple[int, ...], offset: int,
         bfloat16: bool = False) -> TensorRef:
    """A memory-mapped tensor; bfloat16 (stored as ``<u2`` bits) typed by ``bfloat16_ref``."""
    count = math.prod(shape)

    def opener() -> np.ndarray:
        if count == 0:
            return np.empty(shape, dt)
        return np.memmap(path, dtype=dt, mode="r", offset=offset, shape=(count,)).reshape(shape)

    ref = TensorRef(name, shape, dt, opener)
    return bfloat16_ref(ref) if bfloat16 else ref


def read(path: str, *, overrides: Overrides) -> Plan:
    tensors, unreadable = read_header(path)
    plan = statedict.plan(tensors, "safetensors", overrides)
    for name, reason in unreadable.items():
        plan.skip(name, "tensor", reason)
    return plan
