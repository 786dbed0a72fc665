"""The ``mpslayout`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import __version__, _core
from .engine import get_threads
from .layouts import convert

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


def _info(_: argparse.Namespace) -> int:
    print(f"mpslayout {__version__}")
    print(f"instruction set: {_core.isa()} (available: {', '.join(_core.available_isas())})")
    print(f"threads: {get_threads()}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench  # imported here: only this command needs it

    return bench.run_from_args(args)


def _name_ints(text: str, count: int | None) -> tuple[str, tuple[int, ...]]:
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


def _name_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """NAME=A,B,C: for --input-shape and --reshape."""
    return _name_ints(text, 3)


def _name_dims(text: str) -> tuple[str, tuple[int, ...]]:
    """NAME=D0,D1,... with positive ints: for --input-dims."""
    return _name_ints(text, None)


def _name_kind(text: str) -> tuple[str, str]:
    """NAME=KIND: for --kind."""
    from .export.plan import WEIGHT_KINDS

    name, sep, kind = text.partition("=")
    if not sep or not name or kind not in WEIGHT_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=KIND with KIND one of {', '.join(WEIGHT_KINDS)} (e.g. "
            f"up.0=conv_transpose), got {text!r}")
    return name, kind


def _unique(pairs: list[tuple[str, Any]], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out and out[name] != value:
            a, b = (list(v) if isinstance(v, tuple) else v for v in (out[name], value))
            raise ValueError(f"{flag} gives {name!r} twice: {a} and {b}")
        out[name] = value
    return out


def _export(args: argparse.Namespace) -> int:
    try:
        from .export import export  # imported here: only this command needs it

        doc = export(
            args.model,
            args.output,
            dtype=args.dtype,
            quantize=args.quantize,
            only=args.only,
            fold_bn=args.fold_bn,
            strict=args.strict,
            input_shapes=dict(args.input_shape),
            reshapes=dict(args.reshape),
            input_dims=_unique(args.input_dims, "--input-dims"),
            kinds=_unique(args.kind, "--kind"),
            progress=not args.quiet,
            force=args.force,
            target=args.target,
            bits=args.bits,
            group_size=args.group_size,
        )
    except ImportError as e:  # an optional reader's package is missing
        raise ValueError(str(e)) from None
    if args.target == "mlx":
        if not args.quiet:
            _mlx_summary(doc, args.output)
        return 0
    if not args.quiet:
        rows = [("layer", "kind", "weights (MPS layout)", "bytes")]
        for layer in doc["layers"]:
            w = layer["files"].get("weights") or next(iter(layer["files"].values()))
            shape = "x".join(map(str, w["shape"]))
            rows.append((layer["name"], layer["kind"], f"{shape} {w['layout']} {w['dtype']}",
                         str(sum(f["bytes"] for f in layer["files"].values()))))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip())
        for x in doc["unsupported"] + doc["skipped"]:
            left = f" [left behind: {', '.join(x['tensors'])}]" if x.get("tensors") else ""
            print(f"not exported: {x['name']} ({x['op']}): {x['reason']}{left}")
        for layer in doc["layers"]:  # exported, but MPS computes another function
            for note in layer["notes"]:
                if note.startswith("not exact: "):
                    print(f"not exact on MPS: {layer['name']}: {note[11:]}")
        guessed = [x["name"] for x in doc["layers"]
                   if any(n.startswith("read as ") for n in x["notes"])
                   and x["name"] not in doc["options"].get("kinds", {})]
        if guessed:  # a bare state_dict: the kind came from the weight's rank
            print(f"assumed from the weight's rank (a state_dict does not store the kind): "
                  f"{', '.join(guessed[:8])}{', ...' if len(guessed) > 8 else ''}; "
                  "--kind NAME=conv|conv_transpose|depthwise|linear where that is wrong")
        print(
            f"exported {len(doc['layers'])} layers ({doc['total_bytes']} bytes, "
            f"{doc['weights_dtype']} weights) to {args.output}"
        )
    return 0


def _mlx_summary(doc: dict, output: str) -> None:
    """What an MLX export wrote: one row per tensor, then what was left out."""
    from .mlx import files

    header, _ = files.read_header(output)
    rows = [("tensor", "kind", "shape (MLX layout)", "from")]
    for name, entry in doc["tensors"].items():
        info = header[name]
        rows.append((name, entry["kind"], "x".join(map(str, info["shape"])) + " "
                     + info["dtype"], entry["source_layout"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip())
    for x in doc.get("unsupported", []) + doc.get("skipped", []):
        left = f" [left behind: {', '.join(x['tensors'])}]" if x.get("tensors") else ""
        print(f"not exported: {x['name']} ({x['op']}): {x['reason']}{left}")
    for assumed in doc.get("assumptions", []):
        print(f"assumed: {assumed}")
    print(f"exported {len(doc['layers'])} layers ({len(doc['tensors'])} tensors, "
          f"{doc['weights_dtype']}) in MLX's layouts to {output}")


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


def _named_files(texts: Sequence[str], flag: str) -> dict[str | None, str]:
    """FILE, or NAME=FILE for a model with several inputs / outputs."""
    out: dict[str | None, str] = {}
    for text in texts:
        name, sep, path = text.partition("=")
        key = name if sep and not name.endswith((".npy", ".pb")) else None
        if key in out:
            raise ValueError(f"{flag} gives {key or 'the only tensor'!r} twice")
        out[key] = path if key is not None else text
    return out


def _verify(args: argparse.Namespace) -> int:
    import json

    if args.outdir.endswith(".safetensors"):  # an MLX export: MLX's own ops run it
        from .verify.mlx_target import verify_mlx

        given = _named_files(args.input, "--input")
        if len(given) > 1 or args.expect:
            print("mpslayout: error: verify of an MLX export takes one --input and no "
                  "--expect", file=sys.stderr)
            return 2
        report = verify_mlx(args.outdir, args.model, input=next(iter(given.values()), None),
                            input_dims=_unique(args.input_dims, "--input-dims"),
                            atol=args.atol, rtol=args.rtol, seed=args.seed)
        print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
        return report.exit_status

    from .verify import Uncheckable
    from .verify.keras_oracle import KerasMissing, is_keras_file, verify_keras

    given = _named_files(args.input, "--input")
    expect = _named_files(args.expect, "--expect")
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
                                      input_dims=_unique(args.input_dims, "--input-dims"),
                                      atol=args.atol, rtol=args.rtol, storage=args.storage,
                                      seed=args.seed, allow_inexact=args.allow_inexact)
            except KerasMissing as e:
                print(f"mpslayout: error: {e}", file=sys.stderr)
                return 2
        else:
            from .verify import verify  # here: only this command needs onnx/onnxruntime

            report = verify(
                args.outdir,
                args.model,
                input=given or None,
                input_dims=_unique(args.input_dims, "--input-dims"),
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

    p = sub.add_parser("info", help="show version, instruction set and threads")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "bench",
        help="time the conversions against numpy, PyTorch and memcpy",
        description="Time mpslayout's conversions against numpy, PyTorch and memcpy on real "
        "weight shapes (cold cache, interleaved runs). See bench/README.md in the repository.",
    )
    from .bench.cli import add_arguments as add_bench_arguments  # the options bench/run.py has

    add_bench_arguments(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "export",
        help="export every layer of a model to MPS weight files and a manifest",
        description="Export the weights of an ONNX model, a safetensors or PyTorch state_dict "
        "(.safetensors, .pt, .pth) or a Keras model (.keras, .h5) to OUTDIR: NAME.weights.bin "
        "in MPS layout, NAME.bias.bin (float32) and manifest.json with every layer's MPS "
        "geometry. OUTDIR appears only when everything is written.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="folder to create (--target mlx: the .safetensors file)")
    p.add_argument(
        "--target", choices=("mps", "mlx"), default="mps",
        help="mps (default): MPS weight files and manifest.json; mlx: one .safetensors in "
        "MLX's layouts (docs/mlx.md), --dtype float32|float16|bfloat16",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "uint8", "bfloat16"),
        default="float32",
        help="weight element type (default float32; biases are always float32; uint8: "
        "8-bit convolution / fully connected weights, see --quantize)",
    )
    p.add_argument(
        "--quantize",
        choices=("linear", "lut", "affine"),
        default="linear",
        help="with --dtype uint8: per-output-channel ranges (linear, default) or one "
        "256-entry lookup table per layer (lut); with --target mlx: affine, MLX's "
        "quantization of Linear and Embedding weights (--bits, --group-size)",
    )
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 5, 6, 8),
                   help="--quantize affine: bits per weight (default 4)")
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128),
                   help="--quantize affine: weights per scale and bias (default 64)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="export only these layers")
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold each BatchNormalization into the layer before it",
    )
    p.add_argument(
        "--strict", action="store_true",
        help="fail if a learned tensor is left behind (naming each tensor and node)",
    )
    p.add_argument(
        "--input-dims",
        type=_name_dims,
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="fix an ONNX graph input's dims (repeatable), e.g. x=1,3,48,192 (a Keras model's "
        "input layer: NHWC, e.g. input_1=1,48,192,3): shape inference "
        "then gives what symbolic dims hide (a Linear after a flatten, SAME padding, image "
        "sizes); the manifest records them for verify",
    )
    p.add_argument(
        "--input-shape",
        type=_name_shape,
        action="append",
        default=[],
        metavar="NAME=C,H,W",
        help="sizes of the image a fully connected layer reads through a flatten "
        "(needed for a state_dict, or where the graph does not say)",
    )
    p.add_argument(
        "--reshape",
        type=_name_shape,
        action="append",
        default=[],
        metavar="NAME=H,W,C",
        help="sizes of a reshape after a fully connected layer (its neurons in "
        "PyTorch view(-1, C, H, W) order; Keras Reshape order for Keras files)",
    )
    p.add_argument(
        "--kind",
        type=_name_kind,
        action="append",
        default=[],
        metavar="NAME=KIND",
        help="what a bare state_dict's weight is (repeatable; NAME as in --input-shape): conv, "
        "conv_transpose, depthwise or linear; without it a 3-D/4-D weight is a convolution "
        "and a 2-D one a Linear",
    )
    p.add_argument(
        "--force", action="store_true", help="replace OUTDIR if it is empty or an earlier export"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=_export)

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
        type=_name_dims,
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
