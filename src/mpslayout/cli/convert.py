"""``mpslayout convert``: one .npy tensor from one layout to another."""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np

from ..layouts import convert

_DTYPES = ("float32", "float16", "bfloat16")


def _dtype(name: str | None) -> np.dtype | None:
    if name is None:
        return None
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError(
                "--dtype bfloat16 needs the ml_dtypes package: pip install ml_dtypes"
            ) from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _write_atomic(path: str, data: np.ndarray) -> None:
    """Write next to ``path`` and rename, so a failure never leaves a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mpslayout-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.endswith(".npy"):
                np.save(f, data, allow_pickle=False)
            else:  # raw little-endian bytes, what an MPS data source reads
                little = data.astype(data.dtype.newbyteorder("<"), copy=False)
                f.write(memoryview(np.ascontiguousarray(little)).cast("B"))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _convert(args: argparse.Namespace) -> int:
    x = np.load(args.input, mmap_mode="r", allow_pickle=False)
    result = convert(
        x,
        args.src,
        args.dst,
        channels=args.channels,
        dtype=_dtype(args.dtype),
        threads=args.threads,
    )
    _write_atomic(args.output, result)
    if not args.quiet:
        print(
            f"{args.input} {x.shape} {x.dtype} {args.src} -> {args.output} {result.shape} "
            f"{result.dtype} {args.dst} ({result.nbytes} bytes)"
        )
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert one .npy tensor between layouts",
        description="Convert one .npy tensor from one layout to another. Layouts use one "
        "uppercase letter per axis (OIHW, OHWI, HWIO, NCHW, NHWC); a destination may block "
        "an axis by 4 with zero padding (NCHW4c = MPSImage slices). OUT ending in .npy keeps "
        "a numpy header; any other name gets raw little-endian bytes, as MPS data sources read.",
    )
    p.add_argument("input", metavar="IN.npy")
    p.add_argument(
        "--from", dest="src", required=True, metavar="LAYOUT", help="layout of IN, e.g. OIHW"
    )
    p.add_argument(
        "--to", dest="dst", required=True, metavar="LAYOUT", help="layout to write, e.g. OHWI"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.bin (raw) or OUT.npy")
    p.add_argument("--dtype", choices=_DTYPES, help="output element type (default: keep)")
    p.add_argument("--channels", type=int, help="unblocked size when IN is blocked (e.g. NCHW4c)")
    p.add_argument("--threads", type=int, help="threads to use (default: all CPUs)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_convert)
