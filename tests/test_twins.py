"""Property tests: every public mpslayout converter equals its slow twin bit for bit.

The twins in ``mpslayout.slow`` are plain Python loops over the index formulas of
docs/layouts.md. Inputs are random bits (NaN payloads, signalling NaNs, infinities, signed
zeros, subnormals, rounding ties) in awkward memory layouts (steps, negative steps,
permuted storage, zero strides, unaligned buffers, Python lists), so the fast path must
move bits, not values, and must honour any strides. Results are compared byte for byte,
together with dtype, shape and C-contiguity; ``out=`` and ``threads=`` are drawn too.
The end of the file holds hand-computed values straight from docs/layouts.md, checked
against both implementations, and the rejections both must agree on.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st
from strategies import (
    BFLOAT16,
    F16,
    F32,
    F64,
    MPS_DTYPES,
    arrays,
    dims,
    fit_budget,
    generic_dtypes,
    mps_dtypes,
    prod,
    random_values,
    relayout,
    shapes,
)

import mpslayout
from mpslayout import slow

WARNING = getattr(mpslayout, "MPSLayoutWarning", UserWarning)
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
THREADS = st.sampled_from([None, 1, 2, 3])
KERNEL = dims(max_value=5)  # kernel height / width
# no "explain" phase: it writes patch files next to the tests and, on failure, trips a
# DeprecationWarning inside the hypothesis pytest plugin (fatal under filterwarnings=error)
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
)

Call = tuple[tuple[Any, ...], dict[str, Any]]


# --------------------------------------------------------------------------- helpers


def _flat_bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(UINT[a.dtype.itemsize])


def assert_bit_equal(got: Any, want: np.ndarray) -> None:
    """Same type, dtype, shape, C-contiguity and bytes (NaN payloads included)."""
    assert type(got) is np.ndarray, type(got)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.flags.c_contiguous
    if got.tobytes() != want.tobytes():
        g, w = _flat_bits(got), _flat_bits(want)
        bad = np.flatnonzero(g != w)
        first = tuple(int(i) for i in np.unravel_index(bad[0], want.shape))
        pytest.fail(
            f"{bad.size} of {want.size} elements differ; first at {first}: "
            f"got bits {int(g[bad[0]]):#x}, want {int(w[bad[0]]):#x}"
        )


@contextlib.contextmanager
def _warning_policy(warn: str | None) -> Iterator[None]:
    """None: no warning allowed (pytest turns warnings into errors); "expect": an
    MPSLayoutWarning must be issued; "allow": an MPSLayoutWarning may be issued."""
    if warn == "expect":
        with pytest.warns(WARNING):
            yield
    elif warn == "allow":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WARNING)
            yield
    else:
        yield


def _garbage_like(a: np.ndarray) -> np.ndarray:
    """A writable C-contiguous array of a's shape and dtype full of random bits."""
    raw = np.random.default_rng(12345).integers(0, 256, size=a.nbytes, dtype=np.uint8)
    return raw.view(a.dtype).reshape(a.shape)


def run_both(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    use_out: bool = False,
    threads: int | None = None,
    warn: str | None = None,
) -> Any:
    """Call mpslayout.<name> and slow.<name> and assert bit-equal results."""
    inputs = [(a, a.copy()) for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)]
    want = getattr(slow, name)(*args, **kwargs)
    fast_kwargs = dict(kwargs)
    if threads is not None:
        fast_kwargs["threads"] = threads
    out = None
    if use_out:
        out = _garbage_like(want)
        fast_kwargs["out"] = out
    with np.errstate(all="ignore"), _warning_policy(warn):
        got = getattr(mpslayout, name)(*args, **fast_kwargs)
    if out is not None:
        assert got is out
    if isinstance(want, tuple):
        assert isinstance(got, tuple)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            if w is None:
                assert g is None
            else:
                assert_bit_equal(g, w)
    else:
        assert_bit_equal(got, want)
    for a, before in inputs:
        assert a.tobytes() == before.tobytes(), "input was modified"
    return got


