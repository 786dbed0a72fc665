"""ONNX initializers as lazy tensors: inline ones as views of the parsed protobuf, external
ones as memory maps of files that must lie inside the model's folder (absolute paths, ``..``
and symlinks leading out of it are refused), each checked against its declared size.
"""

from __future__ import annotations

import math
import os
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from ...plan import TensorRef, bfloat16_ref

_EXTERNAL = 1  # TensorProto.EXTERNAL


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "reading ONNX models needs the onnx package: pip install mpslayout[onnx]"
        ) from None
    return onnx


def _np_dtype(code: int) -> np.dtype | None:
    table = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?",
             10: "<f2", 11: "<f8", 12: "<u4", 13: "<u8"}
    if code in table:
        return np.dtype(table[code])
    if code == 16:  # BFLOAT16, read as its raw bits; tensor_ref gives it its type
        return np.dtype("<u2")
    return None


# ----------------------------------------------------------------------- tensors


def _external_path(model_dir: str, location: Any, tensor: str) -> str:
    """The file an external initializer lives in, refusing anything outside ``model_dir``."""
    if not isinstance(location, str) or not location:
        raise ValueError(f"initializer {tensor!r} has external data without a location")
    if "\x00" in location:
        raise ValueError(f"initializer {tensor!r}: external data location contains a NUL byte")
    parts = PurePosixPath(location.replace("\\", "/"))
    if parts.is_absolute() or PureWindowsPath(location).drive or location.startswith("~"):
        raise ValueError(
            f"initializer {tensor!r}: external data location {location!r} is an absolute "
            "path; only files inside the model's folder are read"
        )
    if ".." in parts.parts:
        raise ValueError(
            f"initializer {tensor!r}: external data location {location!r} leads out of the "
            "model's folder; only files inside it are read"
        )
    base = os.path.realpath(model_dir)
    real = os.path.realpath(os.path.join(base, *parts.parts))
    if os.path.commonpath([real, base]) != base:
        raise ValueError(
            f"initializer {tensor!r}: external data location {location!r} resolves to "
            f"{real}, outside the model's folder (a symlink?); refused"
        )
    if not os.path.isfile(real):
        raise ValueError(f"initializer {tensor!r}: external data file {location!r} not found "
                         f"in {base}")
    return real


def _int_field(value: str, what: str, tensor: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"initializer {tensor!r}: external data {what} {value!r} is not an "
                         "integer") from None
    if n < 0:
        raise ValueError(f"initializer {tensor!r}: external data {what} {n} is negative")
    return n


def _typed_values(t: Any, dt: np.dtype, n: int) -> np.ndarray:
    """The values of a tensor stored in its typed repeated fields (not raw_data)."""
    code = t.data_type
    if code == 1:
        vals = np.asarray(t.float_data, dtype=np.float32)
    elif code == 11:
        vals = np.asarray(t.double_data, dtype=np.float64)
    elif code == 7:
        vals = np.asarray(t.int64_data, dtype=np.int64)
    elif code in (12, 13):
        vals = np.asarray(t.uint64_data, dtype=np.uint64)
    elif dt.itemsize == 2 and code in (10, 16):  # bit patterns in int32_data
        vals = np.asarray(t.int32_data, dtype=np.int64).astype(np.uint16)
    else:
        vals = np.asarray(t.int32_data, dtype=np.int64)
    if vals.size != n:
        raise ValueError(
            f"initializer {t.name!r} declares shape {list(t.dims)} ({n} values) but holds "
            f"{vals.size}"
        )
    return vals.view(dt) if code in (10, 16) else vals.astype(dt)


def tensor_ref(t: Any, model_dir: str) -> TensorRef:
    """A lazy view of a TensorProto, after checking its declared size against its bytes."""
    ref = _stored_ref(t, model_dir)
    return bfloat16_ref(ref) if t.data_type == 16 else ref


def _stored_ref(t: Any, model_dir: str) -> TensorRef:
    dims = tuple(int(d) for d in t.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"initializer {t.name!r} has a negative dimension: {list(dims)}")
    dt = _np_dtype(t.data_type)
    if dt is None:
        raise ValueError(f"initializer {t.name!r} has ONNX data type {t.data_type}, which "
                         "mpslayout does not read")
    n = math.prod(dims)
    nbytes = n * dt.itemsize
    if t.data_location == _EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        path = _external_path(model_dir, info.get("location"), t.name)
        offset = _int_field(info.get("offset", "0"), "offset", t.name)
        if "length" in info and _int_field(info["length"], "length", t.name) != nbytes:
            raise ValueError(
                f"initializer {t.name!r} declares shape {list(dims)} ({nbytes} bytes of "
                f"{dt}) but its external data length is {info['length']}"
            )
        size = os.path.getsize(path)
        if offset + nbytes > size:
            raise ValueError(
                f"initializer {t.name!r} needs bytes {offset}..{offset + nbytes} of "
                f"{os.path.basename(path)}, which has only {size} bytes"
            )

        def opener() -> np.ndarray:
            if n == 0:
                return np.empty(dims, dt)
            return np.memmap(path, dtype=dt, mode="r", offset=offset, shape=(n,)).reshape(dims)

        return TensorRef(t.name, dims, dt, opener)
    raw = t.raw_data
    if raw:
        if len(raw) != nbytes:
            raise ValueError(
                f"initializer {t.name!r} declares shape {list(dims)} ({nbytes} bytes of "
                f"{dt}) but holds {len(raw)} bytes"
            )
        return TensorRef(t.name, dims, dt,
                         lambda: np.frombuffer(t.raw_data, dtype=dt, count=n).reshape(dims))
    vals = np.empty(dims, dt) if n == 0 else _typed_values(t, dt, n).reshape(dims)
    return TensorRef(t.name, dims, dt, lambda: vals)
