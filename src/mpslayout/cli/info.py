"""``mpslayout info``: version, instruction set and threads."""

from __future__ import annotations

import argparse
from typing import Any

from .. import __version__, _core
from ..engine import get_threads


def _info(_: argparse.Namespace) -> int:
    print(f"mpslayout {__version__}")
    print(f"instruction set: {_core.isa()} (available: {', '.join(_core.available_isas())})")
    print(f"threads: {get_threads()}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("info", help="show version, instruction set and threads")
    p.set_defaults(func=_info)