def _kw(**kwargs: Any) -> dict[str, Any]:
    """kwargs without the entries that are None (those use the defaults)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _maybe(draw: st.DrawFn, value: Any, default: Any) -> Any:
    """``value``, or None (= leave the argument out) when value is the default."""
    if value == default and draw(st.booleans()):
        return None
    return value


# --------------------------------------------------------------------------- permute


@st.composite
def permute_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(generic_dtypes())
    shape = draw(shapes(0, 8, allow_zero=True))
    x = draw(arrays(shape, dt))
    nd = len(shape)
    axes = [a - nd if draw(st.booleans()) else a for a in draw(st.permutations(range(nd)))]
    axes_arg = tuple(axes) if draw(st.booleans()) else axes
    return (x, axes_arg), _kw(dtype=dtype)


@PROPERTY
@given(call=permute_calls(), use_out=st.booleans(), threads=THREADS)
def test_permute(call: Call, use_out: bool, threads: int | None) -> None:
    run_both("permute", *call, use_out=use_out, threads=threads)


# --------------------------------------------------------------------------- convert

COMMON_CONVERSIONS = [
    ("NCHW", "NCHW4c"),
    ("NCHW4c", "NCHW"),
    ("NHWC", "NCHW4c"),
    ("NCHW4c", "NHWC"),
    ("NCHW", "NHWC"),
    ("OIHW", "OHWI4o4i"),
    ("OHWI4o4i", "OIHW"),
    ("OIHW", "OIHW4i4o"),
    ("NCHW8c", "NCHW4c"),
]


def _parse(layout: str) -> tuple[str, list[tuple[str, int]]]:
    letters = "".join(ch for ch in layout if ch.isupper())
    blocks = []
    digits = ""
    for ch in layout[len(letters) :]:
        if ch.isdigit():
            digits += ch
        else:
            blocks.append((ch.upper(), int(digits)))
            digits = ""
    return letters, blocks


def _layout_shape(layout: str, size: dict[str, int]) -> list[int]:
    letters, blocks = _parse(layout)
    block = dict(blocks)
    shape = [-(-size[c] // block[c]) if c in block else size[c] for c in letters]
    return shape + [b for _, b in blocks]


@st.composite
def _random_layout(draw: st.DrawFn, letters: str) -> str:
    order = "".join(draw(st.permutations(letters)))
    nblocks = draw(st.integers(0, min(2, len(letters))))
    blocked = draw(st.permutations(letters))[:nblocks]
    return order + "".join(f"{draw(st.sampled_from([1, 2, 3, 4, 8]))}{c.lower()}" for c in blocked)


@st.composite
def convert_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(generic_dtypes())
    if draw(st.booleans()):
        src, dst = draw(st.sampled_from(COMMON_CONVERSIONS))
        letters = _parse(src)[0]
    else:
        letters = "".join(draw(st.permutations("NCHWDOI"))[: draw(st.integers(1, 4))])
        src = draw(_random_layout(letters))
        dst = draw(_random_layout(letters))
    size = {c: draw(dims()) for c in letters}
    if draw(st.integers(1, 8)) == 8:  # now and then, one empty axis
        size[draw(st.sampled_from(letters))] = 0
    while max(prod(_layout_shape(src, size)), prod(_layout_shape(dst, size))) > 2000:
        biggest = max(size, key=lambda c: size[c])
        size[biggest] //= 2
    x = draw(arrays(_layout_shape(src, size), dt))
    s_blocks = _parse(src)[1]
    kwargs = _kw(dtype=dtype)
    if len(s_blocks) == 1 and s_blocks[0][0] == "C" and draw(st.booleans()):
        kwargs["channels"] = size["C"]
    elif s_blocks:
        kwargs["sizes"] = {c: size[c] for c, _ in s_blocks}
    return (x, src, dst), kwargs


@PROPERTY
@given(call=convert_calls(), use_out=st.booleans(), threads=THREADS)
@example(  # re-blocking C while adding a block on N (once raised a spurious ValueError)
    call=(
        (np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4), "NCH4c", "NCH2c1n"),
        {"channels": 4},
    ),
    use_out=False,
    threads=None,
)
@example(
    call=(
        (np.arange(576, dtype=np.float16).reshape(2, 3, 3, 2, 4, 4), "OHWI4o4i", "OIHW8o4i"),
        {"sizes": {"O": 6, "I": 7}},
    ),
    use_out=True,
    threads=2,
)
def test_convert(call: Call, use_out: bool, threads: int | None) -> None:
    run_both("convert", *call, use_out=use_out, threads=threads)


# --------------------------------------------------------------------------- weights


@st.composite
def conv_weights_calls(draw: st.DrawFn) -> tuple[Call, bool]:
    dt, dtype = draw(mps_dtypes())
    layout = draw(st.sampled_from(["OIHW", "HWIO"]))
    g = draw(st.sampled_from([1, 1, 1, 2, 3, 4]))
    og, ig, kh, kw = fit_budget(
        [draw(dims(max_value=8)), draw(dims()), draw(KERNEL), draw(KERNEL)],
        2000 // g,
    )
    shape = (og * g, ig, kh, kw) if layout == "OIHW" else (kh, kw, ig, og * g)
    w = draw(arrays(shape, dt))
    kwargs = _kw(layout=_maybe(draw, layout, "OIHW"), groups=_maybe(draw, g, 1), dtype=dtype)
    warn = g > 1 and (ig % 4 != 0 or og % 4 != 0)
    return ((w,), kwargs), warn


@PROPERTY
@given(case=conv_weights_calls(), use_out=st.booleans(), threads=THREADS)
def test_conv_weights(case: tuple[Call, bool], use_out: bool, threads: int | None) -> None:
    call, warn = case
    run_both(
        "conv_weights", *call, use_out=use_out, threads=threads, warn="expect" if warn else None
    )


@st.composite
def depthwise_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(mps_dtypes())
    layout = draw(st.sampled_from(["OIHW", "HWCM"]))
    c, kh, kw = fit_budget([draw(dims()), draw(dims(max_value=7)), draw(dims(max_value=7))], 2000)
    if layout == "OIHW":
        w = draw(arrays((c, 1, kh, kw), dt))
        in_channels = draw(st.sampled_from([None, c]))
    else:
        w = draw(arrays((kh, kw, c, 1), dt))
        in_channels = None
    kwargs = _kw(layout=_maybe(draw, layout, "OIHW"), in_channels=in_channels, dtype=dtype)
    return (w,), kwargs


@PROPERTY
@given(call=depthwise_calls(), use_out=st.booleans(), threads=THREADS)
def test_depthwise_weights(call: Call, use_out: bool, threads: int | None) -> None:
    run_both("depthwise_weights", *call, use_out=use_out, threads=threads)


@st.composite
def expand_depthwise_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(mps_dtypes())
    layout = draw(st.sampled_from(["OIHW", "HWCM"]))
    c, m, kh, kw = draw(dims()), draw(dims(max_value=4)), draw(KERNEL), draw(KERNEL)
    while c * m * kh * kw * c > 2000:
        c, kh, kw = max(1, c // 2), max(1, kh // 2), max(1, kw // 2)
    if layout == "OIHW":
        w = draw(arrays((c * m, 1, kh, kw), dt))
        kwargs = _kw(layout=_maybe(draw, layout, "OIHW"), in_channels=c, dtype=dtype)
    else:
        w = draw(arrays((kh, kw, c, m), dt))
        kwargs = _kw(layout=layout, dtype=dtype)
    return (w,), kwargs


@PROPERTY
@given(call=expand_depthwise_calls(), use_out=st.booleans(), threads=THREADS)
def test_expand_depthwise(call: Call, use_out: bool, threads: int | None) -> None:
    run_both("expand_depthwise", *call, use_out=use_out, threads=threads)


@st.composite
def conv_transpose_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(mps_dtypes())
    layout = draw(st.sampled_from(["IOHW", "HWOI"]))
    flip = draw(st.booleans())
    if layout == "IOHW":
        g = draw(st.sampled_from([1, 1, 2, 3, 4]))
        ig, og, kh, kw = fit_budget(
            [draw(dims()), draw(dims(max_value=8)), draw(KERNEL), draw(KERNEL)],
            2000 // g,
        )
        w = draw(arrays((g * ig, og, kh, kw), dt))
    else:
        g = 1
        o, i, kh, kw = fit_budget([draw(dims()), draw(dims()), draw(KERNEL), draw(KERNEL)], 2000)
        w = draw(arrays((kh, kw, o, i), dt))
    kwargs = _kw(
        layout=_maybe(draw, layout, "IOHW"),
        groups=_maybe(draw, g, 1),
        flip=_maybe(draw, flip, True),
        dtype=dtype,
    )
    return (w,), kwargs


@PROPERTY
@given(call=conv_transpose_calls(), use_out=st.booleans(), threads=THREADS)
def test_conv_transpose_weights(call: Call, use_out: bool, threads: int | None) -> None:
    # the contract asks for no warning here, but tolerates the conv_weights one
    run_both("conv_transpose_weights", *call, use_out=use_out, threads=threads, warn="allow")


@st.composite
def fc_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(mps_dtypes())
    layout = draw(st.sampled_from(["OI", "IO"]))
    flatten = draw(st.sampled_from(["CHW", "HWC"]))
    o, c, h, w_ = fit_budget(
        [draw(dims()), draw(dims()), draw(dims(max_value=7)), draw(dims(max_value=7))], 2000
    )
    if draw(st.integers(0, 4)) == 0:
        input_shape = None
    else:
        input_shape = (c, h, w_) if flatten == "CHW" else (h, w_, c)
        if draw(st.booleans()):
            input_shape = list(input_shape)
    n = c * h * w_
    w = draw(arrays((o, n) if layout == "OI" else (n, o), dt))
    kwargs = _kw(
        input_shape=input_shape,
        layout=_maybe(draw, layout, "OI"),
        flatten=_maybe(draw, flatten, "CHW"),
        dtype=dtype,
    )
    return (w,), kwargs


@PROPERTY
@given(call=fc_calls(), use_out=st.booleans(), threads=THREADS)
def test_fc_weights(call: Call, use_out: bool, threads: int | None) -> None:
    run_both("fc_weights", *call, use_out=use_out, threads=threads)


BIAS_DTYPES = [F32, F16, F64] + ([BFLOAT16] if BFLOAT16 is not None else [])


@st.composite
def dense_reshape_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(mps_dtypes())
    layout = draw(st.sampled_from(["OI", "IO"]))
    order = draw(st.sampled_from(["CHW", "HWC"]))
    target = draw(st.sampled_from(["rows", "subpixel", "conv_transpose"]))
    h, w_, c, i = fit_budget([draw(KERNEL), draw(KERNEL), draw(dims()), draw(dims())], 2000)
    if target == "subpixel":
        w_ = h
    nn = h * w_ * c
    w = draw(arrays((nn, i) if layout == "OI" else (i, nn), dt))
    b = None
    if draw(st.booleans()):
        bdt = draw(st.sampled_from(BIAS_DTYPES))
        seed = draw(st.integers(0, 2**32 - 1))
        if target == "conv_transpose":
            # constant over (y, x) for each channel, laid out in `order`
            per_c = random_values(np.random.default_rng(seed), (c,), bdt)
            hwc = np.broadcast_to(per_c, (h, w_, c))
            values = np.ascontiguousarray(hwc if order == "HWC" else hwc.transpose(2, 0, 1))
            b = draw(relayout(values.reshape(nn)))
        else:
            b = draw(arrays((nn,), bdt))
    kwargs = _kw(
        shape=(h, w_, c),
        layout=_maybe(draw, layout, "OI"),
        order=_maybe(draw, order, "CHW"),
        target=_maybe(draw, target, "rows"),
        dtype=dtype,
    )
    args = (w,) if b is None and draw(st.booleans()) else (w, b)
    return args, kwargs


@PROPERTY
@given(call=dense_reshape_calls(), threads=THREADS)
def test_dense_reshape(call: Call, threads: int | None) -> None:
    run_both("dense_reshape", *call, threads=threads)


@st.composite
def bias_calls(draw: st.DrawFn) -> Call:
    dt = draw(st.sampled_from(BIAS_DTYPES))
    return (draw(arrays((draw(dims(allow_zero=True)) * draw(dims()),), dt)),), {}


@PROPERTY
@given(call=bias_calls(), use_out=st.booleans())
def test_bias(call: Call, use_out: bool) -> None:
    run_both("bias", *call, use_out=use_out)


# --------------------------------------------------------------------------- images

CHANNELS = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 13])


def _slices_of(c: int) -> tuple[int, int]:
    return (1, c) if c <= 2 else ((c + 3) // 4, 4)


def _image_shape(layout: str, n: int, c: int, h: int, w: int) -> tuple[int, ...]:
    return tuple({"N": n, "C": c, "H": h, "W": w}[ch] for ch in layout)


@st.composite
def image_slices_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(mps_dtypes())
    layout = draw(st.sampled_from(["NCHW", "NHWC", "CHW", "HWC"]))
    n = draw(st.sampled_from([1, 2, 3])) if "N" in layout else 1
    c = draw(CHANNELS)
    h, w = draw(dims(max_value=8)), draw(dims(max_value=8))
    if draw(st.integers(1, 8)) == 8:  # now and then, no images or an empty axis
        n, h, w = (0, h, w) if "N" in layout and draw(st.booleans()) else (n, 0, w)
    n, h, w = fit_budget([n, h, w], 2000 // (4 * _slices_of(c)[0]))
    x = draw(arrays(_image_shape(layout, n, c, h, w), dt))
    return (x,), _kw(layout=_maybe(draw, layout, "NCHW"), dtype=dtype)


@PROPERTY
@given(call=image_slices_calls(), use_out=st.booleans(), threads=THREADS)
def test_image_slices(call: Call, use_out: bool, threads: int | None) -> None:
    run_both("image_slices", *call, use_out=use_out, threads=threads)


@st.composite
def image_from_slices_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(mps_dtypes())
    layout = draw(st.sampled_from(["NCHW", "NHWC", "CHW", "HWC"]))
    n = draw(st.sampled_from([1, 2, 3])) if "N" in layout else 1
    c = draw(CHANNELS)
    s, p = _slices_of(c)
    h, w = draw(dims(max_value=8)), draw(dims(max_value=8))
    if draw(st.integers(1, 8)) == 8:  # now and then, no images or an empty axis
        n, h, w = (0, h, w) if "N" in layout and draw(st.booleans()) else (n, 0, w)
    n, h, w = fit_budget([n, h, w], 2000 // (4 * s))
    t = draw(arrays((n * s, h, w, p), dt))
    return (t,), _kw(channels=c, layout=_maybe(draw, layout, "NCHW"), dtype=dtype)


@PROPERTY
@given(call=image_from_slices_calls(), use_out=st.booleans(), threads=THREADS)
def test_image_from_slices(call: Call, use_out: bool, threads: int | None) -> None:
    run_both("image_from_slices", *call, use_out=use_out, threads=threads)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def reshape_shapes(draw: st.DrawFn) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    h1, w1, c1 = fit_budget([draw(dims(max_value=8)), draw(dims(max_value=8)), draw(CHANNELS)], 400)
    vol = h1 * w1 * c1
    h2 = draw(st.sampled_from(_divisors(vol)))
    w2 = draw(st.sampled_from(_divisors(vol // h2)))
    return (h1, w1, c1), (h2, w2, vol // (h2 * w2))


@st.composite
def reshape_slices_calls(draw: st.DrawFn) -> Call:
    dt, dtype = draw(mps_dtypes())
    src, dst = draw(reshape_shapes())
    s1, p1 = _slices_of(src[2])
    n = draw(st.sampled_from([1, 1, 2, 3]))
    t = draw(arrays((n * s1, src[0], src[1], p1), dt))
    order = draw(st.sampled_from(["HWC", "CHW"]))
    return (t,), _kw(src=src, dst=dst, order=_maybe(draw, order, "HWC"), dtype=dtype)


@PROPERTY
@given(call=reshape_slices_calls(), use_out=st.booleans(), threads=THREADS)
def test_reshape_slices(call: Call, use_out: bool, threads: int | None) -> None:
    run_both("reshape_slices", *call, use_out=use_out, threads=threads)


@PROPERTY
@given(shapes_=reshape_shapes(), order=st.sampled_from([None, "HWC", "CHW"]))
def test_reshape_gather(
    shapes_: tuple[tuple[int, int, int], tuple[int, int, int]], order: str | None
) -> None:
    src, dst = shapes_
    got = run_both("reshape_gather", (src, dst), _kw(order=order))
    assert got.dtype == np.int64


# --------------------------------------------------------------------------- threads

BIG_CASES: list[tuple[str, tuple[tuple[int, ...], np.dtype], dict[str, Any], Any]] = [
    ("permute", ((40, 33, 17), F32), {}, ((2, 0, 1),)),
    ("permute", ((6, 7, 5, 11, 17), F16), {"dtype": F32}, ((4, 1, 3, 0, 2),)),
    ("convert", ((2, 13, 37, 41), F16), {}, ("NCHW", "NCHW4c")),
    ("convert", ((2, 4, 37, 41, 4), F32), {"channels": 13}, ("NCHW4c", "NHWC")),
    ("conv_weights", ((128, 37, 3, 3), F32), {"dtype": F16}, ()),
    ("conv_weights", ((3, 3, 37, 128), F64), {"layout": "HWIO"}, ()),
    ("conv_transpose_weights", ((37, 128, 3, 3), F32), {}, ()),
    ("expand_depthwise", ((3, 3, 40, 2), F32), {"layout": "HWCM"}, ()),
    ("fc_weights", ((20, 1001), F32), {"input_shape": (7, 13, 11)}, ()),
    ("image_slices", ((3, 33, 35, 7), F32), {"layout": "NHWC"}, ()),
    ("image_from_slices", ((6, 40, 40, 4), F16), {"channels": 11}, ()),
    ("reshape_slices", ((4, 32, 40, 4), F32), {"src": (32, 40, 16), "dst": (64, 20, 16)}, ()),
]
if BFLOAT16 is not None:
    BIG_CASES.append(("image_slices", ((1, 13, 60, 50), F32), {"dtype": BFLOAT16}, ()))


@pytest.mark.parametrize(
    ("name", "spec", "kwargs", "extra"), BIG_CASES, ids=[c[0] for c in BIG_CASES]
)
def test_threads_identical_bytes(
    name: str, spec: tuple[tuple[int, ...], np.dtype], kwargs: dict[str, Any], extra: Any
) -> None:
    shape, dt = spec
    x = random_values(np.random.default_rng(7), shape, dt)
    x = x[..., ::-1] if name == "permute" else x  # and a negative stride for good measure
    fast = getattr(mpslayout, name)
    with np.errstate(all="ignore"):
        results = [fast(x, *extra, threads=t, **kwargs) for t in (1, 2, 3, None)]
    want = getattr(slow, name)(x, *extra, **kwargs)
    assert max(x.nbytes, want.nbytes) > 64 * 1024
    for got in results:
        assert_bit_equal(got, want)


# --------------------------------------------------------------------------- byte order


def test_non_native_byte_order() -> None:
    """Big-endian input: permute/convert keep the dtype like np.transpose does; the MPS
    converters hand back native byte order (what a Metal buffer needs), same values."""
    swapped = np.dtype(np.float32).newbyteorder("S")
    x = random_values(np.random.default_rng(5), (3, 5, 4), F32).astype(swapped)
    got = run_both("permute", (x, (2, 0, 1)), {})
    assert got.dtype == swapped
    assert got.tobytes() == np.ascontiguousarray(np.transpose(x, (2, 0, 1))).tobytes()
    run_both("convert", (x, "CHW", "HWC4c"), {})
    w = random_values(np.random.default_rng(6), (4, 3, 2, 2), F32)
    got = run_both("conv_weights", (w.astype(swapped),), {})
    assert got.dtype == F32
    assert got.tobytes() == slow.conv_weights(w).tobytes()
    run_both("bias", (np.arange(5, dtype=swapped),), {})


# --------------------------------------------------------------------------- bfloat16


def test_bfloat16_round_trip_casts() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    x = random_values(np.random.default_rng(3), (3, 5, 7), F32)[:, ::-1]
    run_both("permute", (x, (2, 0, 1)), {"dtype": bf16})
    y = random_values(np.random.default_rng(4), (5, 3, 2, 2), bf16)
    run_both("conv_weights", (y,), {})
    run_both("conv_weights", (y,), {"dtype": F32})
    run_both("image_slices", (y,), {"layout": "NHWC", "dtype": F32})


# --------------------------------------------------------------------------- by hand


@pytest.fixture(params=["fast", "slow"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Both implementations: the hand-computed values hold for each."""
    return mpslayout if request.param == "fast" else slow


