"""A node's attributes as the ONNX readers read them: each with the type ONNX defines for
it, a file that stores another type refused, naming the node and the attribute."""

from __future__ import annotations

from typing import Any

from ...attrs import as_float, as_int, as_pair, as_text

__all__ = ["Attrs"]

# AttributeProto.AttributeType values this reader reads, and their names for messages
_FLOAT, _INT, _STRING, _INTS = 1, 2, 3, 7
_TYPE_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH",
               6: "FLOATS", 7: "INTS", 8: "STRINGS"}


class Attrs:
    """A node's attributes, each read with the type ONNX defines for it; a file that stores
    another type (or none) is refused, naming the node and the attribute."""

    def __init__(self, node: Any, name: str) -> None:
        self.where = f"node {name!r}"
        self.raw = {a.name: a for a in node.attribute}

    def _get(self, key: str, kind: int) -> Any:
        a = self.raw.get(key)
        if a is None:
            return None
        if a.type != kind:
            raise ValueError(f"{self.where}: attribute {key!r} has type "
                             f"{_TYPE_NAMES.get(a.type, a.type)}, ONNX defines it as "
                             f"{_TYPE_NAMES[kind]} (a malformed model)")
        return {_FLOAT: a.f, _INT: a.i, _STRING: a.s, _INTS: list(a.ints)}[kind]

    def int(self, key: str, default: int, *, minimum: int | None = None) -> int:
        v = self._get(key, _INT)
        return default if v is None else as_int(v, f"{self.where}: {key}", minimum=minimum)

    def ints(self, key: str) -> list[int] | None:
        return self._get(key, _INTS)

    def pair(self, key: str, default: int, *, minimum: int | None = None) -> tuple[int, int]:
        v = self._get(key, _INTS)
        if v is None:
            return default, default
        return as_pair(v, f"{self.where}: {key}", minimum=minimum)

    def float(self, key: str, default: float) -> float:
        v = self._get(key, _FLOAT)
        return default if v is None else as_float(v, f"{self.where}: {key}")

    def text(self, key: str, default: str) -> str:
        v = self._get(key, _STRING)
        return default if v is None else as_text(v, f"{self.where}: {key}")
