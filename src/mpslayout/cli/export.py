"""``mpslayout export``: every layer of a model to MPS weight files and a manifest, or to one
.safetensors in MLX's layouts, with a summary of what was written and left out."""

from __future__ import annotations

import argparse
from typing import Any

from .args import name_dims, name_kind, name_shape, unique


def _export(args: argparse.Namespace) -> int:
    try:
        from ..export import export  # imported here: only this command needs it

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
            input_dims=unique(args.input_dims, "--input-dims"),
            kinds=unique(args.kind, "--kind"),
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
    from ..mlx import files

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


def add_parser(sub: Any) -> None:
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
        type=name_dims,
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
        type=name_shape,
        action="append",
        default=[],
        metavar="NAME=C,H,W",
        help="sizes of the image a fully connected layer reads through a flatten "
        "(needed for a state_dict, or where the graph does not say)",
    )
    p.add_argument(
        "--reshape",
        type=name_shape,
        action="append",
        default=[],
        metavar="NAME=H,W,C",
        help="sizes of a reshape after a fully connected layer (its neurons in "
        "PyTorch view(-1, C, H, W) order; Keras Reshape order for Keras files)",
    )
    p.add_argument(
        "--kind",
        type=name_kind,
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
