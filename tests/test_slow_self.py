"""Checks of the slow twins themselves against independent numpy one-liners.

test_twins.py trusts ``mpslayout.slow`` as the reference; these tests make sure a bug in
a twin cannot hide there, by recomputing each rule of docs/layouts.md with numpy's
transpose / reshape / pad instead of element loops. Data are integer-valued floats so
that numpy arithmetic (np.where, multiplication by masks) is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mpslayout import slow

RNG_SEED = 20240601


def _data(shape: tuple[int, ...], dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(RNG_SEED + seed)
    return rng.integers(-1000, 1000, size=shape).astype(dtype)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.flags.c_contiguous
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


def _np_slices(x_nchw: np.ndarray) -> np.ndarray:
    """(N*S, H, W, P) slice array by pad + reshape + transpose."""
    n, c, h, w = x_nchw.shape
    if c <= 2:
        return x_nchw.transpose(0, 2, 3, 1).reshape(n, h, w, c)
    s = -(-c // 4)
    padded = np.pad(x_nchw, ((0, 0), (0, 4 * s - c), (0, 0), (0, 0)))
    return padded.reshape(n, s, 4, h, w).transpose(0, 1, 3, 4, 2).reshape(n * s, h, w, 4)


def _np_unslice(t: np.ndarray, c: int) -> np.ndarray:
    """NCHW images from a slice array (inverse of _np_slices)."""
    ns, h, w, _ = t.shape
    if c <= 2:
        return t.reshape(ns, h, w, c).transpose(0, 3, 1, 2)
    s = -(-c // 4)
    return (
        t.reshape(ns // s, s, h, w, 4).transpose(0, 1, 4, 2, 3).reshape(ns // s, 4 * s, h, w)[:, :c]
    )


@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((2, 3, 4), (2, 0, 1)),
        ((5, 1, 7, 3), (-1, 0, -2, 1)),
        ((3,), (0,)),
        ((2, 0, 3), (1, 2, 0)),
        ((2, 1, 2, 1, 2, 1, 2, 3), (7, 6, 5, 4, 3, 2, 1, 0)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.float16, np.int64, np.bool_])
def test_permute_is_transpose(shape: tuple[int, ...], axes: tuple[int, ...], dtype: Any) -> None:
    x = _data(shape, dtype)[..., ::-1]
    _same(slow.permute(x, axes), np.ascontiguousarray(np.transpose(x, axes)))


def test_permute_keeps_nan_payloads_and_casts_like_astype() -> None:
    bits = np.array([0x7F800001, 0xFFC00123, 0x80000000, 0x00000001, 0x3F801000, 0x7F7FFFFF])
    x = bits.astype(np.uint32).view(np.float32).reshape(2, 3)
    got = slow.permute(x, (1, 0))
    assert got.view(np.uint32).tolist() == x.T.view(np.uint32).tolist()
    with np.errstate(all="ignore"):
        want = x.T.astype(np.float16)
    _same(slow.permute(x, (1, 0), dtype=np.float16), want)


def test_convert_plain_is_transpose() -> None:
    x = _data((2, 3, 4, 5))
    _same(slow.convert(x, "NCHW", "NHWC"), x.transpose(0, 2, 3, 1))
    _same(slow.convert(x, "NCHW", "WHCN"), x.transpose(3, 2, 1, 0))


@pytest.mark.parametrize("c", [1, 3, 4, 5, 8, 13])
def test_convert_nchw4c_is_pad_reshape_transpose(c: int) -> None:
    x = _data((2, c, 3, 5))
    s = -(-c // 4)
    want = np.pad(x, ((0, 0), (0, 4 * s - c), (0, 0), (0, 0)))
    want = want.reshape(2, s, 4, 3, 5).transpose(0, 1, 3, 4, 2)
    got = slow.convert(x, "NCHW", "NCHW4c")
    _same(got, want)
    _same(slow.convert(got, "NCHW4c", "NCHW", channels=c), x)
    _same(slow.convert(got, "NCHW4c", "NHWC", sizes={"C": c}), x.transpose(0, 2, 3, 1))


def test_convert_from_blocked_drops_padding_garbage() -> None:
    x = _data((1, 2, 3, 3, 4))  # "NCHW4c" with C=5: 3 padding channels hold garbage
    want = x.transpose(0, 1, 4, 2, 3).reshape(1, 8, 3, 3)[:, :5]
    _same(slow.convert(x, "NCHW4c", "NCHW", channels=5), want)


def test_convert_ohwi4o4i_is_pad_reshape_transpose() -> None:
    o, i, kh, kw = 6, 5, 3, 2
    w = _data((o, i, kh, kw))
    padded = np.pad(w, ((0, 2), (0, 3), (0, 0), (0, 0)))  # O -> 8, I -> 8
    want = padded.reshape(2, 4, 2, 4, kh, kw).transpose(0, 4, 5, 2, 1, 3)
    got = slow.convert(w, "OIHW", "OHWI4o4i")
    _same(got, want)
    _same(slow.convert(got, "OHWI4o4i", "OIHW", sizes={"O": o, "I": i}), w)


@pytest.mark.parametrize("shape", [(8, 3, 3, 5), (4, 7, 1, 1), (1, 1, 2, 3)])
def test_conv_weights_is_transpose(shape: tuple[int, int, int, int]) -> None:
    w = _data(shape)
    _same(slow.conv_weights(w), np.transpose(w, (0, 2, 3, 1)))
    k = _data(shape, seed=1)
    _same(slow.conv_weights(k, layout="HWIO"), np.transpose(k, (3, 0, 1, 2)))
    _same(slow.conv_weights(w.astype(np.float64)), np.transpose(w, (0, 2, 3, 1)))
    _same(
        slow.conv_weights(w, dtype=np.float16),
        np.transpose(w, (0, 2, 3, 1)).astype(np.float16),
    )
    _same(slow.conv_weights(w, groups=2 if shape[0] % 2 == 0 else 1), slow.conv_weights(w))


def test_depthwise_is_indexing() -> None:
    w = _data((6, 1, 3, 5))
    _same(slow.depthwise_weights(w), w[:, 0])
    d = _data((3, 5, 6, 1))
    _same(slow.depthwise_weights(d, layout="HWCM"), d[..., 0].transpose(2, 0, 1))


@pytest.mark.parametrize(("c", "m"), [(3, 1), (3, 2), (5, 3), (1, 4)])
def test_expand_depthwise_is_masked_broadcast(c: int, m: int) -> None:
    kh, kw = 3, 2
    w = _data((c * m, 1, kh, kw))
    owner = np.arange(c * m) // m  # PyTorch groups=C: output o reads input channel o // m
    mask = owner[:, None, None, None] == np.arange(c)[None, None, None, :]
    want = np.where(mask, w[:, 0, :, :, None], np.float32(0))
    _same(slow.expand_depthwise(w, in_channels=c), want)
    d = _data((kh, kw, c, m), seed=2)
    as_torch = d.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)  # o = c*m + j
    _same(slow.expand_depthwise(d, layout="HWCM"), slow.expand_depthwise(as_torch, in_channels=c))
    _same(slow.expand_depthwise(d, layout="HWCM"), _np_exp(d))


def _np_exp(d: np.ndarray) -> np.ndarray:
    kh, kw, c, m = d.shape
    out = np.zeros((c, m, kh, kw, c), d.dtype)
    for ch in range(c):
        out[ch, :, :, :, ch] = d[:, :, ch, :].transpose(2, 0, 1)
    return out.reshape(c * m, kh, kw, c)


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("flip", [True, False])
def test_conv_transpose_is_flip_and_transpose(groups: int, flip: bool) -> None:
    ig, og, kh, kw = 4, 5, 3, 2
    w = _data((groups * ig, og, kh, kw))
    src = w[:, :, ::-1, ::-1] if flip else w
    want = (
        src.reshape(groups, ig, og, kh, kw)
        .transpose(0, 2, 3, 4, 1)
        .reshape(groups * og, kh, kw, ig)
    )
    _same(slow.conv_transpose_weights(w, groups=groups, flip=flip), want)
    if groups == 1:
        k = _data((kh, kw, og, ig), seed=3)
        ksrc = k[::-1, ::-1] if flip else k
        _same(slow.conv_transpose_weights(k, layout="HWOI", flip=flip), ksrc.transpose(2, 0, 1, 3))


@pytest.mark.parametrize("chw", [(3, 2, 5), (1, 1, 7), (8, 3, 3)])
def test_fc_weights_is_reshape_transpose(chw: tuple[int, int, int]) -> None:
    c, h, w = chw
    o = 4
    lin = _data((o, c * h * w))
    want = lin.reshape(o, c, h, w).transpose(0, 2, 3, 1)
    _same(slow.fc_weights(lin, input_shape=chw), want)
    _same(slow.fc_weights(np.ascontiguousarray(lin.T), input_shape=chw, layout="IO"), want)
    _same(slow.fc_weights(lin, input_shape=(h, w, c), flatten="HWC"), lin.reshape(o, h, w, c))
    _same(slow.fc_weights(lin), lin.reshape(o, 1, 1, c * h * w))


@pytest.mark.parametrize("hwc", [(4, 4, 8), (2, 3, 5), (1, 1, 6), (3, 3, 1)])
@pytest.mark.parametrize("order", ["CHW", "HWC"])
def test_dense_reshape_is_reshape_transpose(hwc: tuple[int, int, int], order: str) -> None:
    h, w, c = hwc
    nn, i = h * w * c, 3
    wt = _data((nn, i))
    b = _data((nn,), np.float64, seed=4)
    if order == "CHW":
        rows = wt.reshape(c, h, w, i).transpose(1, 2, 0, 3).reshape(nn, i)
        b_hwc = b.reshape(c, h, w).transpose(1, 2, 0).reshape(nn)
    else:
        rows, b_hwc = wt, b
    got_w, got_b = slow.dense_reshape(wt, b, shape=hwc, order=order)
    _same(got_w, rows)
    assert got_b is not None
    _same(got_b, b_hwc.astype(np.float32))
    got_w, _ = slow.dense_reshape(np.ascontiguousarray(wt.T), shape=hwc, layout="IO", order=order)
    _same(got_w, rows)
    if h == w:
        got_w, _ = slow.dense_reshape(wt, shape=hwc, order=order, target="subpixel")
        _same(got_w, rows.reshape(nn, 1, 1, i))
    per_c = _data((c,), seed=5)
    const = np.broadcast_to(per_c, (h, w, c))
    b_const = (const if order == "HWC" else const.transpose(2, 0, 1)).reshape(nn)
    got_w, got_b = slow.dense_reshape(wt, b_const, shape=hwc, order=order, target="conv_transpose")
    _same(got_w, rows.reshape(h, w, c, i)[::-1, ::-1].transpose(2, 0, 1, 3))
    assert got_b is not None
    _same(got_b, per_c)


def test_bias_is_astype() -> None:
    b = _data((7,), np.float64)
    _same(slow.bias(b), b.astype(np.float32))
    _same(slow.bias(b[::-2]), b[::-2].astype(np.float32))
    f = _data((5,), np.float16)
    _same(slow.bias(f), f.astype(np.float32))


@pytest.mark.parametrize("c", [1, 2, 3, 4, 5, 7, 8, 9, 13])
@pytest.mark.parametrize("n", [1, 3])
def test_image_slices_is_pad_reshape_transpose(c: int, n: int) -> None:
    x = _data((n, c, 3, 5))
    want = _np_slices(x)
    _same(slow.image_slices(x), want)
    _same(slow.image_slices(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), layout="NHWC"), want)
    _same(slow.image_slices(x[0], layout="CHW"), _np_slices(x[:1]))
    _same(slow.image_slices(x[0].transpose(1, 2, 0), layout="HWC"), _np_slices(x[:1]))
    _same(slow.image_from_slices(want, channels=c), x)
    _same(slow.image_from_slices(want, channels=c, layout="NHWC"), x.transpose(0, 2, 3, 1))
    _same(slow.image_from_slices(want, channels=c, layout="NCHW"), _np_unslice(want, c))


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((1, 1, 128), (4, 4, 8)),
        ((2, 3, 5), (5, 3, 2)),
        ((4, 4, 3), (2, 8, 3)),
        ((3, 1, 2), (1, 1, 6)),
    ],
)
@pytest.mark.parametrize("order", ["HWC", "CHW"])
def test_reshape_slices_is_unslice_reshape_slice(
    src: tuple[int, int, int], dst: tuple[int, int, int], order: str
) -> None:
    n = 2
    h1, w1, c1 = src
    h2, w2, c2 = dst
    images = _data((n, c1, h1, w1))
    t = _np_slices(images)
    if order == "HWC":
        flat = images.transpose(0, 2, 3, 1).reshape(n, -1)
        out_nchw = flat.reshape(n, h2, w2, c2).transpose(0, 3, 1, 2)
    else:
        out_nchw = images.reshape(n, c2, h2, w2)
    _same(slow.reshape_slices(t, src=src, dst=dst, order=order), _np_slices(out_nchw))
    # the gather table gives the same answer on one image
    g = slow.reshape_gather(src, dst, order=order)
    one = t[: t.shape[0] // n]
    picked = np.where(g >= 0, one.reshape(-1)[np.maximum(g, 0)], np.float32(0))
    _same(slow.reshape_slices(one, src=src, dst=dst, order=order), picked)
