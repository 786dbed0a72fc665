"""A layer's geometry as the plan records it: kernel, channels, strides, the framework's
padding and the MPS terms that reproduce it (docs/layouts.md sections 1 and 3): a
convolution's ``offset`` and a transposed convolution's ``kernelOffset``, and the framework
padding rules (ONNX/TF "SAME") they are computed from. Sources build these records; the
MPS manifest carries them as they are (:mod:`.targets.mps.manifest`).
"""

from __future__ import annotations

from typing import Any

Pair = tuple[int, int]


# ------------------------------------------------------------------------- geometry


def same_pads(size: int | None, k: int, stride: int, dilation: int,
              upper: bool) -> Pair | None:
    """(begin, end) padding of ONNX SAME_UPPER/SAME_LOWER and TF "same": the output has
    ceil(size / stride) pixels. None when it depends on an unknown ``size``. A 1-pixel
    kernel (1x1, any stride) never pads: ``(ceil(n/s) - 1)*s + 1 <= n``."""
    eff = (k - 1) * dilation + 1
    if stride == 1 or eff == 1:
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
