"""Atomic export: every file goes into a temporary folder beside OUTDIR, which is renamed
into place only once everything (manifest last) is written. A failure removes the temporary
folder and leaves no OUTDIR, and the error names the layer that failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

from ...plan import ExportError, Layer
from ...progress import Progress
from . import manifest as mf
from .convert import convert_layer, file_layout

_WRITE_BLOCK = 16 << 20


# ------------------------------------------------------------------------- names


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(name: str, taken: set[str]) -> str:
    """A file-name stem for ``name``: [A-Za-z0-9._-] only, no leading dot, at most 100
    characters, unique (case-insensitively, for case-insensitive file systems) in ``taken``."""
    stem = _UNSAFE.sub("_", name).lstrip(".")[:100].rstrip(".") or "layer"
    candidate, n = stem, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem}_{n}"
    taken.add(candidate.lower())
    return candidate


def _little_endian(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


class _BinFile:
    """One output file, written chunk by chunk with its SHA-256."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.f = open(path, "xb")
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.shape: list[int] | None = None
        self.dtype: np.dtype | None = None

    def write(self, a: np.ndarray) -> None:
        if self.shape is None:
            self.shape, self.dtype = list(a.shape), a.dtype
        else:
            if a.dtype != self.dtype or list(a.shape[1:]) != self.shape[1:]:
                raise ValueError(f"chunk {a.dtype}{list(a.shape)} does not continue "
                                 f"{self.dtype}{self.shape}")
            self.shape[0] += a.shape[0]
        data = memoryview(_little_endian(a)).cast("B")
        for i in range(0, len(data), _WRITE_BLOCK):
            block = data[i:i + _WRITE_BLOCK]
            self.f.write(block)
            self.sha.update(block)
        self.bytes += len(data)

    def close(self) -> None:
        self.f.close()

    def entry(self, layout: str) -> dict[str, Any]:
        assert self.dtype is not None
        assert self.shape is not None
        return {"file": os.path.basename(self.path), "dtype": self.dtype.name,
                "shape": self.shape, "layout": layout, "bytes": self.bytes,
                "sha256": self.sha.hexdigest()}


def _layout(layer: Layer, role: str) -> str:
    if layer.rule in ("lstm", "gru", "rnn"):
        return file_layout(role)
    if role == "lut":  # lookupTableForUInt8Kernel: 256 float32
        return "lut"
    if role in ("constant", "tensor"):
        return "image_slices" if role == "constant" else "source"
    if role != "weights":
        return "O"
    return "OHW" if layer.rule == "depthwise" else "OHWI"


def write_layer(layer: Layer, folder: str, dtype: np.dtype,
                progress: Progress) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    current: _BinFile | None = None
    role_now = ""
    try:
        for role, array, nbytes in convert_layer(layer, dtype):
            if role != role_now:
                if current is not None:
                    current.close()
                    files[role_now] = current.entry(_layout(layer, role_now))
                suffix = "weights" if role == "weights" else role
                current = _BinFile(os.path.join(folder, f"{layer.file_stem}.{suffix}.bin"))
                role_now = role
            current.write(array)
            del array
            progress.advance(nbytes)
        if current is not None:
            current.close()
            files[role_now] = current.entry(_layout(layer, role_now))
    finally:
        if current is not None:
            current.f.close()
    return files


# ------------------------------------------------------------------------- folder


def _is_our_export(path: str) -> bool:
    """An empty folder, or one holding an mpslayout manifest: safe to replace."""
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    if not entries:
        return True
    try:
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
            return json.load(f).get("format") == mf.FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_outdir(outdir: str, force: bool) -> str:
    """The absolute OUTDIR, after refusing what must not be overwritten."""
    out = os.path.abspath(os.fspath(outdir))
    if os.path.lexists(out):
        if not force:
            raise FileExistsError(f"{out} already exists (use --force / force=True to replace)")
        if os.path.islink(out) or not os.path.isdir(out):
            raise FileExistsError(f"{out} exists and is not a folder; not replacing it")
        if not _is_our_export(out):
            raise FileExistsError(
                f"{out} is not empty and holds no mpslayout manifest; not replacing it"
            )
    return out


def write_all(outdir: str, layers: Iterable[Layer], dtype: np.dtype, *, force: bool,
              progress: Progress, manifest_fields: dict[str, Any],
              version: str) -> dict[str, Any]:
    """Write every layer and the manifest into a temporary folder, then move it to OUTDIR."""
    out = check_outdir(outdir, force)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = _sibling(out, ".mpslayout-tmp", create=True)
    try:
        entries = []
        for layer in layers:
            progress.start(layer.name)
            try:
                files = write_layer(layer, tmp, dtype, progress)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:
                raise ExportError(f"layer {layer.name!r} ({layer.source.get('op', layer.kind)})"
                                  f" failed: {type(e).__name__}: {e}", layer.name) from e
            entries.append(mf.layer_entry(layer, files, dtype.name))
            progress.finish_layer()
        doc = mf.build(layers=entries, dtype=dtype.name, version=version, **manifest_fields)
        with open(os.path.join(tmp, "manifest.json"), "x", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        _move_into_place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        progress.close()
    return doc


def _sibling(out: str, suffix: str, create: bool) -> str:
    """A free hidden name beside ``out``; created as a folder (with the usual permissions,
    unlike mkdtemp's 0700) when ``create``."""
    parent, base = os.path.split(out)
    for _ in range(100):
        path = os.path.join(parent, f".{base}.{secrets.token_hex(4)}{suffix}")
        if create:
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            return path
        if not os.path.lexists(path):
            return path
    raise FileExistsError(f"no free temporary name beside {out}")


def _move_into_place(tmp: str, out: str, force: bool) -> None:
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    check_outdir(out, force)  # it appeared meanwhile, or force: same rules as at the start
    old = _sibling(out, ".mpslayout-old", create=False)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
