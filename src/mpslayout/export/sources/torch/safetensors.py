"""Reads a ``.safetensors`` file without the safetensors package: an 8-byte little-endian
header length, a JSON header naming every tensor's dtype, shape and byte range, then the
data, which is memory-mapped tensor by tensor. The header is checked against the file
before anything is read, by the package's one safetensors reader
(:func:`mpslayout.safetensors_io.read`); the layers are then found by rule
(:mod:`.statedict`).

bfloat16 tensors stay memory-mapped as ``ml_dtypes.bfloat16`` when ml_dtypes is installed.
Without it their raw bits are widened to float32 by the engine as they are read (exact, and
bit-identical to ml_dtypes' conversion); that float32 copy then counts towards peak memory.
"""

from __future__ import annotations

import math

import numpy as np

from .... import safetensors_io
from ...plan import Overrides, Plan, TensorRef, bfloat16_ref
from . import statedict

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
           "BOOL": "?", "BF16": "<u2"}  # bfloat16 as its raw bits, see :func:`_ref`
_ONE_BYTE = ("F8_E4M3", "F8_E5M2")  # sizes are checked; the tensors are not exported


def read_header(path: str) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Every tensor of the file as a lazy memory map, and the unreadable ones with why;
    the header is checked by :func:`mpslayout.safetensors_io.read`."""
    tensors: dict[str, TensorRef] = {}
    unreadable: dict[str, str] = {}
    for name, e in safetensors_io.read(path).tensors.items():
        if e.code in _ONE_BYTE:
            unreadable[name] = f"dtype {e.code} (float8) is not an MPS weight type"
            continue
        tensors[name] = _ref(path, name, np.dtype(_DTYPES[e.code]), e.shape, e.offset,
                             e.code == "BF16")
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
