"""The MPSCNN kernels of the reference executor, written from MPS's definitions as
docs/layouts.md states them (geometry conventions in :mod:`mpslayout.reference`).

Each kernel reads its source image(s) as float64, forms every sum in float64, adds the
bias and rounds once to the destination's storage type (``out_dtype``, by default the
source image's): that is where MPS stores, so a float16 image is rounded between layers
and nowhere else. Loops run over kernel taps only; pixels and channels are numpy array
operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .image import Image, storage_dtype, to_slices

__all__ = [
    "NEURONS",
    "add",
    "batch_normalization",
    "concatenate",
    "convolution",
    "depthwise_convolution",
    "fully_connected",
    "neuron",
    "pooling",
    "reshape",
    "subpixel_convolution",
    "transposed_convolution",
]

Pair = tuple[int, int]
NEURONS = ("relu", "leaky_relu", "sigmoid", "tanh")

_F8 = np.float64


# ----------------------------------------------------------------------- helpers


def _pair(v: Any, name: str, minimum: int | None = None) -> Pair:
    try:
        x, y = (int(t) for t in v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (x, y) pair of ints, got {v!r}") from None
    if minimum is not None and (x < minimum or y < minimum):
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return x, y


def _out_dtype(src: Image, out_dtype: Any) -> np.dtype:
    return src.dtype if out_dtype is None else storage_dtype(out_dtype)


def _finish(acc: np.ndarray, out_dtype: np.dtype) -> Image:
    """Round a float64 NHWC result once to the storage type, padding channels zero."""
    return Image(to_slices(acc, out_dtype), int(acc.shape[3]))


def _weights(w: Any, ndim: int, name: str) -> np.ndarray:
    a = np.asarray(w)
    if a.ndim != ndim or a.dtype.kind != "f":
        raise ValueError(f"{name} must be a {ndim}-D float array, got {a.dtype}{list(a.shape)}")
    return a.astype(_F8)


def _bias(b: Any, n: int) -> np.ndarray | None:
    return None if b is None else _vector(b, n, "bias")


def _vector(v: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.shape != (n,) or a.dtype.kind != "f":
        raise ValueError(f"{name} must be a float vector of length {n}, got "
                         f"{a.dtype}{list(a.shape)}")
    return a.astype(_F8)


def _padded(x: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """NHWC with one extra row and column of ``fill``: the target of out-of-range taps."""
    n, h, w, c = x.shape
    xp = np.full((n, h + 1, w + 1, c), fill, x.dtype)
    xp[:, :h, :w] = x
    return xp


def _conv_index(n_out: int, n_in: int, k: int, stride: int, offset: int, dilation: int,
                tap: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index of ``tap`` for every destination index along one axis (section 1):
    ``o*stride + offset - (k/2)*dilation + tap*dilation``; out-of-range ones -> ``n_in``."""
    pos = np.arange(n_out) * stride + offset - (k // 2) * dilation + tap * dilation
    valid = (pos >= 0) & (pos < n_in)
    return np.where(valid, pos, n_in), valid


def _transposed_index(n_out: int, n_in: int, k: int, stride: int, kernel_offset: int,
                      dilation: int, tap: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index of ``tap`` in a transposed convolution: position
    ``o + kernelOffset - (k/2)*d + tap*d`` of the stride-dilated source, which holds
    source pixel ``p/stride`` where ``p % stride == 0`` and zeros elsewhere."""
    pos = np.arange(n_out) + kernel_offset - (k // 2) * dilation + tap * dilation
    src = pos // stride
    valid = (pos >= 0) & (pos % stride == 0) & (src < n_in)
    return np.where(valid, src, n_in), valid


def _gather(xp: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """(N, OH, OW, C) slab of padded NHWC ``xp`` at rows ``iy`` and columns ``ix``."""
    return xp[:, iy[:, None], ix[None, :], :]


def _check_dest(dest_size: Any) -> Pair:
    return _pair(dest_size, "dest_size", minimum=1)


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
    acc = np.zeros((n * oh * ow, groups, og), _F8)
    # weights per tap as (g, I/g, O/g)
    wt = w.reshape(groups, og, kh, kw, ig).transpose(2, 3, 0, 4, 1)
    for ty in range(kh):
        if transposed:
            iy, vy = _transposed_index(oh, h, kh, strides[1], kernel_offset[1],
                                       dilation[1], ty)
        else:
            iy, vy = _conv_index(oh, h, kh, strides[1], offset[1], dilation[1], ty)
        if not vy.any():
            continue
        for tx in range(kw):
            if transposed:
                ix, vx = _transposed_index(ow, wd, kw, strides[0], kernel_offset[0],
                                           dilation[0], tx)
            else:
                ix, vx = _conv_index(ow, wd, kw, strides[0], offset[0], dilation[0], tx)
            if not vx.any():
                continue
            slab = _gather(x, iy, ix).reshape(n * oh * ow, groups, ig).transpose(1, 0, 2)
            acc += np.matmul(slab, wt[ty, tx]).transpose(1, 0, 2)
    return acc.reshape(n, oh, ow, o)


def _add_bias(acc: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    return acc if b is None else acc + b


# ----------------------------------------------------------------------- convolutions


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
    acc = np.zeros((src.batch, oh, ow, c), _F8)
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


# ----------------------------------------------------------------------- other kernels


def reshape(src: Image, shape: Sequence[int], *, out_dtype: Any = None) -> Image:
    """MPSNNReshape to (H, W, C), element order channels fastest (HWC, section 6):
    destination (y, x, c) is value ``(y*W + x)*C + c`` of the source read in HWC order."""
    h, w, c = (int(v) for v in shape)
    if h * w * c != src.height * src.width * int(src.channels):
        raise ValueError(f"cannot reshape a {src.height}x{src.width}x{src.channels} image to "
                         f"{h}x{w}x{c}")
    return _finish(src.nhwc().reshape(src.batch, h, w, c), _out_dtype(src, out_dtype))


def neuron(src: Image, kind: str, *, alpha: float = 0.0, out_dtype: Any = None) -> Image:
    """MPSCNNNeuron: ``relu`` (MPSCNNNeuronReLU, a = 0), ``leaky_relu`` (ReLU with a =
    ``alpha``: x if x >= 0 else a*x), ``sigmoid`` (1/(1+e^-x)), ``tanh`` (a*tanh(b*x) with
    a = b = 1)."""
    x = src.nhwc()
    if kind == "relu":
        y = np.maximum(x, 0.0)
    elif kind == "leaky_relu":
        y = np.where(x >= 0, x, float(alpha) * x)
    elif kind == "sigmoid":
        y = 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+e^-x), without overflow
    elif kind == "tanh":
        y = np.tanh(x)
    else:
        raise ValueError(f"kind must be one of {NEURONS}, got {kind!r}")
    return _finish(y, _out_dtype(src, out_dtype))


def batch_normalization(src: Image, gamma: Any, beta: Any, mean: Any, variance: Any, *,
                        epsilon: float, out_dtype: Any = None) -> Image:
    """MPSCNNBatchNormalization (inference): ``gamma*(x - mean)/sqrt(variance + epsilon) +
    beta`` per channel."""
    c = int(src.channels)
    g, b, m, v = (_vector(t, c, name) for t, name in
                  ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (variance, "variance")))
    y = (src.nhwc() - m) / np.sqrt(v + float(epsilon)) * g + b
    return _finish(y, _out_dtype(src, out_dtype))


def pooling(src: Image, mode: str, *, kernel: Sequence[int], dest_size: Sequence[int],
            offset: Sequence[int] = (0, 0), strides: Sequence[int] = (1, 1),
            dilation: Sequence[int] = (1, 1), zero_pad_size: Sequence[int] = (0, 0),
            out_dtype: Any = None) -> Image:
    """MPSCNNPoolingMax / MPSCNNPoolingAverage over a ``kernel`` = (kW, kH) window placed
    like a convolution's (offset, strides, dilation). Taps outside the source are ignored:
    max of the taps inside, mean of the taps inside, except that an average also counts
    taps at most ``zero_pad_size`` = (x, y) pixels outside the source, as zeros."""
    if mode not in ("max", "average"):
        raise ValueError(f"mode must be 'max' or 'average', got {mode!r}")
    kw, kh = _pair(kernel, "kernel", 1)
    off, st = _pair(offset, "offset"), _pair(strides, "strides", 1)
    dil, (ow, oh) = _pair(dilation, "dilation", 1), _check_dest(dest_size)
    zx, zy = _pair(zero_pad_size, "zero_pad_size", 0)
    x = src.nhwc()
    n, c = src.batch, int(src.channels)
    xp = _padded(x, -np.inf if mode == "max" else 0.0)
    acc = np.full((n, oh, ow, c), -np.inf if mode == "max" else 0.0, _F8)
    count = np.zeros((oh, ow), _F8)
    for ty in range(kh):
        iy, vy = _conv_index(oh, src.height, kh, st[1], off[1], dil[1], ty)
        pos_y = np.arange(oh) * st[1] + off[1] - (kh // 2) * dil[1] + ty * dil[1]
        in_y = (pos_y >= -zy) & (pos_y < src.height + zy)
        for tx in range(kw):
            ix, vx = _conv_index(ow, src.width, kw, st[0], off[0], dil[0], tx)
            if mode == "max":
                if vy.any() and vx.any():
                    np.maximum(acc, _gather(xp, iy, ix), out=acc)
                continue
            pos_x = np.arange(ow) * st[0] + off[0] - (kw // 2) * dil[0] + tx * dil[0]
            in_x = (pos_x >= -zx) & (pos_x < src.width + zx)
            count += in_y[:, None] & in_x[None, :]
            if vy.any() and vx.any():
                acc += _gather(xp, iy, ix)
    if mode == "max":
        acc = np.where(np.isneginf(acc), 0.0, acc)  # a window wholly outside the source
    else:
        acc = acc / np.maximum(count, 1.0)[None, :, :, None]
    return _finish(acc, _out_dtype(src, out_dtype))


def add(a: Image, b: Image, *, out_dtype: Any = None) -> Image:
    """MPSCNNAdd of two images of the same size and channel count."""
    if a.shape != b.shape:
        raise ValueError(f"add needs images of the same (N, H, W, C), got {a.shape} and "
                         f"{b.shape}")
    return _finish(a.nhwc() + b.nhwc(), _out_dtype(a, out_dtype))


def concatenate(images: Sequence[Image], *, offsets: Sequence[int] | None = None,
                out_dtype: Any = None) -> Image:
    """Concatenation along channels, as MPS does it: each source is written into one
    destination at ``destinationFeatureChannelOffset`` (by default the running sum of the
    channel counts). MPS writes whole slices, so every offset must be a multiple of 4."""
    imgs = list(images)
    if not imgs:
        raise ValueError("concatenate needs at least one image")
    if offsets is None:
        offs, total = [], 0
        for im in imgs:
            offs.append(total)
            total += int(im.channels)
    else:
        offs = [int(o) for o in offsets]
        if len(offs) != len(imgs):
            raise ValueError(f"{len(offs)} offsets for {len(imgs)} images")
    for i, (im, off) in enumerate(zip(imgs, offs)):
        if off % 4:
            raise ValueError(
                f"image {i} would start at channel {off}: MPS writes a destination feature "
                "channel offset in whole 4-channel slices, so it must be a multiple of 4 "
                "(pad the channels before it to a multiple of 4)")
        if im.shape[:3] != imgs[0].shape[:3]:
            raise ValueError(f"image {i} is {im.shape[:3]} (N, H, W), image 0 "
                             f"{imgs[0].shape[:3]}")
    c = max(off + int(im.channels) for im, off in zip(imgs, offs))
    n, h, w = imgs[0].shape[:3]
    out = np.zeros((n, h, w, c), _F8)
    written = np.zeros(c, bool)
    for im, off in zip(imgs, offs):
        sl = slice(off, off + int(im.channels))
        if written[sl].any():
            raise ValueError(f"images overlap at channel offset {off}")
        written[sl] = True
        out[..., sl] = im.nhwc()
    return _finish(out, _out_dtype(imgs[0], out_dtype))