def test_conv_transpose_flip_2x3(impl: ModuleType) -> None:
    wt = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    got = impl.conv_transpose_weights(wt)
    assert got.shape == (1, 2, 3, 1)
    assert got[0, :, :, 0].tolist() == [[5, 4, 3], [2, 1, 0]]
    same = impl.conv_transpose_weights(wt, flip=False)
    assert same[0, :, :, 0].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_conv_transpose_channels_swapped(impl: ModuleType) -> None:
    # Wt[i][o][kh][kw] = ((i*3 + o)*2 + kh)*3 + kw, with I=2, O=3, kH=2, kW=3
    wt = np.arange(36, dtype=np.float32).reshape(2, 3, 2, 3)
    got = impl.conv_transpose_weights(wt)
    assert got.shape == (3, 2, 3, 2)
    assert got[2, 0, 0, 1] == 35  # Wt[1][2][1][2]
    assert got[0, 1, 2, 0] == 0  # Wt[0][0][0][0]
    assert got[1, 0, 1, 1] == 28  # Wt[1][1][1][1]
    kt = np.arange(12, dtype=np.float32).reshape(2, 3, 2, 1)  # Keras HWOI
    got = impl.conv_transpose_weights(kt, layout="HWOI")
    assert got.shape == (2, 2, 3, 1)
    assert got[1, 0, 0, 0] == 11  # Kt[1][2][1][0]
    assert got[0, 1, 2, 0] == 0  # Kt[0][0][0][0]


