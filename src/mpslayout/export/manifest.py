"""The manifest: one JSON document describing every exported layer in MPS terms.

Also the MPS geometry that goes with a framework's padding (docs/layouts.md sections 1 and
3): a convolution's ``offset`` and a transposed convolution's ``kernelOffset``, and the
framework padding rules (ONNX/TF "SAME") they are computed from. The JSON Schema of the
document is ``docs/manifest.schema.json``.

The contract other tools (``mpslayout verify``, the Swift loader) read:

- every layer: ``source.tensors``, the list of every source tensor it carries, folded ones
  included (a batch norm's role -> tensor table, where there is one, is ``source.roles``).
- folding: a Conv/ConvTranspose/Gemm/MatMul layer that absorbed following per-channel
  Add/Sub/Mul/Div nodes lists them in ``source.fused`` as ``{"node", "op", "tensor"}`` in
  graph order (plus ``"reshape"``: the Reshape of a constant that gave the node its
  operand), and its ``source.output`` is the output of the last fused node.
- kind "arithmetic" (MPSCNNAdd/Subtract/Multiply/Divide with a constant operand): ``op``
  (add/subtract/multiply/divide), ``constant_operand`` (primary/secondary: Sub(c, x) has the
  constant as MPS's primary), ``constant_shape`` {height, width, channels} of the constant
  (1 where broadcast), ``broadcast_strides`` {x, y, feature_channels} (MPS's
  StrideInPixelsX/Y and StrideInFeatureChannels for the constant: 0 on a broadcast axis),
  ``files.constant`` (``STEM.constant.bin``, layout "image_slices": shape
  [ceil(C/4), H, W, 4], or [1, H, W, C] for C <= 2 as MPS's 1- and 2-channel textures
  store it), ``source`` {format, node, op, input (the other operand), output, tensors}.
- kind "tensor" (a learned tensor of an operator MPSCNN has no kernel for, for a custom
  Metal kernel): ``role`` (scale, shift, weight, slope, table, operand), ``files.tensor``
  (``STEM.tensor.bin``, the source's shape, layout "source", the export dtype for floats).
- top level ``inputs``: {graph input: [dims]} used at export (null for a dim still
  symbolic); ``options.input_dims`` records what was asked.
- ``skipped``/``unsupported`` entries carry ``tensors`` when they leave learned tensors
  behind; ``--strict`` fails exactly when one of those is carried by no layer.
"""

from __future__ import annotations

from typing import Any

FORMAT = "mpslayout-manifest"
VERSION = 1

Pair = tuple[int, int]


# ------------------------------------------------------------------------- geometry


