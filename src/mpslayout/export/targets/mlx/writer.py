"""The MLX target's file: one ``.safetensors`` that ``model.load_weights(path)`` of an MLX
port with the same names reads, its ``__metadata__`` holding the mpslayout record
(:mod:`mpslayout.mlx.schema`: each tensor's kind, source layout and that it is in MLX's
layout, so :func:`mpslayout.mlx.sanitize` never converts it twice) and the export's facts
(source, options, the layers with their geometry, what was skipped or assumed).

Layers are converted one at a time and their tensors streamed to
:func:`mpslayout.safetensors_io.write` (the format's one writer), so peak memory stays near
the largest layer; the metadata, known only at the end, is handed over as a function. The
file is built beside the target and renamed into place: a failure leaves no file behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .... import safetensors_io
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
    os.makedirs(os.path.dirname(out), exist_ok=True)
    stacked = _stacked_modules(plan.layers)
    record: dict[str, dict[str, str]] = {}
    layers: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    doc = dict(facts)

    def tensors() -> Iterator[tuple[str, str, tuple[int, ...], np.ndarray]]:
        for layer in plan.layers:
            progress.start(layer.name)
            try:
                conv = convert_layer(layer, dtype, stacked=_module(layer) in stacked,
                                     quantize=quantize)
            except NotForMlx as e:
                refused.append({"name": layer.name, "op": layer.source.get("op", layer.kind),
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
                if name in record and conv.tensors[name]["kind"] == "tensor":
                    # one initializer read by several nodes (ONNX operands): each
                    # reading is its own tensor, named after its node
                    name = conv.rename(name, _free(layer.name, record))
                if name in record:
                    raise ExportError(f"layer {layer.name!r}: tensor name {name!r} is "
                                      "already taken by another layer", layer.name)
                a = conv.arrays[name]
                record[name] = {**conv.tensors[name], "layout": LAYOUT}
                yield name, safetensors_io.dtype_code(a.dtype, name), a.shape, a
            conv.record["source"]["tensors"] = layer.source_tensors()
            layers.append(conv.record)
            progress.advance(layer.source_bytes)
            progress.finish_layer()

    def metadata() -> dict[str, str]:
        if not record:
            raise ValueError("no layer could be exported for MLX: "
                             + "; ".join(f"{r['name']} ({r['op']}): {r['reason']}"
                                         for r in refused))
        doc["layers"] = layers
        doc["unsupported"] = list(doc.get("unsupported", [])) + refused
        return to_metadata(record, doc)

    try:
        safetensors_io.write(out, tensors(), metadata)
    finally:
        progress.close()
    return {"tensors": record, **doc}