def test_conv_transpose_groups(impl: ModuleType) -> None:
    wt = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)  # I=4, O/g=1, g=2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WARNING)
        got = impl.conv_transpose_weights(wt, groups=2)
    assert got.shape == (2, 1, 1, 2)
    assert got.reshape(2, 2).tolist() == [[0, 1], [2, 3]]


def test_conv_weights_by_hand(impl: ModuleType) -> None:
    w = np.arange(12, dtype=np.float32).reshape(2, 3, 1, 2)  # OIHW
    got = impl.conv_weights(w)
    assert got.shape == (2, 1, 2, 3)
    assert got[1, 0, 1, 2] == 11  # w[1][2][0][1]
    assert got[0, 0, 1, 0] == 1  # w[0][0][0][1]
    assert got[0, 0, 0, 1] == 2  # w[0][1][0][0]
    k = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # the same kernel as Keras HWIO
    assert impl.conv_weights(k, layout="HWIO").tobytes() == got.tobytes()


def test_depthwise_by_hand(impl: ModuleType) -> None:
    d = np.arange(6, dtype=np.float32).reshape(2, 1, 3, 1)  # D[kh][kw][c][0]
    got = impl.depthwise_weights(d, layout="HWCM")
    assert got.shape == (3, 2, 1)
    assert got[2, 1, 0] == 5  # D[1][0][2][0]
    assert got[:, :, 0].tolist() == [[0, 3], [1, 4], [2, 5]]


