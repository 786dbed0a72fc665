"""Argument types and checks shared by the subcommands (NAME=A,B,C, NAME=KIND, [NAME=]FILE)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def name_ints(text: str, count: int | None) -> tuple[str, tuple[int, ...]]:
    """NAME=A,B,... as (NAME, (A, B, ...)): ``count`` integers, or any number of positive
    ones when ``count`` is None."""
    name, sep, dims = text.rpartition("=")
    try:
        values = tuple(int(v) for v in dims.split(","))
    except ValueError:
        values = ()
    if count is not None:
        if not sep or not name or len(values) != count:
            raise argparse.ArgumentTypeError(
                f"expected NAME=A,B,C with {count} integers, got {text!r}")
    elif not sep or not name or not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected NAME=D0,D1,... with positive integers (e.g. x=1,3,224,224), got {text!r}")
    return name, values


def name_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """NAME=A,B,C: for --input-shape and --reshape."""
    return name_ints(text, 3)


def name_dims(text: str) -> tuple[str, tuple[int, ...]]:
    """NAME=D0,D1,... with positive ints: for --input-dims."""
    return name_ints(text, None)


def name_kind(text: str) -> tuple[str, str]:
    """NAME=KIND: for --kind."""
    from ..export.plan import WEIGHT_KINDS

    name, sep, kind = text.partition("=")
    if not sep or not name or kind not in WEIGHT_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=KIND with KIND one of {', '.join(WEIGHT_KINDS)} (e.g. "
            f"up.0=conv_transpose), got {text!r}")
    return name, kind


def unique(pairs: list[tuple[str, Any]], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out and out[name] != value:
            a, b = (list(v) if isinstance(v, tuple) else v for v in (out[name], value))
            raise ValueError(f"{flag} gives {name!r} twice: {a} and {b}")
        out[name] = value
    return out


def named_files(texts: Sequence[str], flag: str) -> dict[str | None, str]:
    """FILE, or NAME=FILE for a model with several inputs / outputs."""
    out: dict[str | None, str] = {}
    for text in texts:
        name, sep, path = text.partition("=")
        key = name if sep and not name.endswith((".npy", ".pb")) else None
        if key in out:
            raise ValueError(f"{flag} gives {key or 'the only tensor'!r} twice")
        out[key] = path if key is not None else text
    return out
