"""The MLX target's file: one ``.safetensors`` that ``model.load_weights(path)`` of an MLX
port with the same names reads, its ``__metadata__`` holding the mpslayout record
(:mod:`mpslayout.mlx.schema`: each tensor's kind, source layout and that it is in MLX's
layout, so :func:`mpslayout.mlx.sanitize` never converts it twice) and the export's facts
(source, options, the layers with their geometry, what was skipped or assumed).

Layers are converted one at a time and their bytes streamed to a temporary data file, so
peak memory stays near the largest layer; the header (which must come first and is known
only at the end) is then written with the data copied after it into a second temporary
file beside the target, renamed into place. A failure leaves no file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from ....mlx.files import dtype_code
from ....mlx.schema import LAYOUT, to_metadata
from ...plan import ExportError, Layer, Plan
from ...progress import Progress
from .convert import NotForMlx, convert_layer

__all__ = ["check_outfile", "write_mlx"]


def check_outfile(path: str | os.PathLike[str], force: bool) -> str:
    """The absolute output file, after refusing what must not be overwritten."""
    out = os.path.abspath(os.fspath(path))
    if os.path.isdir(out):
        raise FileExistsError(f"{out} is a folder; the MLX target writes one .safetensors file")
    if os.path.lexists(out) and not force:
        raise FileExistsError(f"{out} already exists (use --force / force=True to replace)")
    if not out.endswith(".safetensors"):
        raise ValueError(f"the MLX target writes a .safetensors file, got {out!r}")
    return out


def _module(layer: Layer) -> str:
    """The source module (state_dict), layer (Keras) or node (ONNX) a layer comes from."""
    src = layer.source
    return str(src.get("module") or src.get("layer") or src.get("node"))


def _stacked_modules(layers: Iterable[Layer]) -> set[str]:
    """Recurrent modules with several stacked layers (their parameters go under
    ``.layers.{k}``)."""
    return {_module(x) for x in layers if x.rule in ("lstm", "gru", "rnn")
            and int(x.geometry.get("recurrent", {}).get("stack_index", 0)) > 0}


def _free(name: str, taken: Any) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def write_mlx(path: str, plan: Plan, dtype: np.dtype | None, *, force: bool,
              progress: Progress, facts: dict[str, Any],
              quantize: dict[str, int] | None = None) -> dict[str, Any]:
    """Convert every layer of ``plan`` and write the file; returns the metadata record
    (``tensors`` plus ``facts``, with ``layers`` and any layers MLX refused added).
    ``quantize``: {"bits", "group_size"} of MLX's affine quantization of Linear and
    Embedding weights."""
    out = check_outfile(path, force)
    folder = os.path.dirname(out)
    os.makedirs(folder, exist_ok=True)
    stacked = _stacked_modules(plan.layers)
    header: dict[str, Any] = {}
    record: dict[str, dict[str, str]] = {}
    layers: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    offset = 0
    data_fd, data_path = tempfile.mkstemp(dir=folder, prefix=".mpslayout-", suffix=".data")
    final_path = None
    try:
        with os.fdopen(data_fd, "wb") as data:
            for layer in plan.layers:
                progress.start(layer.name)
                try:
                    conv = convert_layer(layer, dtype, stacked=_module(layer) in stacked,
                                         quantize=quantize)
                except NotForMlx as e:
                    refused.append({"name": layer.name, "op": layer.source.get("op",
                                                                                layer.kind),
                                    "reason": f"MLX: {e}", "tensors": layer.source_tensors()})
                    progress.advance(layer.source_bytes)
                    progress.finish_layer()
                    continue
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as e:
                    raise ExportError(f"layer {layer.name!r} ({layer.source.get('op', layer.kind)}"
                                      f") failed: {type(e).__name__}: {e}", layer.name) from e
                for name in list(conv.arrays):
                    if name in header and conv.tensors[name]["kind"] == "tensor":
                        # one initializer read by several nodes (ONNX operands): each
                        # reading is its own tensor, named after its node
                        name = conv.rename(name, _free(layer.name, header))
                    if name in header:
                        raise ExportError(f"layer {layer.name!r}: tensor name {name!r} is "
                                          "already taken by another layer", layer.name)
                    a = np.ascontiguousarray(conv.arrays[name])
                    if a.dtype.byteorder == ">":
                        a = a.astype(a.dtype.newbyteorder("<"))
                    header[name] = {"dtype": dtype_code(a.dtype, name), "shape": list(a.shape),
                                    "data_offsets": [offset, offset + a.nbytes]}
                    data.write(memoryview(a.reshape(-1).view(np.uint8)))
                    offset += a.nbytes
                    record[name] = {**conv.tensors[name], "layout": LAYOUT}
                conv.record["source"]["tensors"] = layer.source_tensors()
                layers.append(conv.record)
                progress.advance(layer.source_bytes)
                progress.finish_layer()
        if not header:
            raise ValueError("no layer could be exported for MLX: "
                             + "; ".join(f"{r['name']} ({r['op']}): {r['reason']}"
                                         for r in refused))
        doc = dict(facts)
        doc["layers"] = layers
        doc["unsupported"] = list(doc.get("unsupported", [])) + refused
        header["__metadata__"] = to_metadata(record, doc)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        fd, final_path = tempfile.mkstemp(dir=folder, prefix=".mpslayout-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f, open(data_path, "rb") as data_in:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            shutil.copyfileobj(data_in, f, 16 << 20)
        os.chmod(final_path, 0o644)
        os.replace(final_path, out)
        final_path = None
    finally:
        os.unlink(data_path)
        if final_path is not None and os.path.exists(final_path):
            os.unlink(final_path)
        progress.close()
    return {"tensors": record, **doc}
