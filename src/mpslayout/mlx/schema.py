"""The one place that says how a file (or a dict) records that its tensors are in MLX's
layout: the safetensors ``__metadata__`` entry ``"mpslayout"`` and the :class:`Weights`
dict that carries the same facts in memory. The export's MLX target reuses both.

Schema (``__metadata__["mpslayout"]``, a JSON string; safetensors metadata is str -> str)::

    {"format": "mlx", "version": 1,
     "tensors": {NAME: {"kind": KIND, "source_layout": LAYOUT, "layout": "mlx"}, ...},
     ...free facts (str keys, JSON values): "source", "flatten", "assumed", ...}

``kind`` is the MLX module kind the tensor belongs to (:data:`KINDS`), ``source_layout``
the layout it was converted from (``"OIHW"``, ``"torch"``, ``"mlx"`` for a tensor that was
already MLX's, ...). A reader treats a file as MLX-layout when ``format == "mlx"`` and
``version`` is one it knows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["FORMAT", "KEY", "KINDS", "VERSION", "Weights", "from_metadata", "to_metadata"]

KEY = "mpslayout"
FORMAT = "mlx"
VERSION = 1
LAYOUT = "mlx"
KINDS = ("conv", "conv_transpose", "linear", "lstm", "gru", "rnn", "norm", "prelu",
         "embedding", "tensor")


class Weights(dict):  # type: ignore[type-arg]
    """A ``{name: array}`` dict in MLX's layout, with what is known of it.

    ``tensors``: ``{name: {"kind", "source_layout", "layout"}}``; ``facts``: free facts;
    ``unused``: source names nothing consumed; ``missing``: MLX parameters no source tensor
    filled; ``ignored``: source names dropped on purpose (PyTorch ``num_batches_tracked``).
    A dict marked so is never converted again by :func:`mpslayout.mlx.sanitize`.
    """

    def __init__(self, *args: Any, tensors: Mapping[str, Mapping[str, str]] | None = None,
                 facts: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tensors: dict[str, dict[str, str]] = {k: dict(v) for k, v in
                                                   (tensors or {}).items()}
        self.facts: dict[str, Any] = dict(facts or {})
        self.unused: list[str] = []
        self.missing: list[str] = []
        self.ignored: list[str] = []

    @property
    def is_mlx(self) -> bool:
        """True when every tensor is recorded as MLX layout."""
        return all(self.tensors.get(k, {}).get("layout") == LAYOUT for k in self)


def tensor_entry(kind: str, source_layout: str) -> dict[str, str]:
    return {"kind": kind, "source_layout": source_layout, "layout": LAYOUT}


def to_metadata(tensors: Mapping[str, Mapping[str, str]], facts: Mapping[str, Any] | None = None
                ) -> dict[str, str]:
    """The safetensors ``__metadata__`` (str -> str) recording ``tensors`` and ``facts``."""
    doc: dict[str, Any] = {}
    for k, v in (facts or {}).items():
        if k in ("format", "version", "tensors"):
            raise ValueError(f"metadata fact {k!r} is reserved by the mpslayout schema")
        doc[str(k)] = v
    doc.update({"format": FORMAT, "version": VERSION,
                "tensors": {n: dict(e) for n, e in tensors.items()}})
    return {KEY: json.dumps(doc, sort_keys=True)}


def from_metadata(meta: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The parsed ``"mpslayout"`` entry, or None when the file is not one of ours.

    A file that claims the format with a version or tensor table this reader does not
    know is an error rather than a guess.
    """
    if not meta or KEY not in meta:
        return None
    try:
        doc = json.loads(meta[KEY])
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata {KEY!r} is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    if doc.get("version") != VERSION:
        raise ValueError(f"metadata {KEY!r} has version {doc.get('version')!r}; this "
                         f"mpslayout reads version {VERSION}")
    if not isinstance(doc.get("tensors"), dict):
        raise ValueError(f"metadata {KEY!r} has no 'tensors' table")
    return doc
