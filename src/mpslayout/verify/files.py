"""Reading an export folder: the manifest and every layer's arrays, each file checked
against its name, size and SHA-256 before a byte of it is used."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..reference.quant import float_weights

__all__ = ["ExportedLayer", "Uncheckable", "VerifyError", "load_export"]

_SAFE_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*\.bin$")
_FILE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
                "uint8": np.dtype("u1")}


class VerifyError(ValueError):
    """The export or the model cannot be verified at all (unreadable, corrupt, mismatched)."""


class Uncheckable(VerifyError):
    """Nothing can judge the export (no oracle runs the model and no expected outputs were
    given): the verdict "nothing_checkable", exit status 3, not a divergence."""


@dataclass
class ExportedLayer:
    """A manifest entry and its arrays (8-bit weights as MPS reads them, float32); ``quant``
    keeps the 8-bit form's bytes ``q`` and ``ranges`` or ``lut``, for the tolerance."""

    entry: dict[str, Any]
    arrays: dict[str, np.ndarray]
    quant: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.entry["name"])

    @property
    def kind(self) -> str:
        return str(self.entry["kind"])


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_export(outdir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[ExportedLayer]]:
    """The manifest and every layer's arrays, after checking each file's name, size, shape
    and SHA-256 against the manifest."""
    folder = os.fspath(outdir)
    path = os.path.join(folder, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise VerifyError(f"{folder} has no manifest.json: not an mpslayout export") from None
    except ValueError as e:
        raise VerifyError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != "mpslayout-manifest":
        raise VerifyError(f"{path} is not an mpslayout manifest")
    if doc.get("version") != 1:
        raise VerifyError(f"{path} has manifest version {doc.get('version')!r}; this "
                          "mpslayout reads version 1")
    if doc.get("byte_order", "little") != "little":
        raise VerifyError(f"{path}: byte_order {doc.get('byte_order')!r} is not 'little'")
    layers = []
    for entry in doc.get("layers", []):
        arrays = {}
        for role, info in entry.get("files", {}).items():
            name = str(info.get("file", ""))
            if not _SAFE_FILE.match(name):
                raise VerifyError(f"layer {entry.get('name')!r}: file name {name!r} is not a "
                                  "plain .bin name inside the export folder")
            dt = _FILE_DTYPES.get(info.get("dtype"))
            if dt is None:
                raise VerifyError(f"layer {entry.get('name')!r}: {name} has dtype "
                                  f"{info.get('dtype')!r}, not float32, float16 or uint8")
            shape = [int(v) for v in info.get("shape", [])]
            fpath = os.path.join(folder, name)
            if not os.path.isfile(fpath):
                raise VerifyError(f"layer {entry.get('name')!r}: {name} is missing")
            size = os.path.getsize(fpath)
            want = math.prod(shape) * dt.itemsize
            if size != want or size != info.get("bytes"):
                raise VerifyError(f"layer {entry.get('name')!r}: {name} has {size} bytes; the "
                                  f"manifest says {info.get('bytes')} ({dt.name}{shape}: "
                                  f"{want})")
            digest = _sha256(fpath)
            if digest != info.get("sha256"):
                raise VerifyError(f"layer {entry.get('name')!r}: {name} does not match its "
                                  "SHA-256 in the manifest (changed after the export?)")
            arrays[role] = np.fromfile(fpath, dtype=dt).reshape(shape)
        quant = {k: arrays[k] for k in ("ranges", "lut") if k in arrays}
        if quant and "weights" in arrays:
            quant["q"] = arrays["weights"]
        layers.append(ExportedLayer(entry, float_weights(arrays), quant))  # as MPS reads it
    return doc, layers