def test_expand_depthwise_by_hand(impl: ModuleType) -> None:
    w = np.array([1, 2, 3, 4], dtype=np.float32).reshape(4, 1, 1, 1)  # C=2, m=2
    got = impl.expand_depthwise(w, in_channels=2)
    assert got.shape == (4, 1, 1, 2)
    assert got.reshape(4, 2).tolist() == [[1, 0], [2, 0], [0, 3], [0, 4]]
    d = np.array([1, 2, 3, 4], dtype=np.float32).reshape(1, 1, 2, 2)  # D[0][0][c][j]
    got = impl.expand_depthwise(d, layout="HWCM")
    assert got.reshape(4, 2).tolist() == [[1, 0], [2, 0], [0, 3], [0, 4]]
    assert not np.signbit(got).any()  # zeros are +0


def test_fc_weights_chw_by_hand(impl: ModuleType) -> None:
    # PyTorch Linear after flatten of a (C=2, H=2, W=3) map: L[0][n] = n
    lin = np.arange(12, dtype=np.float32).reshape(1, 12)
    got = impl.fc_weights(lin, input_shape=(2, 2, 3))
    assert got.shape == (1, 2, 3, 2)
    assert got[0, 1, 2, 1] == 11  # c*H*W + h*W + w = 6 + 3 + 2
    assert got[0, 0, 1, 1] == 7
    assert got[0, 1, 0, 0] == 3
    assert got.reshape(-1).tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
    keras = impl.fc_weights(np.ascontiguousarray(lin.T), input_shape=(2, 2, 3), layout="IO")
    assert keras.tobytes() == got.tobytes()
    hwc = impl.fc_weights(lin, input_shape=(2, 3, 2), flatten="HWC")
    assert hwc.reshape(-1).tolist() == list(range(12))
    vec = impl.fc_weights(lin)
    assert vec.shape == (1, 1, 1, 12)


