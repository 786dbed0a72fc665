"""``mpslayout bench``: the conversions timed against numpy, PyTorch and memcpy
(:mod:`mpslayout.bench` runs it)."""

from __future__ import annotations

import argparse
from typing import Any


def _bench(args: argparse.Namespace) -> int:
    from .. import bench  # imported here: only this command needs it

    return bench.run_from_args(args)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="time the conversions against numpy, PyTorch and memcpy",
        description="Time mpslayout's conversions against numpy, PyTorch and memcpy on real "
        "weight shapes (cold cache, interleaved runs). See bench/README.md in the repository.",
    )
    from ..bench.cli import add_arguments as add_bench_arguments  # the options bench/run.py has

    add_bench_arguments(p)
    p.set_defaults(func=_bench)