def same_pads(size: int | None, k: int, stride: int, dilation: int,
              upper: bool) -> Pair | None:
    """(begin, end) padding of ONNX SAME_UPPER/SAME_LOWER and TF "same": the output has
    ceil(size / stride) pixels. None when it depends on an unknown ``size``."""
    eff = (k - 1) * dilation + 1
    if stride == 1:
        total = eff - 1
    elif size is None:
        return None
    else:
        total = max((-(-size // stride) - 1) * stride + eff - size, 0)
    begin = total // 2 if upper else total - total // 2
    return begin, total - begin


def conv_out(size: int | None, k: int, stride: int, dilation: int,
             pads: Pair) -> int | None:
    if size is None:
        return None
    return (size + pads[0] + pads[1] - dilation * (k - 1) - 1) // stride + 1


def transposed_out(size: int | None, k: int, stride: int, dilation: int, pads: Pair,
                   output_padding: int) -> int | None:
    """``(in - 1)*stride - pad_begin - pad_end + k + op`` (docs/layouts.md section 3,
    Transposed convolution), with the dilated kernel extent ``(k-1)*d + 1`` for k."""
    if size is None:
        return None
    return (size - 1) * stride - pads[0] - pads[1] + (k - 1) * dilation + 1 + output_padding


def conv_offset(k: int, dilation: int, pad_begin: int) -> int:
    """MPSCNNConvolution.offset along one axis: ``(k/2)*d - pad_begin`` (section 1)."""
    return (k // 2) * dilation - pad_begin


def kernel_offset(k: int, dilation: int, pad_begin: int) -> int:
    """MPSCNNConvolutionTranspose.kernelOffset: ``k/2 - k + 1 + pad_begin`` (section 3);
    with dilation d, ``(k/2)*d - (k-1)*d + pad_begin`` (our extension, same derivation)."""
    return (k // 2) * dilation - (k - 1) * dilation + pad_begin


def xy(x: int | None, y: int | None) -> dict[str, int] | None:
    return None if x is None or y is None else {"x": int(x), "y": int(y)}


def image(h: int | None, w: int | None, c: int | None) -> dict[str, Any] | None:
    """An image shape as MPS sees it (height, width, feature channels); unknown sizes null."""
    if h is None and w is None and c is None:
        return None
    return {"height": h, "width": w, "channels": c}


def conv_geometry(*, kh: int, kw: int, cin: int, cout: int, groups: int, stride: Pair,
                  dilation: Pair, pads: tuple[int, int, int, int] | None,
                  in_hw: tuple[int | None, int | None] = (None, None),
                  out_hw: tuple[int | None, int | None] = (None, None),
                  ) -> dict[str, Any]:
    """Manifest geometry of a convolution; ``pads`` is (top, left, bottom, right)."""
    g: dict[str, Any] = {
        "kernel": {"height": kh, "width": kw},
        "input_channels": cin,
        "output_channels": cout,
        "groups": groups,
        "strides": xy(stride[1], stride[0]),
        "dilations": xy(dilation[1], dilation[0]),
        "padding": None,
        "offset": None,
    }
    if pads is not None:
        top, left, bottom, right = pads
        g["padding"] = {"top": top, "left": left, "bottom": bottom, "right": right}
        g["offset"] = xy(conv_offset(kw, dilation[1], left), conv_offset(kh, dilation[0], top))
        if out_hw == (None, None) and None not in in_hw:
            out_hw = (conv_out(in_hw[0], kh, stride[0], dilation[0], (top, bottom)),
                      conv_out(in_hw[1], kw, stride[1], dilation[1], (left, right)))
    g["input_shape"] = image(in_hw[0], in_hw[1], cin)
    g["output_shape"] = image(out_hw[0], out_hw[1], cout)
    return g


def transposed_geometry(*, kh: int, kw: int, cin: int, cout: int, groups: int, stride: Pair,
                        dilation: Pair, pads: tuple[int, int, int, int] | None,
                        output_padding: Pair,
                        in_hw: tuple[int | None, int | None] = (None, None),
                        out_hw: tuple[int | None, int | None] = (None, None),
                        ) -> dict[str, Any]:
    g = conv_geometry(kh=kh, kw=kw, cin=cin, cout=cout, groups=groups, stride=stride,
                      dilation=dilation, pads=None, in_hw=in_hw, out_hw=out_hw)
    del g["offset"]
    g["kernel_offset"] = None
    g["output_padding"] = xy(output_padding[1], output_padding[0])
    if pads is not None:
        top, left, bottom, right = pads
        g["padding"] = {"top": top, "left": left, "bottom": bottom, "right": right}
        g["kernel_offset"] = xy(kernel_offset(kw, dilation[1], left),
                                kernel_offset(kh, dilation[0], top))
        if out_hw == (None, None) and None not in in_hw:
            out_hw = (
                transposed_out(in_hw[0], kh, stride[0], dilation[0], (top, bottom),
                               output_padding[0]),
                transposed_out(in_hw[1], kw, stride[1], dilation[1], (left, right),
                               output_padding[1]),
            )
            g["output_shape"] = image(out_hw[0], out_hw[1], cout)
    return g


def fc_geometry(*, n_in: int, n_out: int, source: tuple[int, int, int] | None,
                flatten: str) -> dict[str, Any]:
    """A fully connected layer reading an HxWxC image: a convolution whose kernel covers the
    whole image, with "valid" padding (offset = kernel/2). ``source`` is (H, W, C)."""
    h, w, c = source if source is not None else (1, 1, n_in)
    g = conv_geometry(kh=h, kw=w, cin=c, cout=n_out, groups=1, stride=(1, 1),
                      dilation=(1, 1), pads=(0, 0, 0, 0), in_hw=(h, w), out_hw=(1, 1))
    g["fully_connected"] = {"source_image": image(h, w, c),
                            "flatten_order": flatten if source is not None else None}
    return g


def add_reshape(geo: dict[str, Any], shape: tuple[int, int, int], order: str, target: str,
                alternatives: list[dict[str, Any]], node: str | None) -> None:
    """Record a reshape after a fully connected layer (and the sub-pixel view of it)."""
    h, w, c = shape
    geo["reshape"] = {"shape": image(h, w, c), "source_order": order, "target": target,
                      "alternatives": alternatives, "node": node}
    if target == "subpixel":
        geo["subpixel"] = {"factor": h, "image_channels": c, "source_mode": None}
        geo["output_shape"] = image(h, w, c)


# ------------------------------------------------------------------------- document


def layer_entry(layer: Any, files: dict[str, dict[str, Any]], dtype: str) -> dict[str, Any]:
    """The manifest record of one written layer (``layer`` is a layers.Layer)."""
    source = dict(layer.source)
    roles = source.pop("tensors", None)
    if isinstance(roles, dict):
        source["roles"] = roles
    source["tensors"] = layer.source_tensors()
    entry: dict[str, Any] = {
        "name": layer.name,
        "file_stem": layer.file_stem,
        "kind": layer.kind,
        "source": source,
    }
    entry.update(layer.geometry)
    if layer.kind != "batch_normalization":
        entry["weights_dtype"] = files.get("weights", {}).get("dtype", dtype)
    entry["files"] = files
    entry["notes"] = list(layer.notes)
    return entry


def build(*, source: dict[str, Any], dtype: str, options: dict[str, Any],
          layers: list[dict[str, Any]], skipped: list[dict[str, Any]],
          unsupported: list[dict[str, Any]], assumptions: list[str],
          version: str, inputs: dict[str, list[int | None]],
          **optional: Any) -> dict[str, Any]:
    """The manifest document; ``optional`` fields (``training_state``) go in only when
    given."""
    total = sum(f["bytes"] for entry in layers for f in entry["files"].values())
    return {
        "format": FORMAT,
        "version": VERSION,
        "generator": f"mpslayout {version}",
        "source": source,
        "weights_dtype": dtype,
        "byte_order": "little",
        "options": options,
        "inputs": inputs,
        "layers": layers,
        "skipped": skipped,
        "unsupported": unsupported,
        "assumptions": assumptions,
        **optional,
        "total_bytes": total,
    }