def test_dense_reshape_by_hand(impl: ModuleType) -> None:
    # Dense(8) then PyTorch view(-1, C=2, H=2, W=2): w[n][0] = n, n = c*4 + y*2 + x
    w = np.arange(8, dtype=np.float32).reshape(8, 1)
    b = np.array([10, 10, 10, 10, 11, 11, 11, 11], dtype=np.float32)
    rows, rb = impl.dense_reshape(w, b, shape=(2, 2, 2))
    assert rows.reshape(-1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert rb.dtype == np.float32
    assert rb.tolist() == [10, 11] * 4
    sub, sb = impl.dense_reshape(w, b, shape=(2, 2, 2), target="subpixel")
    assert sub.shape == (8, 1, 1, 1)
    assert sub.tobytes() == rows.tobytes()
    assert sb.tobytes() == rb.tobytes()
    ct, cb = impl.dense_reshape(w, b, shape=(2, 2, 2), target="conv_transpose")
    assert ct.shape == (2, 2, 2, 1)
    assert ct[..., 0].tolist() == [[[3, 2], [1, 0]], [[7, 6], [5, 4]]]
    assert cb.tolist() == [10, 11]
    keras, kb = impl.dense_reshape(w, None, shape=(2, 2, 2), order="HWC")
    assert kb is None
    assert keras.reshape(-1).tolist() == list(range(8))
    ramp = np.arange(8, dtype=np.float32)  # not constant over (y, x)
    with pytest.raises(ValueError):  # noqa: PT011 - the contract names no message
        impl.dense_reshape(w, ramp, shape=(2, 2, 2), target="conv_transpose")


@pytest.mark.parametrize("c", [1, 2, 3, 5])
def test_image_slices_by_hand(impl: ModuleType, c: int) -> None:
    n, h, w = 2, 1, 2
    x = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w) + 1
    got = impl.image_slices(x)
    s, p = _slices_of(c)
    assert got.shape == (n * s, h, w, p)
    assert p == (c if c <= 2 else 4)
    for ni, si, y, xi, k in np.ndindex(n, s, h, w, p):
        ch = 4 * si + k
        value = got[ni * s + si, y, xi, k]
        if ch < c:
            assert value == x[ni, ch, y, xi]
        else:
            assert value.view(np.uint32) == 0  # padding is +0.0, never NaN or -0
    nhwc = impl.image_slices(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), layout="NHWC")
    assert nhwc.tobytes() == got.tobytes()
    back = impl.image_from_slices(got, channels=c)
    assert back.tobytes() == x.tobytes()


