"""The MPS target's manifest: one JSON document describing every exported layer in MPS
terms (the geometry each layer carries is :mod:`mpslayout.export.geometry`). The JSON
Schema of the document is ``docs/manifest.schema.json``.

The contract other tools (``mpslayout verify``, the Swift loader) read:

- every layer: ``source.tensors``, the list of every source tensor it carries, folded ones
  included (a batch norm's role -> tensor table, where there is one, is ``source.roles``).
- folding: a Conv/ConvTranspose/Gemm/MatMul layer that absorbed following per-channel
  Add/Sub/Mul/Div nodes lists them in ``source.fused`` as ``{"node", "op", "tensor"}`` in
  graph order (plus ``"reshape"``: the Reshape of a constant that gave the node its
  operand), and its ``source.output`` is the output of the last fused node.
- kind "arithmetic" (MPSCNNAdd/Subtract/Multiply/Divide with a constant operand): ``op``
  (add/subtract/multiply/divide), ``constant_operand`` (primary/secondary: Sub(c, x) has the
  constant as MPS's primary), ``constant_shape`` {height, width, channels} of the constant
  (1 where broadcast), ``broadcast_strides`` {x, y, feature_channels} (MPS's
  StrideInPixelsX/Y and StrideInFeatureChannels for the constant: 0 on a broadcast axis),
  ``files.constant`` (``STEM.constant.bin``, layout "image_slices": shape
  [ceil(C/4), H, W, 4], or [1, H, W, C] for C <= 2 as MPS's 1- and 2-channel textures
  store it), ``source`` {format, node, op, input (the other operand), output, tensors}.
- kind "tensor" (a learned tensor of an operator MPSCNN has no kernel for, for a custom
  Metal kernel): ``role`` (scale, shift, weight, slope, table, operand), ``files.tensor``
  (``STEM.tensor.bin``, the source's shape, layout "source", the export dtype for floats).
- top level ``weights_dtype``: the weight type every layer shares, else the float type
  asked for; ``layer_weights_dtypes`` counts the layers of each weight type.
- top level ``inputs``: {graph input: [dims]} used at export (null for a dim still
  symbolic); ``options.input_dims`` records what was asked.
- ``skipped``/``unsupported`` entries carry ``tensors`` when they leave learned tensors
  behind; ``--strict`` fails exactly when one of those is carried by no layer.
"""

from __future__ import annotations

from typing import Any

FORMAT = "mpslayout-manifest"
VERSION = 1


# ------------------------------------------------------------------------- document


def layer_entry(layer: Any, files: dict[str, dict[str, Any]], dtype: str) -> dict[str, Any]:
    """The manifest record of one written layer (``layer`` is a layers.Layer)."""
    source = dict(layer.source)
    roles = source.pop("tensors", None)
    if isinstance(roles, dict):
        source["roles"] = roles
    source["tensors"] = layer.source_tensors()
    entry: dict[str, Any] = {
        "name": layer.name,
        "file_stem": layer.file_stem,
        "kind": layer.kind,
        "source": source,
    }
    entry.update(layer.geometry)
    if layer.kind != "batch_normalization":
        entry["weights_dtype"] = files.get("weights", {}).get("dtype", dtype)
    entry["files"] = files
    entry["notes"] = list(layer.notes)
    return entry


def build(*, source: dict[str, Any], dtype: str, options: dict[str, Any],
          layers: list[dict[str, Any]], skipped: list[dict[str, Any]],
          unsupported: list[dict[str, Any]], assumptions: list[str],
          version: str, inputs: dict[str, list[int | None]],
          **optional: Any) -> dict[str, Any]:
    """The manifest document; ``optional`` fields (``training_state``) go in only when
    given."""
    total = sum(f["bytes"] for entry in layers for f in entry["files"].values())
    # the document agrees with itself: every layer's weight type counted, and the top
    # level names the one they all share (8-bit source weights kept as they are make an
    # export asked for float32 a uint8 one), else the float type asked for
    counts: dict[str, int] = {}
    for entry in layers:
        if "weights_dtype" in entry:
            counts[entry["weights_dtype"]] = counts.get(entry["weights_dtype"], 0) + 1
    if len(counts) == 1:
        dtype = next(iter(counts))
    return {
        "format": FORMAT,
        "version": VERSION,
        "generator": f"mpslayout {version}",
        "source": source,
        "weights_dtype": dtype,
        "layer_weights_dtypes": dict(sorted(counts.items())),
        "byte_order": "little",
        "options": options,
        "inputs": inputs,
        "layers": layers,
        "skipped": skipped,
        "unsupported": unsupported,
        "assumptions": assumptions,
        **optional,
        "total_bytes": total,
    }
