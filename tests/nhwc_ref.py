"""Plain numpy NHWC reference layers that read weights in the MPS layouts.

Everything here is written from the MPS geometry of docs/layouts.md, not from any
framework: a convolution reads OHWI weights and centres the kernel window of output
pixel x on input pixel ``x*stride + offset.x`` with ``offset.x = (kW//2)*d - pad_left``.
All arithmetic is done in float64 so that the only rounding in a comparison against a
framework is the framework's own.
"""

from __future__ import annotations

import numpy as np


def _pair(v):
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def _out_size(size, pad_begin, pad_end, k, stride, dilation):
    return (size + pad_begin + pad_end - dilation * (k - 1) - 1) // stride + 1


def _tap_gather(x, axis, out_len, stride, offset, k_index, k_size, dilation):
    """Input pixels read by kernel tap ``k_index`` along ``axis`` (zero outside the image)."""
    n = x.shape[axis]
    src = np.arange(out_len) * stride + offset + (k_index - k_size // 2) * dilation
    valid = (src >= 0) & (src < n)
    taken = np.take(x, np.clip(src, 0, max(n - 1, 0)), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = out_len
    return taken * valid.reshape(shape)


def conv2d_nhwc(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Convolution of an NHWC image with OHWI weights ``w`` of shape (O, kH, kW, I/g).

    ``padding`` is an int, a pair (pad_y, pad_x) used on both sides, or a 4-tuple
    (top, left, bottom, right).  Returns float64 NHWC.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, h, wd, c = x.shape
    o, kh, kw, ig = w.shape
    sy, sx = _pair(stride)
    dy, dx = _pair(dilation)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        top, left, bottom, right = (int(p) for p in padding)
    else:
        top, left = _pair(padding)
        bottom, right = top, left
    if c != ig * groups or o % groups:
        raise ValueError("channel counts do not match groups")
    og = o // groups
    ho = _out_size(h, top, bottom, kh, sy, dy)
    wo = _out_size(wd, left, right, kw, sx, dx)
    # MPS geometry: offset = (k//2)*d - pad_begin.
    off_y = (kh // 2) * dy - top
    off_x = (kw // 2) * dx - left
    out = np.zeros((n, ho, wo, groups, og), dtype=np.float64)
    wg = w.reshape(groups, og, kh, kw, ig)
    for ky in range(kh):
        rows = _tap_gather(x, 1, ho, sy, off_y, ky, kh, dy)
        for kx in range(kw):
            patch = _tap_gather(rows, 2, wo, sx, off_x, kx, kw, dx)
            patch = patch.reshape(n, ho, wo, groups, ig)
            out += np.einsum("nhwgi,goi->nhwgo", patch, wg[:, :, ky, kx, :])
    out = out.reshape(n, ho, wo, o)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)
    return out


def conv_transpose2d_nhwc(
    x, w, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1
):
    """Transposed convolution of an NHWC image with MPS OHWI weights (already swapped and
    rotated by 180 degrees), shape (O, kH, kW, I/g).

    Implemented as: insert stride-1 zeros between input pixels, pad each side by
    ``(k-1)*d - pad`` (plus ``output_padding`` at the end), then an ordinary stride-1
    convolution with the given weights.  ``padding`` is an int, a pair (y, x), or a
    4-tuple (top, left, bottom, right).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, h, wd, c = x.shape
    _, kh, kw, _ = w.shape
    sy, sx = _pair(stride)
    dy, dx = _pair(dilation)
    opy, opx = _pair(output_padding)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        top, left, bottom, right = (int(p) for p in padding)
    else:
        top, left = _pair(padding)
        bottom, right = top, left
    up = np.zeros((n, (h - 1) * sy + 1, (wd - 1) * sx + 1, c), dtype=np.float64)
    up[:, ::sy, ::sx, :] = x
    pads = (
        (kh - 1) * dy - top,
        (kw - 1) * dx - left,
        (kh - 1) * dy - bottom + opy,
        (kw - 1) * dx - right + opx,
    )
    if min(pads) < 0:
        raise ValueError("padding larger than (k-1)*d is not supported by this reference")
    return conv2d_nhwc(up, w, bias, stride=1, padding=pads, dilation=(dy, dx), groups=groups)


def fc_hwc(x, w, bias=None):
    """Fully connected layer over an NHWC image ``x`` (N, H, W, C) with weights
    ``w[O][H][W][C]``; returns (N, O) float64."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    out = np.einsum("nhwc,ohwc->no", x, w)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)
    return out


def subpixel_1x1(v, r, c):
    """Sub-pixel convolution output of a 1x1 image with r*r*c channels ``v`` (N, r*r*c):
    ``dst[n][y][x][ch] = v[n][(y*r + x)*c + ch]``, written out element by element."""
    v = np.asarray(v)
    n = v.shape[0]
    dst = np.empty((n, r, r, c), dtype=v.dtype)
    for y in range(r):
        for x in range(r):
            for ch in range(c):
                dst[:, y, x, ch] = v[:, (y * r + x) * c + ch]
    return dst