def test_image_slices_c5_values(impl: ModuleType) -> None:
    x = np.arange(1, 6, dtype=np.float32).reshape(5, 1, 1)  # CHW, C=5
    got = impl.image_slices(x, layout="CHW")
    assert got.shape == (2, 1, 1, 4)
    assert got.reshape(2, 4).tolist() == [[1, 2, 3, 4], [5, 0, 0, 0]]


def test_reshape_gather_dense_to_4x4x8(impl: ModuleType) -> None:
    # Dense(128) writes a 1x1 image of 128 channels; Reshape(4, 4, 8) reads an HWC image
    h, w, c = 4, 4, 8
    got = impl.reshape_gather((1, 1, 128), (h, w, c))
    assert got.dtype == np.int64
    assert got.shape == (2, 4, 4, 4)
    for s, y, x, k in np.ndindex(*got.shape):
        n = (y * w + x) * c + 4 * s + k  # the dense neuron, found at flat index n
        assert got[s, y, x, k] == n


def test_reshape_gather_padding_and_reshape_slices(impl: ModuleType) -> None:
    src, dst = (2, 3, 5), (3, 5, 2)  # C1=5: 2 slices, C2=2: one 2-component slice
    g = impl.reshape_gather(src, dst)
    assert g.shape == (1, 3, 5, 2)
    assert (g >= 0).all()
    g2 = impl.reshape_gather(dst, src)
    assert g2.shape == (2, 2, 3, 4)
    assert (g2[1, :, :, 1:] == -1).all()  # channels 5..7 are padding
    assert (g2[:, :, :, :1] >= 0).all()
    t = random_values(np.random.default_rng(0), (2, 2, 3, 4), F32)
    out = impl.reshape_slices(t, src=src, dst=dst)
    flat = t.reshape(-1).view(np.uint32)
    assert (out.reshape(-1).view(np.uint32) == flat[g.reshape(-1)]).all()


# --------------------------------------------------------------------------- rejections

_X = np.zeros((2, 3, 4, 5), dtype=np.float32)

