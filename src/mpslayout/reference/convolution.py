"""Convolution kernels: MPSCNNConvolution, MPSCNNDepthWiseConvolution,
MPSCNNConvolutionTranspose, MPSCNNFullyConnected and the sub-pixel convolution, on
exported weights in MPS's layouts (docs/layouts.md sections 1 to 4 and 6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import (
    F8,
    Pair,
    _bias,
    _check_dest,
    _conv_index,
    _finish,
    _gather,
    _out_dtype,
    _padded,
    _pair,
    _transposed_index,
    _weights,
)
from .image import Image

__all__ = ["convolution", "depthwise_convolution", "fully_connected", "subpixel_convolution",
           "transposed_convolution"]


def _conv_core(src: Image, w: np.ndarray, *, groups: int, offset: Pair, strides: Pair,
               dilation: Pair, dest: Pair, transposed: bool,
               kernel_offset: Pair = (0, 0)) -> np.ndarray:
    """float64 NHWC sums of an OHWI convolution (no bias)."""
    o, kh, kw, ig = w.shape
    c = int(src.channels)
    if groups < 1 or o % groups or ig * groups != c:
        raise ValueError(f"weights {list(w.shape)} (OHWI) with groups={groups} do not read "
                         f"{c} channels: need I/g * g == C and g dividing O")
    og = o // groups
    x = _padded(src.nhwc())
    n, h, wd = src.batch, src.height, src.width
    ow, oh = dest
    acc = np.zeros((n * oh * ow, groups, og), F8)
    # weights per tap as (g, I/g, O/g)
    wt = w.reshape(groups, og, kh, kw, ig).transpose(2, 3, 0, 4, 1)

    def tap(out_n: int, in_n: int, k: int, axis: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        # axis 0 is x, 1 is y (MPS's order of strides, offsets and dilations)
        if transposed:
            return _transposed_index(out_n, in_n, k, strides[axis], kernel_offset[axis],
                                     dilation[axis], t)
        return _conv_index(out_n, in_n, k, strides[axis], offset[axis], dilation[axis], t)

    for ty in range(kh):
        iy, vy = tap(oh, h, kh, 1, ty)
        if not vy.any():
            continue
        for tx in range(kw):
            ix, vx = tap(ow, wd, kw, 0, tx)
            if not vx.any():
                continue
            slab = _gather(x, iy, ix).reshape(n * oh * ow, groups, ig).transpose(1, 0, 2)
            acc += np.matmul(slab, wt[ty, tx]).transpose(1, 0, 2)
    return acc.reshape(n, oh, ow, o)


def _add_bias(acc: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    return acc if b is None else acc + b



def convolution(src: Image, weights: Any, bias: Any = None, *, dest_size: Sequence[int],
                offset: Sequence[int] = (0, 0), strides: Sequence[int] = (1, 1),
                dilation: Sequence[int] = (1, 1), groups: int = 1,
                out_dtype: Any = None) -> Image:
    """MPSCNNConvolution: OHWI ``weights[O][kH][kW][I/g]``; destination pixel (x, y) sums
    the window centred on source (x*stride.x + offset.x, y*stride.y + offset.y), taps
    ``dilation`` apart, edge mode zero; channel group j reads channels j*I/g..(j+1)*I/g-1
    and writes j*O/g..(j+1)*O/g-1."""
    w = _weights(weights, 4, "weights")
    acc = _conv_core(src, w, groups=int(groups), offset=_pair(offset, "offset"),
                     strides=_pair(strides, "strides", 1),
                     dilation=_pair(dilation, "dilation", 1),
                     dest=_check_dest(dest_size), transposed=False)
    return _finish(_add_bias(acc, _bias(bias, w.shape[0])), _out_dtype(src, out_dtype))


def depthwise_convolution(src: Image, weights: Any, bias: Any = None, *,
                          dest_size: Sequence[int], offset: Sequence[int] = (0, 0),
                          strides: Sequence[int] = (1, 1), dilation: Sequence[int] = (1, 1),
                          out_dtype: Any = None) -> Image:
    """MPSCNNDepthWiseConvolution (channel multiplier 1): ``weights[C][kH][kW]``, channel c
    of the destination reads channel c of the source only; geometry as a convolution."""
    w = _weights(weights, 3, "weights")
    c, kh, kw = w.shape
    if c != int(src.channels):
        raise ValueError(f"depthwise weights have {c} channels, the image {src.channels}")
    off, st = _pair(offset, "offset"), _pair(strides, "strides", 1)
    dil, (ow, oh) = _pair(dilation, "dilation", 1), _check_dest(dest_size)
    x = _padded(src.nhwc())
    acc = np.zeros((src.batch, oh, ow, c), F8)
    for ty in range(kh):
        iy, vy = _conv_index(oh, src.height, kh, st[1], off[1], dil[1], ty)
        if not vy.any():
            continue
        for tx in range(kw):
            ix, vx = _conv_index(ow, src.width, kw, st[0], off[0], dil[0], tx)
            if vx.any():
                acc += _gather(x, iy, ix) * w[:, ty, tx]
    return _finish(_add_bias(acc, _bias(bias, c)), _out_dtype(src, out_dtype))


def transposed_convolution(src: Image, weights: Any, bias: Any = None, *,
                           dest_size: Sequence[int], kernel_offset: Sequence[int] = (0, 0),
                           strides: Sequence[int] = (1, 1), dilation: Sequence[int] = (1, 1),
                           groups: int = 1, out_dtype: Any = None) -> Image:
    """MPSCNNConvolutionTranspose: OHWI ``weights[O][kH][kW][I/g]`` used as given (no
    rotation here: the exporter rotated them, section 3). The source is dilated by the
    stride; destination pixel x reads its positions ``x + kernelOffset.x - (kW/2)*d + kx*d``
    (zero outside the source and between its pixels)."""
    w = _weights(weights, 4, "weights")
    acc = _conv_core(src, w, groups=int(groups), offset=(0, 0),
                     strides=_pair(strides, "strides", 1),
                     dilation=_pair(dilation, "dilation", 1), dest=_check_dest(dest_size),
                     transposed=True, kernel_offset=_pair(kernel_offset, "kernel_offset"))
    return _finish(_add_bias(acc, _bias(bias, w.shape[0])), _out_dtype(src, out_dtype))


def fully_connected(src: Image, weights: Any, bias: Any = None, *,
                    out_dtype: Any = None) -> Image:
    """MPSCNNFullyConnected: ``weights[O][H][W][C]`` cover the whole source image (section
    4); the destination is a 1x1 image of O channels: ``sum_{h,w,c} W[o][h][w][c] *
    src[h][w][c] + bias[o]``."""
    w = _weights(weights, 4, "weights")
    o = w.shape[0]
    if tuple(w.shape[1:]) != (src.height, src.width, int(src.channels)):
        raise ValueError(f"fully connected weights [O][H][W][C]={list(w.shape)} do not cover "
                         f"the {src.height}x{src.width}x{src.channels} source image")
    x = src.nhwc().reshape(src.batch, -1)
    acc = (x @ w.reshape(o, -1).T).reshape(src.batch, 1, 1, o)
    return _finish(_add_bias(acc, _bias(bias, o)), _out_dtype(src, out_dtype))


def subpixel_convolution(src: Image, weights: Any, bias: Any = None, *, factor: int,
                         dest_size: Sequence[int], offset: Sequence[int] = (0, 0),
                         strides: Sequence[int] = (1, 1), dilation: Sequence[int] = (1, 1),
                         out_dtype: Any = None) -> Image:
    """MPSCNNConvolution with MPSCNNSubPixelConvolutionDescriptor, factor r: a convolution
    with OHWI ``weights[r*r*C][kH][kW][I]`` whose output channel ``(i*r + j)*C + c`` at pixel
    (y, x) is written to pixel (y*r + i, x*r + j), channel c of the destination (section 6).
    ``dest_size`` is the destination's (width, height), a multiple of r."""
    r = int(factor)
    w = _weights(weights, 4, "weights")
    ow, oh = _check_dest(dest_size)
    if r < 1 or ow % r or oh % r or w.shape[0] % (r * r):
        raise ValueError(f"sub-pixel factor {r}: dest_size {ow}x{oh} and the {w.shape[0]} "
                         "output channels must be multiples of r and r*r")
    acc = _conv_core(src, w, groups=1, offset=_pair(offset, "offset"),
                     strides=_pair(strides, "strides", 1),
                     dilation=_pair(dilation, "dilation", 1), dest=(ow // r, oh // r),
                     transposed=False)
    acc = _add_bias(acc, _bias(bias, w.shape[0]))
    n, c = src.batch, w.shape[0] // (r * r)
    out = acc.reshape(n, oh // r, ow // r, r, r, c).transpose(0, 1, 3, 2, 4, 5)
    return _finish(out.reshape(n, oh, ow, c), _out_dtype(src, out_dtype))


