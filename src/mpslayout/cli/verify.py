"""``mpslayout verify``: an export checked against its model (ONNX Runtime, Keras, or MLX's own ops
for an MLX export), with a progress line on a terminal."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .args import name_dims, named_files, unique


def _progress() -> Any:
    """A progress line on stderr, rewritten in place, when stderr is a terminal; else None."""
    if not sys.stderr.isatty():
        return None

    def show(line: str) -> None:
        print(f"\r\033[K{line[:120]}", end="", file=sys.stderr, flush=True)

    return show


def _end_progress(show: Any) -> None:
    if show is not None:
        print("\r\033[K", end="", file=sys.stderr, flush=True)


def _verify(args: argparse.Namespace) -> int:
    import json

    if args.outdir.endswith(".safetensors"):  # an MLX export: MLX's own ops run it
        from ..verify.mlx_target import verify_mlx

        given = named_files(args.input, "--input")
        if len(given) > 1 or args.expect:
            print("mpslayout: error: verify of an MLX export takes one --input and no "
                  "--expect", file=sys.stderr)
            return 2
        report = verify_mlx(args.outdir, args.model, input=next(iter(given.values()), None),
                            input_dims=unique(args.input_dims, "--input-dims"),
                            atol=args.atol, rtol=args.rtol, seed=args.seed)
        print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
        return report.exit_status

    from ..verify import Uncheckable
    from ..verify.keras_oracle import KerasMissing, is_keras_file, verify_keras

    given = named_files(args.input, "--input")
    expect = named_files(args.expect, "--expect")
    if not args.json:  # at once: the oracle alone can take a while on a large model
        print(f"mpslayout verify: {args.outdir} against {args.model}", flush=True)
    show = _progress()
    try:
        if is_keras_file(args.model):  # Keras itself is the oracle
            if len(given) > 1 or expect:
                print("mpslayout: error: verify --model MODEL.keras takes one --input and no "
                      "--expect", file=sys.stderr)
                return 2
            try:
                report = verify_keras(args.outdir, args.model,
                                      input=next(iter(given.values()), None),
                                      input_dims=unique(args.input_dims, "--input-dims"),
                                      atol=args.atol, rtol=args.rtol, storage=args.storage,
                                      seed=args.seed, allow_inexact=args.allow_inexact)
            except KerasMissing as e:
                print(f"mpslayout: error: {e}", file=sys.stderr)
                return 2
        else:
            from ..verify import verify  # here: only this command needs onnx/onnxruntime

            report = verify(
                args.outdir,
                args.model,
                input=given or None,
                input_dims=unique(args.input_dims, "--input-dims"),
                atol=args.atol,
                rtol=args.rtol,
                storage=args.storage,
                seed=args.seed,
                allow_inexact=args.allow_inexact,
                expect=expect or None,
                progress=show,
            )
    except Uncheckable as e:
        _end_progress(show)
        if args.json:
            print(json.dumps({"ok": False, "verdict": "nothing_checkable", "exit_status": 3,
                              "export": args.outdir, "model": args.model, "reason": str(e)},
                             indent=2))
        else:
            print(f"NOTHING CHECKABLE: {e}")
        return 3
    finally:
        _end_progress(show)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table(header=False))
    return report.exit_status


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check an export against its ONNX model, without a Mac",
        description="Run the exported layers (manifest.json and .bin files in OUTDIR) in "
        "mpslayout's numpy reference of the MPS kernels and the original model in ONNX "
        "Runtime on the same input, and compare every layer. Exit status: 0 every layer "
        "checked agrees within tolerance; 1 a divergence (or a layer that cannot run); 2 a "
        "usage error; 3 nothing checkable (no layer verify can run, or nothing to judge "
        "the model with); 130 interrupted.",
    )
    p.add_argument("outdir", metavar="OUTDIR", help="folder written by mpslayout export")
    p.add_argument(
        "--model", required=True, metavar="MODEL",
        help="the model the export came from: MODEL.onnx (ONNX Runtime is the oracle) or "
        "MODEL.keras / MODEL.h5 (Keras is, with --input in NHWC)"
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[NAME=]X.npy",
        help="the model's input, NCHW (NHWC for a Keras model); NAME= for a model with "
        "several inputs (repeatable; default: a seeded standard normal sample of the dims "
        "recorded at export or fixed in the model; a symbolic height or width is refused)",
    )
    p.add_argument(
        "--input-dims",
        type=name_dims,
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="dims of a random input NAME, when the model leaves them symbolic (repeatable; "
        "NHWC for a Keras model)",
    )
    p.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="the model's known output (.npy, or an ONNX TensorProto .pb as in ONNX's test "
        "data sets) on --input; NAME= for a model with several outputs (repeatable). ONNX "
        "Runtime's outputs are compared with it too, and where ONNX Runtime cannot run the "
        "model (even upgraded to a newer opset) it is the judge",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (1e-4)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (1e-4)")
    p.add_argument(
        "--storage",
        choices=("float32", "float16"),
        help="MPS image type (default: the export's weight type)",
    )
    p.add_argument(
        "--allow-inexact",
        action="store_true",
        help="pass layers the manifest declares MPS cannot compute (a GRU with the reset "
        "gate after the recurrent matrix: PyTorch's, Keras reset_after=True) when their "
        "files, run with the model's own cell, agree with the model",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_verify)