REJECTIONS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception]]] = [
    ("permute", (np.zeros((1,) * 9, np.float32), tuple(range(9))), {}, ValueError),
    ("permute", (_X, (0, 0, 1, 2)), {}, ValueError),
    ("permute", (_X, (0, 1, 2)), {}, ValueError),
    ("permute", (_X, (0, 1, 2, 4)), {}, ValueError),
    ("permute", (np.zeros(3, np.complex128), (0,)), {}, TypeError),
    ("permute", (np.zeros(3, object), (0,)), {}, TypeError),
    ("permute", (_X, (0, 1, 2, 3)), {"dtype": np.int32}, TypeError),
    ("permute", (_X.astype(np.float64), (0, 1, 2, 3)), {"dtype": np.float16}, TypeError),
    ("convert", (_X, "NCHW", "NHW"), {}, ValueError),
    ("convert", (_X, "NCHW", "NCHD"), {}, ValueError),
    ("convert", (_X, "nchw", "NCHW"), {}, ValueError),
    ("convert", (_X, "NCCW", "NCCW"), {}, ValueError),
    ("convert", (_X, "NCHW", "NCHW0c"), {}, ValueError),
    ("convert", (_X, "NCHW", "NCHW4d"), {}, ValueError),
    ("convert", (np.zeros((2, 1, 4, 5, 4), np.float32), "NCHW4c", "NCHW"), {}, ValueError),
    ("conv_weights", (_X[0],), {}, ValueError),
    ("conv_weights", (_X,), {"groups": 4}, ValueError),
    ("conv_weights", (_X,), {"layout": "OHWI"}, ValueError),
    ("conv_weights", (_X.astype(np.int8),), {}, TypeError),
    ("conv_weights", (_X.astype(np.bool_),), {}, TypeError),
    ("conv_weights", (_X.astype(np.int32),), {}, TypeError),
    ("conv_weights", (_X.astype(np.complex64),), {}, TypeError),
    ("conv_weights", (_X,), {"dtype": np.int8}, TypeError),
    ("conv_weights", (_X.astype(np.uint8),), {"dtype": np.float32}, TypeError),
    ("depthwise_weights", (_X,), {}, ValueError),
    ("expand_depthwise", (np.zeros((6, 1, 3, 3), np.float32),), {}, ValueError),
    ("conv_transpose_weights", (_X,), {"layout": "HWOI", "groups": 2}, ValueError),
    ("fc_weights", (np.zeros((3, 12), np.float32),), {"input_shape": (2, 2, 2)}, ValueError),
    ("fc_weights", (_X,), {}, ValueError),
    ("dense_reshape", (np.zeros((8, 3), np.float32),), {"shape": (2, 2, 3)}, ValueError),
    ("dense_reshape", (np.zeros((12, 3), np.float32),), {"shape": (1, 2, 6), "target": "subpixel"}, ValueError),  # noqa: E501
    ("dense_reshape", (np.zeros((8, 3), np.float32), np.zeros(7, np.float32)), {"shape": (2, 2, 2)}, ValueError),  # noqa: E501
    ("bias", (np.zeros((2, 3), np.float32),), {}, ValueError),
    ("image_slices", (_X,), {"layout": "CHW"}, ValueError),
    ("image_slices", (_X,), {"layout": "NCWH"}, ValueError),
    ("image_slices", (_X.astype(np.int16),), {}, TypeError),
    ("image_from_slices", (np.zeros((3, 2, 2, 4), np.float32),), {"channels": 5}, ValueError),
    ("image_from_slices", (np.zeros((2, 2, 2, 4), np.float32),), {"channels": 2}, ValueError),
    ("reshape_slices", (np.zeros((1, 2, 2, 4), np.float32),), {"src": (2, 2, 4), "dst": (2, 2, 2)}, ValueError),  # noqa: E501
    ("reshape_gather", ((2, 2, 4), (3, 1, 4)), {}, ValueError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "exc"), REJECTIONS, ids=[r[0] for r in REJECTIONS]
)
def test_both_reject(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        getattr(slow, name)(*args, **kwargs)
    with pytest.raises(exc):
        getattr(mpslayout, name)(*args, **kwargs)


@pytest.mark.parametrize(
    ("w", "layout"),
    [(np.zeros((3, 3, 4, 2), np.float32), "HWCM"), (np.zeros((8, 1, 3, 3), np.float32), "OIHW")],
)
def test_depthwise_multiplier_names_fallback(w: np.ndarray, layout: str) -> None:
    kwargs: dict[str, Any] = {"layout": layout}
    if layout == "OIHW":
        kwargs["in_channels"] = 4
    for impl_ in (slow, mpslayout):
        with pytest.raises(ValueError, match="expand_depthwise"):
            impl_.depthwise_weights(w, **kwargs)


def test_fast_rejects_bad_out_and_threads() -> None:
    x = random_values(np.random.default_rng(0), (3, 4, 5), F32)
    with pytest.raises(ValueError):  # noqa: PT011
        mpslayout.permute(x, (2, 0, 1), threads=0)
    with pytest.raises(ValueError):  # noqa: PT011
        mpslayout.permute(x, (2, 0, 1), out=np.empty((5, 4, 3), np.float32))
    with pytest.raises(TypeError):
        mpslayout.permute(x, (2, 0, 1), out=np.empty((5, 3, 4), np.float64))
    with pytest.raises(ValueError):  # noqa: PT011
        mpslayout.permute(x, (2, 0, 1), out=np.empty((4, 3, 5), np.float32).transpose(2, 1, 0))
    ro = np.empty((5, 3, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):  # noqa: PT011
        mpslayout.permute(x, (2, 0, 1), out=ro)
    buf = np.zeros(60, np.float32)
    with pytest.raises(ValueError):  # noqa: PT011
        mpslayout.permute(buf.reshape(3, 4, 5), (2, 0, 1), out=buf.reshape(5, 3, 4))


def test_all_public_functions_have_twins() -> None:
    names = [
        "permute", "convert", "conv_weights", "depthwise_weights", "expand_depthwise",
        "conv_transpose_weights", "fc_weights", "dense_reshape", "bias", "image_slices",
        "image_from_slices", "reshape_slices", "reshape_gather",
    ]  # fmt: skip
    for name in names:
        assert callable(getattr(mpslayout, name))
        assert callable(getattr(slow, name))
    assert set(slow.__all__) == set(names)
    assert MPS_DTYPES  # the strategies module is importable and non-empty
