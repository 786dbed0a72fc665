"""Where a Keras file keeps its config and weights: a Keras 3 ``.keras`` archive (config.json
and model.weights.h5 in a zip) or a legacy ``.h5`` file (model_config attribute and
model_weights group). libhdf5 runs only in a child process (h5probe.py) with a timeout;
weights are then memory-mapped from the file's bytes where they are stored plainly.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ...plan import TensorRef

_MAX_CONFIG = 64 << 20
_WEIGHTS_MEMBER = "model.weights.h5"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "reading Keras models needs the h5py package: pip install mpslayout[keras]"
        ) from None
    return h5py



# ----------------------------------------------------------------------- files


class Source:
    """The config and where each weight dataset is. libhdf5 runs only in a child process
    (h5probe.py) with a timeout; weights are then memory-mapped from the file's bytes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.h5py = _h5py()
        with open(path, "rb") as f:
            head = f.read(4)
        self.zipped = head.startswith(b"PK") or path.lower().endswith(".keras")
        self.base: int | None = 0  # file offset of the HDF5 data (None: compressed in a zip)
        if self.zipped:
            try:
                with zipfile.ZipFile(path) as zf:
                    names = set(zf.namelist())
                    if "config.json" not in names or _WEIGHTS_MEMBER not in names:
                        raise ValueError(f"{path} is a zip without config.json and "
                                         f"{_WEIGHTS_MEMBER}: not a Keras 3 .keras file")
                    info = zf.getinfo("config.json")
                    if info.file_size > _MAX_CONFIG:
                        raise ValueError(f"{path}: config.json is {info.file_size} bytes, "
                                         "too large for a model config")
                    self.config = json.loads(zf.read("config.json").decode("utf-8"))
                    self.base = _stored_member_offset(path, zf.getinfo(_WEIGHTS_MEMBER))
            except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError,
                    KeyError) as e:
                raise ValueError(f"cannot read {path} as a .keras archive: {e}") from None
            self.meta = _probe(path, _WEIGHTS_MEMBER)
        else:
            self.meta = _probe(path)
            raw = self.meta["config"]
            if raw is None:
                raise ValueError(
                    f"{path} has no model_config: a weights-only file has no graph to "
                    "export from (save the whole model, model.save('m.keras'))"
                )
            try:
                self.config = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: model_config is not JSON: {e}") from None

    def group(self, name: str, var_path: str) -> str:
        """The HDF5 folder (with a trailing slash) holding every array of layer ``name``,
        its own variables and those of anything inside it (a nested model, a seed
        generator); ``var_path`` is its path in a .keras archive."""
        return f"{var_path}/" if self.zipped else f"model_weights/{name}/"

    def arrays(self) -> list[str]:
        """Every array in the file (weights, optimizer and other state), by HDF5 path."""
        return sorted(self.meta["datasets"])

    def datasets(self, name: str, var_path: str) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """(h5 path, shape, dtype) of a layer's variables, in the layer's weight order."""
        table = self.meta["datasets"]
        if self.zipped:
            prefix = f"{var_path}/vars/"
            keys = [p[len(prefix):] for p in table if p.startswith(prefix)]
            keys = sorted((k for k in keys if "/" not in k),
                          key=lambda k: int(k) if k.isdigit() else 1 << 30)
            paths = [prefix + k for k in keys]
        else:
            names = self.meta["weight_names"].get(name)
            if names is None:
                return []
            paths = [f"model_weights/{name}/{n}" for n in names]
        out = []
        for p in paths:
            if p not in table:
                raise ValueError(f"{self.path}: weight {p!r} of layer {name!r} is "
                                 "missing")
            shape, dt, _ = table[p]
            try:
                dtype = np.dtype(dt)
            except TypeError:
                raise ValueError(f"{self.path}: weight {p!r} has dtype {dt!r}") from None
            out.append((p, tuple(shape), dtype))
        return out

    def ref(self, h5_path: str, shape: tuple[int, ...], dtype: np.dtype) -> TensorRef:
        offset = self.meta["datasets"][h5_path][2]
        n = math.prod(shape)
        if n == 0:
            return TensorRef(h5_path, shape, dtype, lambda: np.empty(shape, dtype))
        if offset is not None and self.base is not None:
            start, size = self.base + offset, os.path.getsize(self.path)
            if start + n * dtype.itemsize > size:
                raise ValueError(f"{self.path}: weight {h5_path!r} needs bytes {start}.."
                                 f"{start + n * dtype.itemsize}, past the end of the file "
                                 f"({size} bytes): truncated?")
            return TensorRef(h5_path, shape, dtype, lambda: np.memmap(
                self.path, dtype=dtype, mode="r", offset=start, shape=shape))

        def opener() -> np.ndarray:  # chunked, filtered or compressed: libhdf5 must decode
            zf = zipfile.ZipFile(self.path) if self.zipped else None
            try:
                src = zf.open(_WEIGHTS_MEMBER) if zf is not None else self.path
                with self.h5py.File(src, "r") as f:
                    return np.asarray(f[h5_path][()])
            finally:
                if zf is not None:
                    zf.close()

        return TensorRef(h5_path, shape, dtype, opener)


def _stored_member_offset(path: str, info: zipfile.ZipInfo) -> int | None:
    """File offset of a zip member's bytes when it is stored uncompressed, else None."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: the local header of {info.filename} is corrupt")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _probe(path: str, member: str | None = None) -> dict[str, Any]:
    """h5probe.py's answer for ``path`` (a zip member of it), run in a child process."""
    timeout = float(os.environ.get("MPSLAYOUT_HDF5_TIMEOUT", "30"))
    cmd = [sys.executable, "-c", _PROBE_SOURCE, path, *([member] if member else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except OSError:  # no interpreter to start (an embedded Python): read it here, unguarded
        return _probe_here(path, member)
    except subprocess.TimeoutExpired:
        raise ValueError(
            f"reading the HDF5 structure of {path} did not finish in {timeout:g} s "
            "(libhdf5 loops on some corrupt files; MPSLAYOUT_HDF5_TIMEOUT sets the limit)"
        ) from None
    what = f"{path} ({member})" if member else path
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise ValueError(f"reading the HDF5 structure of {what} failed (exit status "
                         f"{proc.returncode}{': ' + tail[0] if tail else ''}): a corrupt file?")
    try:
        meta = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ValueError(f"reading the HDF5 structure of {what} gave no answer") from None
    if "error" in meta:
        raise ValueError(f"cannot read {what} as HDF5 (truncated or not a Keras file?): "
                         f"{meta['error']}")
    return meta


def _probe_here(path: str, member: str | None) -> dict[str, Any]:
    from . import h5probe

    try:
        meta = h5probe.probe_file(path, member)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path} as HDF5 (truncated or not a Keras file?): "
                         f"{type(e).__name__}: {e}") from None
    return meta


_PROBE_SOURCE = (Path(__file__).with_name("h5probe.py")).read_text(encoding="utf-8")
