"""The reference executor's kernels against PyTorch (CPU), on shapes drawn by hypothesis.

Every MPS-layout input is built here with plain numpy, from the formulas of docs/layouts.md
(never with mpslayout's converters): slices ``buf[n*S + s][y][x][k] = T[n][4*s + k][y][x]``,
OHWI weights ``transpose(0, 2, 3, 1)``, transposed weights flipped and swapped, fully
connected weights reordered CHW -> HWC, MPS offsets from framework paddings. float32
storage agrees to 1e-5; float16 storage to one float16 step of a float64 computation on
the same float16-rounded operands (the reference rounds once, where MPS stores).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mpslayout import reference as R  # noqa: E402

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
STORAGE = st.sampled_from([np.float32, np.float16])


# ----------------------------------------------------------------------- helpers


def slices(x_nchw: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Section 5 by hand: (N*S, H, W, P), padding channels zero."""
    n, c, h, w = x_nchw.shape
    if c <= 2:
        return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)).astype(dtype)
    s = -(-c // 4)
    buf = np.zeros((n * s, h, w, 4), dtype)
    for i in range(n):
        for f in range(c):
            buf[i * s + f // 4, :, :, f % 4] = x_nchw[i, f]
    return buf


def image(x_nchw: np.ndarray, dtype: type = np.float32) -> R.Image:
    return R.Image(slices(x_nchw, dtype), x_nchw.shape[1])


def unslice(img: R.Image) -> np.ndarray:
    """NCHW float64 from the slices, by hand."""
    c = img.channels
    if c <= 2:
        return img.data.transpose(0, 3, 1, 2).astype(np.float64)
    s = -(-c // 4)
    n = img.data.shape[0] // s
    out = np.zeros((n, c, img.height, img.width))
    for i in range(n):
        for f in range(c):
            out[i, f] = img.data[i * s + f // 4, :, :, f % 4]
    return out


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def operands(rng: np.random.Generator, dtype: type, *shapes: tuple[int, ...]) -> list:
    """Random arrays, rounded to the storage type (float16 weights and images)."""
    return [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in shapes]


def check(out: R.Image, expected: np.ndarray, dtype: type) -> None:
    """float32: 1e-5. float16: the float64 result rounded once, within one float16 step."""
    assert out.dtype == np.dtype(dtype)
    assert out.padding_is_zero()
    got = unslice(out)
    assert got.shape == expected.shape
    if dtype == np.float32:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    else:
        want = expected.astype(np.float16).astype(np.float64)
        step = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(got - want) <= step + 1e-7), np.abs(got - want).max()


@st.composite
def conv_case(draw: st.DrawFn, depthwise: bool = False) -> dict:
    g = draw(st.integers(1, 3))
    ig = 1 if depthwise else draw(st.integers(1, 4))
    og = 1 if depthwise else draw(st.integers(1, 4))
    if depthwise:
        g = draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sy, sx = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dy, dx = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pt, pb = draw(st.integers(0, kh - 1)), draw(st.integers(0, kh - 1))
    pl, pr = draw(st.integers(0, kw - 1)), draw(st.integers(0, kw - 1))
    h = draw(st.integers(max(1, dy * (kh - 1) + 1 - pt - pb), 10))
    w = draw(st.integers(max(1, dx * (kw - 1) + 1 - pl - pr), 10))
    return {"n": draw(st.integers(1, 2)), "g": g, "ig": ig, "og": og, "kh": kh, "kw": kw,
            "stride": (sy, sx), "dil": (dy, dx), "pads": (pt, pl, pb, pr), "h": h, "w": w,
            "seed": draw(st.integers(0, 2**31)), "dtype": draw(STORAGE)}


def mps_offset(k: int, d: int, pad: int) -> int:
    """docs/layouts.md section 1, Convolution weights: offset = (k/2)*d - pad_begin."""
    return (k // 2) * d - pad


# ----------------------------------------------------------------------- slices


@given(st.integers(1, 2), st.integers(1, 11), st.integers(1, 4), st.integers(1, 4))
@settings(max_examples=30, deadline=None)
def test_slice_layout_matches_section_5(n: int, c: int, h: int, w: int) -> None:
    x = np.random.default_rng(c).standard_normal((n, c, h, w)).astype(np.float32)
    img = R.Image.from_nchw(x)
    np.testing.assert_array_equal(img.data, slices(x))
    np.testing.assert_array_equal(img.nchw(), x)
    assert img.shape == (n, h, w, c)
    assert img.data.shape[3] == (c if c <= 2 else 4)


def test_image_rejects_bad_slices() -> None:
    with pytest.raises(ValueError, match="channels"):
        R.Image(np.zeros((3, 2, 2, 4), np.float32), 5)  # 5 channels need 2 slices per image
    with pytest.raises(ValueError, match="float16 or float32"):
        R.Image(np.zeros((1, 2, 2, 4)), 4)
    with pytest.raises(ValueError, match=r"\(N\*1, H, W, 2\)"):
        R.Image(np.zeros((1, 2, 2, 4), np.float32), 2)


def test_float16_storage_rounds_once() -> None:
    x = np.full((1, 1, 1, 1), 1.0 + 2.0**-11 + 2.0**-13)  # above the tie: rounds up
    img = R.Image.from_nhwc(x, np.float16)
    assert img.data.item() == np.float16(1.0 + 2.0**-10)


# ----------------------------------------------------------------------- convolutions


@given(conv_case())
@SETTINGS
def test_convolution_matches_torch(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    g, ig, og, kh, kw = case["g"], case["ig"], case["og"], case["kh"], case["kw"]
    (sy, sx), (dy, dx), (pt, pl, pb, pr) = case["stride"], case["dil"], case["pads"]
    dt = case["dtype"]
    x, wc, b = operands(rng, dt, (case["n"], g * ig, case["h"], case["w"]),
                        (g * og, ig, kh, kw), (g * og,))
    b = b.astype(np.float32)
    exp = F.conv2d(F.pad(t64(x), (pl, pr, pt, pb)), t64(wc), t64(b), stride=(sy, sx),
                   dilation=(dy, dx), groups=g).numpy()
    ohwi = np.ascontiguousarray(wc.transpose(0, 2, 3, 1))
    out = R.convolution(image(x, dt), ohwi, b, dest_size=(exp.shape[3], exp.shape[2]),
                        offset=(mps_offset(kw, dx, pl), mps_offset(kh, dy, pt)),
                        strides=(sx, sy), dilation=(dx, dy), groups=g)
    check(out, exp, dt)


@given(conv_case(depthwise=True))
@SETTINGS
def test_depthwise_matches_torch(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    c, kh, kw = case["g"], case["kh"], case["kw"]
    (sy, sx), (dy, dx), (pt, pl, pb, pr) = case["stride"], case["dil"], case["pads"]
    dt = case["dtype"]
    x, wc, b = operands(rng, dt, (case["n"], c, case["h"], case["w"]), (c, 1, kh, kw), (c,))
    exp = F.conv2d(F.pad(t64(x), (pl, pr, pt, pb)), t64(wc), t64(b), stride=(sy, sx),
                   dilation=(dy, dx), groups=c).numpy()
    out = R.depthwise_convolution(image(x, dt), wc[:, 0], b.astype(np.float32),
                                  dest_size=(exp.shape[3], exp.shape[2]),
                                  offset=(mps_offset(kw, dx, pl), mps_offset(kh, dy, pt)),
                                  strides=(sx, sy), dilation=(dx, dy))
    check(out, exp, dt)


@given(conv_case(), st.integers(0, 2), st.integers(0, 2))
@SETTINGS
def test_transposed_convolution_matches_torch(case: dict, opy: int, opx: int) -> None:
    rng = np.random.default_rng(case["seed"])
    g, ig, og, kh, kw = case["g"], case["ig"], case["og"], case["kh"], case["kw"]
    (sy, sx), (dy, dx), (pt, pl, pb, pr) = case["stride"], case["dil"], case["pads"]
    opy, opx = min(opy, sy - 1), min(opx, sx - 1)
    h, w, dt = case["h"], case["w"], case["dtype"]
    x, wt, b = operands(rng, dt, (case["n"], g * ig, h, w), (g * ig, og, kh, kw), (g * og,))
    oh = (h - 1) * sy - pt - pb + dy * (kh - 1) + 1 + opy
    ow = (w - 1) * sx - pl - pr + dx * (kw - 1) + 1 + opx
    if oh < 1 or ow < 1:
        return
    # asymmetric padding: the unpadded result, output_padding zeros, then the crop
    full = F.conv_transpose2d(t64(x), t64(wt), stride=(sy, sx), dilation=(dy, dx),
                              groups=g).numpy()
    full = np.pad(full, ((0, 0), (0, 0), (0, opy + pt), (0, opx + pl)))
    exp = full[:, :, pt:pt + oh, pl:pl + ow] + b.astype(np.float64)[:, None, None]
    # docs/layouts.md section 3, Transposed convolution:
    # dst[j*O/g + o][kh][kw][i] = Wt[j*I/g + i][o][kH-1-kh][kW-1-kw]
    ohwi = np.concatenate([wt[j * ig:(j + 1) * ig, :, ::-1, ::-1].transpose(1, 2, 3, 0)
                           for j in range(g)])
    # kernelOffset = (k/2)*d - (k-1)*d + pad_begin (k/2 - k + 1 + pad when d = 1)
    ko = ((kw // 2) * dx - (kw - 1) * dx + pl, (kh // 2) * dy - (kh - 1) * dy + pt)
    out = R.transposed_convolution(image(x, dt), ohwi, b.astype(np.float32),
                                   dest_size=(ow, oh), kernel_offset=ko, strides=(sx, sy),
                                   dilation=(dx, dy), groups=g)
    check(out, exp, dt)


@given(st.integers(1, 2), st.integers(1, 9), st.integers(1, 5), st.integers(1, 5),
       st.integers(1, 7), st.integers(0, 2**31), STORAGE)
@SETTINGS
def test_fully_connected_matches_torch_linear_after_flatten(
        n: int, c: int, h: int, w: int, o: int, seed: int, dt: type) -> None:
    rng = np.random.default_rng(seed)
    x, lin, b = operands(rng, dt, (n, c, h, w), (o, c * h * w), (o,))
    exp = F.linear(torch.flatten(t64(x), 1), t64(lin), t64(b)).numpy().reshape(n, o, 1, 1)
    # section 4: dst[o][h][w][c] = L[o][c*H*W + h*W + w]
    ohwc = np.ascontiguousarray(lin.reshape(o, c, h, w).transpose(0, 2, 3, 1))
    out = R.fully_connected(image(x, dt), ohwc, b.astype(np.float32))
    assert (out.height, out.width, out.channels) == (1, 1, o)
    check(out, exp, dt)


@given(st.integers(1, 2), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2**31),
       STORAGE)
@SETTINGS
def test_subpixel_matches_torch_pixel_shuffle(n: int, ci: int, c: int, r: int, k: int,
                                              h: int, stride: int, seed: int,
                                              dt: type) -> None:
    rng = np.random.default_rng(seed)
    pad = k // 2
    x, wc, b = operands(rng, dt, (n, ci, h + k, h + 2), (c * r * r, ci, k, k), (c * r * r,))
    conv = F.conv2d(t64(x), t64(wc), t64(b), stride=stride, padding=pad)
    exp = F.pixel_shuffle(conv, r).numpy()  # torch channel c*r*r + i*r + j
    # MPS order: output channel (i*r + j)*C + c
    perm = np.array([cc * r * r + i * r + j for i in range(r) for j in range(r)
                     for cc in range(c)])
    ohwi = np.ascontiguousarray(wc[perm].transpose(0, 2, 3, 1))
    out = R.subpixel_convolution(image(x, dt), ohwi, b[perm].astype(np.float32), factor=r,
                                 dest_size=(exp.shape[3], exp.shape[2]),
                                 offset=(mps_offset(k, 1, pad), mps_offset(k, 1, pad)),
                                 strides=(stride, stride))
    check(out, exp, dt)


def test_subpixel_of_a_1x1_image_is_section_6() -> None:
    """dst[y][x][c] = in[0][0][(y*r + x)*C + c] for a 1x1 identity kernel."""
    r, c = 2, 3
    x = np.arange(r * r * c, dtype=np.float32).reshape(1, r * r * c, 1, 1)
    eye = np.eye(r * r * c, dtype=np.float32).reshape(r * r * c, 1, 1, r * r * c)
    out = R.subpixel_convolution(image(x), eye, factor=r, dest_size=(r, r))
    got = unslice(out)[0].transpose(1, 2, 0)  # (y, x, c)
    for y in range(r):
        for xx in range(r):
            for cc in range(c):
                assert got[y, xx, cc] == (y * r + xx) * c + cc


# ----------------------------------------------------------------------- the rest


@given(st.integers(1, 2), st.integers(1, 12), st.integers(0, 2**31), STORAGE)
@SETTINGS
def test_reshape_is_hwc_order(n: int, c: int, seed: int, dt: type) -> None:
    rng = np.random.default_rng(seed)
    (x,) = operands(rng, dt, (n, c, 2, 3))
    h2, w2, c2 = 3, 1, 2 * c
    exp = x.transpose(0, 2, 3, 1).reshape(n, h2, w2, c2).transpose(0, 3, 1, 2)
    out = R.reshape(image(x, dt), (h2, w2, c2))
    np.testing.assert_array_equal(unslice(out), exp)
    with pytest.raises(ValueError, match="cannot reshape"):
        R.reshape(image(x, dt), (1, 1, 6 * c + 1))


NEURON_CASES = [
    ("relu", {}, F.relu),
    ("relu", {"a": 0.1}, lambda t: F.leaky_relu(t, 0.1)),
    ("linear", {"a": -2.0, "b": 0.5}, lambda t: -2.0 * t + 0.5),
    ("sigmoid", {}, torch.sigmoid),
    ("hard_sigmoid", {"a": 1 / 6, "b": 0.5}, F.hardsigmoid),  # PyTorch's slope 1/6
    ("hard_sigmoid", {"a": 0.2, "b": 0.5}, lambda t: torch.clamp(0.2 * t + 0.5, 0, 1)),
    ("tanh", {"a": 1.0, "b": 1.0}, torch.tanh),
    ("tanh", {"a": 1.7159, "b": 2 / 3}, lambda t: 1.7159 * torch.tanh(t * 2 / 3)),
    ("absolute", {}, torch.abs),
    ("soft_plus", {"a": 1.0, "b": 1.0}, F.softplus),
    ("soft_sign", {}, F.softsign),
    ("elu", {"a": 0.7}, lambda t: F.elu(t, 0.7)),
    ("relun", {"a": 0.0, "b": 6.0}, F.relu6),
    ("power", {"a": 1.0, "b": 0.0, "c": 2.0}, lambda t: t**2),
    ("exponential", {"a": 1.0, "b": 0.0, "c": -1.0}, torch.exp),
    ("exponential", {"a": 0.5, "b": 1.0, "c": 2.0}, lambda t: 2.0 ** (0.5 * t + 1)),
    ("logarithm", {"a": 1.0, "b": 20.0, "c": -1.0}, lambda t: torch.log(t + 20)),
    ("gelu", {}, F.gelu),
]


@pytest.mark.parametrize(("kind", "params", "fn"), NEURON_CASES,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(NEURON_CASES)])
@pytest.mark.parametrize("dt", [np.float32, np.float16])
def test_neurons_match_torch(kind: str, params: dict, fn: object, dt: type) -> None:
    rng = np.random.default_rng(7)
    (x,) = operands(rng, dt, (2, 5, 4, 3))
    x[0, 0, 0, :2] = [0.0, -0.0]
    exp = fn(t64(x * 4)).numpy()  # type: ignore[operator]
    out = R.neuron(image(x * 4, dt), kind, **params)
    check(out, exp, dt)  # also: sigmoid leaves padding channels zero
    with pytest.raises(ValueError, match="kind"):
        R.neuron(image(x, dt), "swish")


def test_prelu_has_one_slope_per_channel() -> None:
    x = np.random.default_rng(1).standard_normal((1, 5, 3, 3)).astype(np.float32)
    slope = np.linspace(-0.5, 0.5, 5).astype(np.float32)
    exp = F.prelu(t64(x), t64(slope)).numpy()
    check(R.neuron(image(x), "prelu", a=slope), exp, np.float32)
    with pytest.raises(ValueError, match="slopes"):
        R.neuron(image(x), "prelu", a=np.ones(3))


@given(st.integers(1, 2), st.integers(1, 9), st.integers(0, 2**31), STORAGE)
@SETTINGS
def test_batch_normalization_matches_torch(n: int, c: int, seed: int, dt: type) -> None:
    rng = np.random.default_rng(seed)
    x, gamma, beta, mean = operands(rng, dt, (n, c, 3, 4), (c,), (c,), (c,))
    var = rng.random(c).astype(np.float32) + 0.1
    exp = F.batch_norm(t64(x), t64(mean), t64(var), t64(gamma), t64(beta), eps=1e-3).numpy()
    out = R.batch_normalization(image(x, dt), gamma, beta, mean, var, epsilon=1e-3)
    check(out, exp, dt)


@given(st.sampled_from(["max", "average"]), st.integers(1, 4), st.integers(1, 4),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.data(), STORAGE)
@SETTINGS
def test_pooling_matches_torch(mode: str, kh: int, kw: int, sy: int, sx: int, d: int,
                               data: st.DataObject, dt: type) -> None:
    if mode == "average":
        d = 1  # torch's avg_pool2d has no dilation
    pt, pb = data.draw(st.integers(0, kh - 1)), data.draw(st.integers(0, kh - 1))
    pl, pr = data.draw(st.integers(0, kw - 1)), data.draw(st.integers(0, kw - 1))
    h = data.draw(st.integers(max(1, d * (kh - 1) + 1 - pt - pb), 9))
    w = data.draw(st.integers(max(1, d * (kw - 1) + 1 - pl - pr), 9))
    c = data.draw(st.integers(1, 6))
    (x,) = operands(np.random.default_rng(h * w + c), dt, (2, c, h, w))
    pads = (pl, pr, pt, pb)
    if mode == "max":  # asymmetric padding that never wins: -inf
        exp = F.max_pool2d(F.pad(t64(x), pads, value=-np.inf), (kh, kw), (sy, sx),
                           dilation=d).numpy()
    else:  # the mean of the taps inside the source
        total = F.avg_pool2d(F.pad(t64(x), pads), (kh, kw), (sy, sx)) * (kh * kw)
        count = F.avg_pool2d(F.pad(torch.ones_like(t64(x)), pads), (kh, kw), (sy, sx)) * (
            kh * kw)
        exp = (total / count).numpy()
    if exp.size == 0 or not np.isfinite(exp).all():
        return  # a window wholly in the padding: undefined in torch
    out = R.pooling(image(x, dt), mode, kernel=(kw, kh), dest_size=(exp.shape[3],
                    exp.shape[2]), offset=(mps_offset(kw, d, pl), mps_offset(kh, d, pt)),
                    strides=(sx, sy), dilation=(d, d))
    check(out, exp, dt)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_average_pooling_counting_zero_padding(ceil_mode: bool) -> None:
    x = np.random.default_rng(3).standard_normal((1, 5, 7, 6)).astype(np.float32)
    exp = F.avg_pool2d(t64(x), 3, 2, padding=1, count_include_pad=True,
                       ceil_mode=ceil_mode).numpy()
    out = R.pooling(image(x), "average", kernel=(3, 3),
                    dest_size=(exp.shape[3], exp.shape[2]), offset=(0, 0), strides=(2, 2),
                    zero_pad_size=(1, 1))
    check(out, exp, np.float32)


_TORCH_OPS = {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul,
              "divide": torch.div}


@given(st.sampled_from(sorted(_TORCH_OPS)), st.integers(1, 9), st.integers(1, 3),
       st.integers(1, 3), st.lists(st.booleans(), min_size=6, max_size=6),
       st.integers(0, 2**31), STORAGE)
@SETTINGS
def test_arithmetic_broadcasts_like_torch(op: str, c: int, h: int, w: int, ones: list[bool],
                                          seed: int, dt: type) -> None:
    """MPS strides (x, y, channels) of 0 read the operand's single column, row or channel:
    torch's broadcasting of a size-1 axis. Strides built here from the shapes."""
    rng = np.random.default_rng(seed)
    pa = (2, 1 if ones[0] else c, 1 if ones[1] else h, 1 if ones[2] else w)
    pb = (2, 1 if ones[3] else c, 1 if ones[4] else h, 1 if ones[5] else w)
    a, b = operands(rng, dt, pa, pb)
    if op == "divide":
        b = (np.abs(b) + 0.5).astype(dt)
    exp = _TORCH_OPS[op](t64(a), t64(b)).numpy()
    sa = (int(pa[3] > 1 or exp.shape[3] == 1), int(pa[2] > 1 or exp.shape[2] == 1),
          int(pa[1] > 1 or exp.shape[1] == 1))
    sb = (int(pb[3] > 1 or exp.shape[3] == 1), int(pb[2] > 1 or exp.shape[2] == 1),
          int(pb[1] > 1 or exp.shape[1] == 1))
    out = R.arithmetic(op, image(a, dt), image(b, dt), primary_strides=sa,
                       secondary_strides=sb)
    check(out, exp, dt)


def test_arithmetic_issue_case_and_refusals() -> None:
    """(1,1,1,96) + (1,2,2,96) NHWC, the broadcast the issue saw refused; a clamp; what
    MPS cannot express."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 96, 1, 1)).astype(np.float32)
    b = rng.standard_normal((1, 96, 2, 2)).astype(np.float32)
    out = R.arithmetic("add", image(a), image(b), primary_strides=(0, 0, 1))
    check(out, (t64(a) + t64(b)).numpy(), np.float32)
    clamped = R.arithmetic("multiply", image(b), image(b), minimum=-0.5, maximum=0.25)
    check(clamped, torch.clamp(t64(b) * t64(b), -0.5, 0.25).numpy(), np.float32)
    with pytest.raises(ValueError, match="0 or 1"):
        R.arithmetic("add", image(a), image(b), primary_strides=(2, 0, 1))
    with pytest.raises(ValueError, match="stride 1"):
        R.arithmetic("add", image(a), image(b))  # 1x1 read with stride 1 into 2x2
    with pytest.raises(ValueError, match="batch"):
        R.arithmetic("add", image(np.ones((2, 96, 2, 2), np.float32)), image(b))
    with pytest.raises(ValueError, match="op"):
        R.arithmetic("power", image(b), image(b))


@pytest.mark.parametrize("mode", ["nearest", "bilinear-aligned", "bilinear"])
@pytest.mark.parametrize(("sy", "sx"), [(2, 2), (3, 1), (1, 4)])
@pytest.mark.parametrize("dt", [np.float32, np.float16])
def test_upsampling_matches_torch(mode: str, sy: int, sx: int, dt: type) -> None:
    (x,) = operands(np.random.default_rng(sy * 7 + sx), dt, (2, 5, 3, 4))
    size = (3 * sy, 4 * sx)
    if mode == "nearest":
        exp = F.interpolate(t64(x), size=size, mode="nearest").numpy()
        out = R.upsampling(image(x, dt), "nearest", scale=(sx, sy))
    else:
        align = mode == "bilinear-aligned"
        exp = F.interpolate(t64(x), size=size, mode="bilinear", align_corners=align).numpy()
        out = R.upsampling(image(x, dt), "bilinear", scale=(sx, sy), align_corners=align)
    check(out, exp, dt)


@given(st.integers(1, 2), st.integers(1, 9), st.integers(0, 2**31), STORAGE)
@SETTINGS
def test_softmax_along_channels_matches_torch(n: int, c: int, seed: int, dt: type) -> None:
    (x,) = operands(np.random.default_rng(seed), dt, (n, c, 2, 3))
    check(R.softmax(image(x * 3, dt)), F.softmax(t64(x * 3), dim=1).numpy(), dt)
    check(R.log_softmax(image(x, dt)), F.log_softmax(t64(x), dim=1).numpy(), dt)


@given(st.integers(1, 2), st.integers(1, 9), st.integers(0, 2**31), STORAGE)
@SETTINGS
def test_instance_normalization_matches_torch(n: int, c: int, seed: int, dt: type) -> None:
    x, gamma, beta = operands(np.random.default_rng(seed), dt, (n, c, 3, 4), (c,), (c,))
    exp = F.instance_norm(t64(x), weight=t64(gamma), bias=t64(beta), eps=1e-3).numpy()
    check(R.instance_normalization(image(x, dt), gamma, beta, epsilon=1e-3), exp, dt)


@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), st.integers(1, 6), STORAGE)
@SETTINGS
def test_concatenate_slice_aligned(slices_per: list[int], last: int, dt: type) -> None:
    rng = np.random.default_rng(len(slices_per))
    parts = operands(rng, dt, *[(1, 4 * s, 2, 3) for s in slices_per], (1, last, 2, 3))
    out = R.concatenate([image(p, dt) for p in parts])
    check(out, np.concatenate(parts, axis=1).astype(np.float64), dt)


def test_concatenate_refuses_unaligned_channel_offsets() -> None:
    a = image(np.ones((1, 3, 2, 2), np.float32))
    b = image(np.ones((1, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="multiple of 4"):
        R.concatenate([a, b])  # b would start at channel 3
    with pytest.raises(ValueError, match="multiple of 4"):
        R.concatenate([b, a], offsets=[0, 6])
    assert R.concatenate([b, a]).channels == 7  # only the last may end mid-slice


def test_kernels_refuse_mismatched_weights() -> None:
    img = image(np.ones((1, 6, 4, 4), np.float32))
    with pytest.raises(ValueError, match="groups"):
        R.convolution(img, np.ones((4, 3, 3, 4), np.float32), dest_size=(4, 4), groups=2)
    with pytest.raises(ValueError, match="cover"):
        R.fully_connected(img, np.ones((2, 4, 4, 5), np.float32))
    with pytest.raises(ValueError, match="bias"):
        R.convolution(img, np.ones((4, 1, 1, 6), np.float32), np.ones(3), dest_size=(4, 4))


@pytest.mark.parametrize("mode", ["mean", "sum", "max", "min"])
@pytest.mark.parametrize("dt", [np.float32, np.float16])
def test_reduce_feature_channels_matches_torch(mode: str, dt: type) -> None:
    (x,) = operands(np.random.default_rng(11), dt, (2, 7, 3, 4))
    fn = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax, "min": torch.amin}[mode]
    exp = fn(t64(x), dim=1, keepdim=True).numpy()
    check(R.reduce_channels(image(x, dt), mode), exp, dt)
    with pytest.raises(ValueError, match="mode"):
        R.reduce_channels(image(x, dt), "median")


@pytest.mark.parametrize(("mode", "np_mode"), [("zero", "constant"), ("constant", "constant"),
                                               ("clamp", "edge"), ("mirror", "reflect")])
def test_pad_is_the_numpy_pad_of_its_docstring(mode: str, np_mode: str) -> None:
    """reference.padding.pad equals np.pad with the mode its docstring names, for pads up
    to the image size minus one on every side."""
    from mpslayout.reference import padding

    rng = np.random.default_rng(11)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(2, 7, 2))
        x = rng.standard_normal((2, h, w, 5)).astype(np.float32)
        before = (int(rng.integers(0, h)), int(rng.integers(0, w)))
        after = (int(rng.integers(0, h)), int(rng.integers(0, w)))
        got = padding.pad(R.Image.from_nhwc(x, np.float32), before, after, mode, 2.5).nhwc()
        kw = {"constant_values": 0.0 if mode == "zero" else 2.5} if np_mode == "constant" else {}
        want = np.pad(x, ((0, 0), (before[0], after[0]), (before[1], after[1]), (0, 0)),
                      np_mode, **kw)
        np.testing.assert_array_equal(got, want)
