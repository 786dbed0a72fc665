"""The ``mpslayout`` command line: the parser and :func:`main`; each subcommand's options and its
run live in a module of their own (convert, info, bench, export, verify)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import bench, convert, export, info, verify

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpslayout",
        description="Convert tensors between framework layouts and what Apple's Metal "
        "Performance Shaders read (OHWI weights, 4-channel image slices, ...).",
        epilog="Examples:\n"
        "  mpslayout export model.onnx -o mps_weights --dtype float16\n"
        "  mpslayout verify mps_weights --model model.onnx\n"
        "  mpslayout convert conv.npy --from OIHW --to OHWI --dtype float16 -o conv.bin\n"
        "  mpslayout bench --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mpslayout {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (convert, info, bench, export, verify):  # the order of --help
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError) as e:
        print(f"mpslayout: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # export writes to a temporary folder it then removes
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
