"""The one-step C++ path of permute/conv_weights (``_core.fast_permute``): it must give
numpy's bits when it takes a call, and hand every other call (returning None) to the full
path, which checks and explains. Both halves are checked here against numpy."""

from __future__ import annotations

import inspect
import itertools
import pickle
import pydoc
import sys

import numpy as np
import pytest

import mpslayout
from mpslayout import _core

RNG = np.random.default_rng(7)
PLAIN = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32, np.uint32,
         np.float32, np.int64, np.uint64, np.float64, np.complex64]


def _array(shape, dtype) -> np.ndarray:
    return np.asarray(RNG.standard_normal(shape) * 100).astype(dtype)


@pytest.mark.parametrize("dtype", PLAIN)
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 1, 4, 9), (0, 3, 2), (6,), ()])
def test_taken_calls_equal_numpy(dtype, shape) -> None:
    x = _array(shape, dtype)
    for axes in itertools.permutations(range(x.ndim)):
        want = np.ascontiguousarray(x.transpose(axes))
        for ax in (axes, list(axes)):
            got = _core.fast_permute(x, ax, None, 1, 0, None)
            assert got is not None, (dtype, shape, ax)
            assert got.flags.c_contiguous
            assert got.dtype == x.dtype
            np.testing.assert_array_equal(got, want)
            assert got.tobytes() == want.tobytes()


def test_taken_with_out_and_views() -> None:
    base = _array((6, 8, 10), np.float32)
    for x in (base[::2], base[:, ::-1], base.transpose(2, 0, 1), base[1:, 2:, 3:]):
        axes = (2, 0, 1)
        want = np.ascontiguousarray(x.transpose(axes))
        out = np.full(want.shape, np.nan, np.float32)
        got = _core.fast_permute(x, axes, out, 2, 0, None)
        assert got is out
        np.testing.assert_array_equal(out, want)


def test_mps_flag_keeps_only_mps_dtypes() -> None:
    for dtype, taken in [(np.float32, True), (np.float16, True), (np.uint8, True),
                         (np.float64, True), (np.int32, False), (np.bool_, False)]:
        x = _array((4, 3, 2, 2), dtype)
        got = _core.fast_permute(x, (0, 2, 3, 1), None, 1, 1, None)
        assert (got is not None) == taken, dtype
        if got is not None:  # MPS keeps float32/float16/uint8; float64 becomes float32
            want = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            want = want.astype(np.float32) if dtype == np.float64 else want
            assert got.dtype == want.dtype
            assert got.tobytes() == want.tobytes()


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 1e-8, 6e-8,
                    -3.0e-5, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1e300, -1e-300])


@pytest.mark.parametrize(
    ("src", "dst"),
    [(np.float32, np.float16), (np.float16, np.float32), (np.float64, np.float32)],
)
@pytest.mark.parametrize("spelling", ["type", "str", "dtype"])
def test_fused_casts_round_as_numpy(src, dst, spelling) -> None:
    with np.errstate(over="ignore"):
        x = np.concatenate([SPECIAL, RNG.standard_normal(226) * 1e3]).astype(src)
    x = x.reshape(3, 4, 5, 4)
    dtype = {"type": dst, "str": np.dtype(dst).name, "dtype": np.dtype(dst)}[spelling]
    with np.errstate(over="ignore"):
        want = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).astype(dst)
    got = _core.fast_permute(x, (0, 2, 3, 1), None, 1, 0, dtype)
    assert got is not None
    assert got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()
    out = np.empty_like(want)
    assert _core.fast_permute(x, (0, 2, 3, 1), out, 1, 1, dtype) is out
    assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    "dtype", [np.int32, ">f2", "bfloat16", "no such type", object, [1], np.float64]
)
def test_casts_it_does_not_run_go_to_the_full_path(dtype) -> None:
    x = _array((3, 4, 5), np.float32)
    assert _core.fast_permute(x, (2, 0, 1), None, 1, 0, dtype) is None


@pytest.mark.parametrize(
    ("case", "call"),
    [
        ("subclass", lambda x: (x.view(_Sub), (0, 2, 1), None, 1)),
        ("byteswapped", lambda x: (x.astype(">f4"), (0, 2, 1), None, 1)),
        ("numpy int axes", lambda x: (x, (np.int64(0), 2, 1), None, 1)),
        ("repeated axes", lambda x: (x, (0, 0, 1), None, 1)),
        ("negative axes", lambda x: (x, (0, -1, 1), None, 1)),
        ("short axes", lambda x: (x, (0, 1), None, 1)),
        ("axes not a sequence", lambda x: (x, 3, None, 1)),
        ("axes a generator", lambda x: (x, (i for i in (0, 2, 1)), None, 1)),
        ("huge axis", lambda x: (x, (0, 2**70, 1), None, 1)),
        ("threads 0", lambda x: (x, (0, 2, 1), None, 0)),
        ("threads too many", lambda x: (x, (0, 2, 1), None, 1025)),
        ("threads bool", lambda x: (x, (0, 2, 1), None, True)),
        ("threads float", lambda x: (x, (0, 2, 1), None, 2.0)),
        ("out wrong shape", lambda x: (x, (0, 2, 1), np.empty((2, 3, 4), np.float32), 1)),
        ("out wrong dtype", lambda x: (x, (0, 2, 1), np.empty((2, 4, 3), np.float64), 1)),
        ("out read-only", lambda x: (x, (0, 2, 1), _readonly((2, 4, 3)), 1)),
        ("out not contiguous",
         lambda x: (x, (0, 2, 1), np.empty((2, 4, 6), np.float32)[..., ::2], 1)),
        ("out is the input", lambda x: (x, (0, 1, 2), x, 1)),
        ("out a list", lambda x: (x, (0, 2, 1), [], 1)),
        ("object dtype", lambda x: (x.astype(object), (0, 2, 1), None, 1)),
        ("strings", lambda x: (x.astype("U3"), (0, 2, 1), None, 1)),
        ("complex128", lambda x: (x.astype(np.complex128), (0, 2, 1), None, 1)),
        ("a list", lambda x: (x.tolist(), (0, 2, 1), None, 1)),
        ("nine axes", lambda x: (np.zeros((1,) * 9, np.float32), tuple(range(9)), None, 1)),
    ],
)
def test_other_calls_go_to_the_full_path(case, call) -> None:
    x = _array((2, 3, 4), np.float32)
    args = call(x)
    assert _core.fast_permute(*args, 0, None) is None, case
    # and the public function still answers as numpy does, or refuses clearly
    arr, axes, out, threads = args
    try:
        want = np.ascontiguousarray(np.transpose(np.asarray(arr), tuple(axes)))
    except Exception:  # numpy refuses too: mpslayout must refuse with a clear error
        want = None
    try:
        got = mpslayout.permute(arr, axes, out=out, threads=threads)
    except (ValueError, TypeError):
        return
    assert want is not None, case
    np.testing.assert_array_equal(got, want)


class _Sub(np.ndarray):
    pass


def _readonly(shape) -> np.ndarray:
    a = np.empty(shape, np.float32)
    a.flags.writeable = False
    return a


def test_default_threads_follow_set_threads() -> None:
    x = _array((3, 4), np.float32)
    before = mpslayout.get_threads()
    try:
        mpslayout.set_threads(1)
        assert _core.fast_permute(x, (1, 0), None, None, 0, None) is not None
        mpslayout.set_threads(None)
        np.testing.assert_array_equal(mpslayout.permute(x, (1, 0)), x.T)
        assert mpslayout.get_threads() == before
        assert _core.fast_permute(x, (1, 0), None, None, 0, None) is not None
    finally:
        mpslayout.set_threads(None)


def test_conv_weights_fast_and_full_paths_agree() -> None:
    w = _array((16, 8, 3, 3), np.float32)
    want = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(mpslayout.conv_weights(w), want)  # fast
    np.testing.assert_array_equal(mpslayout.conv_weights(w.astype(">f4")), want)  # full
    hwio = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(mpslayout.conv_weights(hwio, layout="HWIO"), want)
    with pytest.raises(ValueError, match="layout"):
        mpslayout.conv_weights(w, layout="OHWI")
    with pytest.raises((TypeError, ValueError), match="layout"):
        mpslayout.conv_weights(w, layout=["OIHW"])


def test_depthwise_fast_and_full_paths_agree() -> None:
    w = _array((12, 1, 3, 3), np.float16)
    want = np.ascontiguousarray(w[:, 0])
    np.testing.assert_array_equal(mpslayout.depthwise_weights(w), want)  # fast
    np.testing.assert_array_equal(mpslayout.depthwise_weights(w.astype(">f2")), want)  # full
    np.testing.assert_array_equal(mpslayout.depthwise_weights(w, in_channels=12), want)  # full
    k = np.ascontiguousarray(w.transpose(2, 3, 0, 1))  # HWCM
    np.testing.assert_array_equal(mpslayout.depthwise_weights(k, layout="HWCM"), want)
    out = np.empty_like(want)
    assert mpslayout.depthwise_weights(w[::-1], out=out) is out
    np.testing.assert_array_equal(out, want[::-1])
    with pytest.raises(ValueError, match="expand_depthwise"):
        mpslayout.depthwise_weights(np.zeros((3, 3, 4, 2), np.float32), layout="HWCM")


def test_mps_calls_may_squeeze_unit_axes_only() -> None:
    w = _array((6, 1, 3, 3), np.float32)
    assert _core.fast_permute(w, (0, 2, 3), None, 1, 1, None) is None  # conv_weights: never
    got = _core.fast_permute(w, (0, 2, 3), None, 1, 3, None)
    assert got is not None
    assert got.tobytes() == np.ascontiguousarray(w[:, 0]).tobytes()
    assert got.shape == (6, 3, 3)
    assert _core.fast_permute(w, (0, 2, 3), None, 1, 0, None) is None  # permute: never
    w2 = _array((6, 2, 3, 3), np.float32)
    assert _core.fast_permute(w2, (0, 2, 3), None, 1, 3, None) is None  # not a unit axis
    assert _core.fast_permute(w, (0, 2, 2), None, 1, 3, None) is None  # repeated
    with pytest.raises(ValueError, match="expand_depthwise"):
        mpslayout.depthwise_weights(w2.reshape(12, 1, 3, 3), in_channels=6)


# ---- FastPath: the public converters answer their common call without Python bytecode ----

def _python_calls(fn, *args, **kwargs) -> list[str]:
    """Names of the Python functions of mpslayout that run during fn(*args, **kwargs)."""
    seen: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and "mpslayout" in frame.f_code.co_filename:
            seen.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return seen


CONV_W = _array((8, 4, 3, 3), np.float32)
FC_W = _array((6, 60), np.float32)
DENSE_W = _array((24, 5), np.float32)


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "want"),
    [
        (mpslayout.conv_weights, (CONV_W,), {}, CONV_W.transpose(0, 2, 3, 1)),
        (mpslayout.conv_weights, (), {"w": CONV_W}, CONV_W.transpose(0, 2, 3, 1)),
        (mpslayout.conv_weights, (CONV_W,), {"layout": "OIHW", "groups": 1, "threads": 2},
         CONV_W.transpose(0, 2, 3, 1)),
        (mpslayout.conv_weights, (CONV_W.transpose(2, 3, 1, 0),), {"layout": "HWIO"},
         CONV_W.transpose(0, 2, 3, 1)),
        (mpslayout.conv_weights, (CONV_W,), {"dtype": np.float16},
         CONV_W.transpose(0, 2, 3, 1).astype(np.float16)),
        (mpslayout.conv_weights, (CONV_W.astype(np.float64),), {},
         CONV_W.transpose(0, 2, 3, 1)),
        (mpslayout.depthwise_weights, (CONV_W[:, :1],), {}, CONV_W[:, 0]),
        (mpslayout.depthwise_weights, (CONV_W[:, :1].transpose(2, 3, 0, 1),),
         {"layout": "HWCM", "in_channels": None}, CONV_W[:, 0]),
        (mpslayout.permute, (CONV_W, (3, 1, 0, 2)), {}, CONV_W.transpose(3, 1, 0, 2)),
        (mpslayout.permute, (CONV_W,), {"axes": [1, 0, 3, 2], "dtype": "float16"},
         CONV_W.transpose(1, 0, 3, 2).astype(np.float16)),
        (mpslayout.permute, (), {"x": CONV_W, "axes": (0, 1, 2, 3), "out": None},
         CONV_W),
        (mpslayout.fc_weights, (FC_W,), {"input_shape": (4, 3, 5)},
         FC_W.reshape(6, 4, 3, 5).transpose(0, 2, 3, 1)),
        (mpslayout.fc_weights, (FC_W.T,), {"input_shape": [3, 5, 4], "layout": "IO",
                                          "flatten": "HWC", "dtype": np.float16},
         FC_W.reshape(6, 3, 5, 4).astype(np.float16)),
        (mpslayout.fc_weights, (FC_W,), {"input_shape": None, "threads": 1},
         FC_W.reshape(6, 1, 1, 60)),
        (mpslayout.fc_weights, (FC_W[:, ::-1],), {"input_shape": (4, 3, 5), "flatten": "CHW"},
         FC_W[:, ::-1].reshape(6, 4, 3, 5).transpose(0, 2, 3, 1)),
        (mpslayout.dense_reshape, (DENSE_W,), {"shape": (2, 3, 4)},
         (DENSE_W.reshape(4, 2, 3, 5).transpose(1, 2, 0, 3).reshape(24, 5), None)),
        (mpslayout.dense_reshape, (DENSE_W, None), {"shape": [2, 3, 4], "order": "HWC",
                                                   "target": "rows", "layout": "OI"},
         (DENSE_W, None)),
        (mpslayout.dense_reshape, (), {"w": DENSE_W.T, "shape": (2, 3, 4), "layout": "IO",
                                      "dtype": "float16"},
         (DENSE_W.reshape(4, 2, 3, 5).transpose(1, 2, 0, 3).reshape(24, 5).astype(np.float16),
          None)),
    ],
)
def test_common_calls_run_no_python_and_equal_numpy(fn, args, kwargs, want) -> None:
    assert _python_calls(fn, *args, **kwargs) == []
    got = fn(*args, **kwargs)
    if isinstance(want, tuple):  # dense_reshape: (weights, bias)
        assert isinstance(got, tuple)
        assert got[1] is None
        got, want = got[0], want[0]
    assert got.flags.c_contiguous
    assert got.dtype == want.dtype
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


def test_common_call_fills_out() -> None:
    out = np.full((8, 3, 3, 4), np.nan, np.float32)
    assert _python_calls(mpslayout.conv_weights, CONV_W, out=out) == []
    assert mpslayout.conv_weights(CONV_W, out=out) is out
    np.testing.assert_array_equal(out, CONV_W.transpose(0, 2, 3, 1))


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "error"),
    [
        (mpslayout.conv_weights, (CONV_W,), {"bogus": 1}, "unexpected keyword"),
        (mpslayout.conv_weights, (CONV_W,), {"x": CONV_W}, "unexpected keyword"),
        (mpslayout.conv_weights, (CONV_W, "OIHW"), {}, "positional"),
        (mpslayout.conv_weights, (), {}, "missing"),
        (mpslayout.conv_weights, (CONV_W,), {"layout": "OHWI"}, "layout"),
        (mpslayout.conv_weights, (CONV_W,), {"groups": 3}, "groups"),
        (mpslayout.conv_weights, (CONV_W,), {"groups": 1.0}, "groups"),
        (mpslayout.conv_weights, (CONV_W,), {"axes": (0, 1, 2, 3)}, "unexpected keyword"),
        (mpslayout.depthwise_weights, (CONV_W,), {}, "depthwise"),
        (mpslayout.depthwise_weights, (CONV_W[:, :1],), {"groups": 1}, "unexpected keyword"),
        (mpslayout.permute, (CONV_W,), {}, "missing"),
        (mpslayout.permute, (CONV_W, (0, 1, 2, 3)), {"w": CONV_W}, "unexpected keyword"),
        (mpslayout.permute, (CONV_W, (0, 1, 2, 3)), {"layout": "x"}, "unexpected keyword"),
        (mpslayout.permute, (CONV_W, (0, 1, 2, 3), None), {}, "positional"),
        (mpslayout.permute, (CONV_W, (0, 1, 2, 3)), {"axes": (0, 1, 2, 3)}, "multiple values"),
        (mpslayout.fc_weights, (FC_W,), {"input_shape": (4, 3, 4)}, "holds 48 values"),
        (mpslayout.fc_weights, (FC_W,), {"input_shape": (4, 3, 0)}, "positive"),
        (mpslayout.fc_weights, (FC_W,), {"input_shape": (4, 15)}, "3 ints"),
        (mpslayout.fc_weights, (FC_W,), {"flatten": "WHC"}, "flatten"),
        (mpslayout.fc_weights, (FC_W, (4, 3, 5)), {}, "positional"),
        (mpslayout.fc_weights, (CONV_W,), {}, "2-D"),
        (mpslayout.dense_reshape, (DENSE_W,), {"shape": (2, 3, 5)}, "holds 30 neurons"),
        (mpslayout.dense_reshape, (DENSE_W,), {"shape": (2, 3, 4), "target": "tiles"}, "target"),
        (mpslayout.dense_reshape, (DENSE_W,), {"shape": (2, 3, 4), "target": "subpixel"},
         "square"),
        (mpslayout.dense_reshape, (DENSE_W,), {}, "shape"),
        (mpslayout.dense_reshape, (DENSE_W, np.zeros(23)), {"shape": (2, 3, 4)}, "b must"),
    ],
)
def test_other_calls_reach_the_python_function(fn, args, kwargs, error) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        fn(*args, **kwargs)
    # the error comes from the Python function itself (its checks, or its signature)
    with pytest.raises((TypeError, ValueError), match=error):
        fn.__wrapped__(*args, **kwargs)


def test_other_fc_and_dense_calls_take_the_full_path_and_equal_numpy() -> None:
    want = FC_W.reshape(6, 4, 3, 5).transpose(0, 2, 3, 1)
    shape = (np.int64(4), 3, 5)  # a numpy int: the Python function reads it
    assert "fc_weights" in _python_calls(mpslayout.fc_weights, FC_W, input_shape=shape)
    np.testing.assert_array_equal(mpslayout.fc_weights(FC_W, input_shape=shape), want)
    np.testing.assert_array_equal(
        mpslayout.fc_weights(FC_W.astype(">f4"), input_shape=(4, 3, 5)), want)
    b = np.arange(24, dtype=np.float32)
    rows, bias = mpslayout.dense_reshape(DENSE_W, b, shape=(2, 3, 4))
    assert "dense_reshape" in _python_calls(mpslayout.dense_reshape, DENSE_W, b, shape=(2, 3, 4))
    np.testing.assert_array_equal(
        rows, DENSE_W.reshape(4, 2, 3, 5).transpose(1, 2, 0, 3).reshape(24, 5))
    np.testing.assert_array_equal(bias, b.reshape(4, 2, 3).transpose(1, 2, 0).reshape(24))
    sub, _ = mpslayout.dense_reshape(DENSE_W[:18], shape=(3, 3, 2), target="subpixel")
    assert sub.shape == (18, 1, 1, 5)


def test_shapes_whose_product_wraps_around_are_refused() -> None:
    # 1539092 * 1484310 * 48448661 == 24 + 6 * 2**64: in int64 arithmetic it equals the
    # weight's 24 rows, and would describe a box 2**66 elements large
    w = _array((24, 5), np.float32)
    for shape in [(1539092, 1484310, 48448661), (2**40, 2**40, 2**40), (2**62, 4, 6)]:
        with pytest.raises((ValueError, OverflowError)):
            mpslayout.dense_reshape(w, shape=shape)
        with pytest.raises((ValueError, OverflowError)):
            mpslayout.fc_weights(w.T, input_shape=shape)


def test_groups_warning_comes_from_the_full_path() -> None:
    w = _array((6, 2, 3, 3), np.float32)
    with pytest.warns(mpslayout.MPSLayoutWarning, match="groups=3"):
        got = mpslayout.conv_weights(w, groups=3)
    np.testing.assert_array_equal(got, w.transpose(0, 2, 3, 1))
    with pytest.warns(mpslayout.MPSLayoutWarning, match="groups=2"):
        assert "conv_weights" in _python_calls(mpslayout.conv_weights, w, groups=2)


def test_looks_like_the_function_it_wraps() -> None:
    for fn in (mpslayout.conv_weights, mpslayout.depthwise_weights, mpslayout.permute,
               mpslayout.fc_weights, mpslayout.dense_reshape):
        py = fn.__wrapped__
        assert inspect.isfunction(py)
        assert inspect.signature(fn) == inspect.signature(py)
        assert fn.__doc__ == py.__doc__
        assert fn.__doc__
        assert (fn.__name__, fn.__qualname__, fn.__module__) == (
            py.__name__, py.__qualname__, py.__module__)
        assert inspect.isroutine(fn)
        assert pickle.loads(pickle.dumps(fn)) is fn
        assert py.__name__ in pydoc.render_doc(fn, renderer=pydoc.plaintext)

    class Holder:
        convert = mpslayout.conv_weights

    np.testing.assert_array_equal(Holder().convert(CONV_W), CONV_W.transpose(0, 2, 3, 1))


def test_fast_path_type_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="kind"):
        _core.FastPath(len, "transpose")
    with pytest.raises(TypeError, match="callable"):
        _core.FastPath(3, "conv")


def _outcome(fn, args, kwargs):
    """(result bytes, dtype, shape) or the exception's type and message."""
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("ignore")
        try:
            r = fn(*args, **kwargs)
        except Exception as e:  # the type and text are what is compared
            return ("error", type(e).__name__, str(e))
    parts = r if isinstance(r, tuple) else (r,)
    return tuple(None if p is None else (p.dtype.str, p.shape, p.tobytes()) for p in parts)


_VALUES = {
    "layout": ["OIHW", "HWIO", "HWCM", "OI", "IO", "NCHW", 3, None, b"OIHW"],
    "groups": [1, 2, 0, -1, 1.0, True, np.int64(1), None],
    "in_channels": [None, 4, 8, 0, "8"],
    "input_shape": [None, (4, 3, 5), [4, 3, 5], (3, 5, 4), (4, 15), (0, 3, 5), (4.0, 3, 5),
                    (np.int64(4), 3, 5), "435"],
    "flatten": ["CHW", "HWC", "WHC", None],
    "shape": [(2, 3, 4), [2, 3, 4], (4, 3, 2), (2, 3), (2, -3, -4), None],
    "order": ["CHW", "HWC", "cHW", None],
    "target": ["rows", "subpixel", "conv_transpose", "tiles", None],
    "dtype": [None, np.float16, "float16", np.float32, "float64", np.int8, "bfloat16", "nope"],
    "threads": [None, 1, 2, 0, -1, 1.5, True, 2**70],
    "axes": [(3, 1, 0, 2), [0, 1, 2, 3], (0, 1, 2), (0, 0, 1, 2), (-1, 0, 1, 2), "0123", None],
}


@pytest.mark.parametrize("seed", range(6))
def test_random_calls_behave_as_the_python_function(seed) -> None:
    """Every call, common or not, gives what the wrapped Python function gives: the same
    bits, dtype and shape, or the same exception type and message."""
    rng = np.random.default_rng(seed)
    odd = [[[1.0, 2.0], [3.0, 4.0]], np.float32(3.0), _array((60, 6), ">f4"),
           _array((24, 5), np.int32)]
    inputs = {
        mpslayout.permute: [_array((8, 4, 3, 3), np.float32), _array((8, 4, 3, 3), np.uint8)],
        mpslayout.conv_weights: [_array((8, 4, 3, 3), np.float32),
                                 _array((8, 4, 3, 3), np.float64)[:, :, ::-1]],
        mpslayout.depthwise_weights: [_array((8, 1, 3, 3), np.float16),
                                      _array((3, 3, 8, 1), np.float32)],
        mpslayout.fc_weights: [_array((6, 60), np.float32), _array((60, 6), np.float32),
                               _array((6, 60), np.float64)[::-1]],
        mpslayout.dense_reshape: [_array((24, 5), np.float32), _array((5, 24), np.float16)],
    }
    options = {
        mpslayout.permute: ["axes", "dtype", "threads"],
        mpslayout.conv_weights: ["layout", "groups", "dtype", "threads"],
        mpslayout.depthwise_weights: ["layout", "in_channels", "dtype", "threads"],
        mpslayout.fc_weights: ["input_shape", "layout", "flatten", "dtype", "threads"],
        mpslayout.dense_reshape: ["shape", "layout", "order", "target", "dtype", "threads"],
    }
    for _ in range(400):
        fn = list(options)[rng.integers(len(options))]
        pool = inputs[fn] + (odd if rng.random() < 0.15 else [])
        x = pool[rng.integers(len(pool))]
        kwargs = {}
        for name in options[fn]:
            if rng.random() < 0.7:
                vals = _VALUES[name]
                # the first values are the valid spellings: take them half the time
                k = rng.integers(3) if rng.random() < 0.5 else rng.integers(len(vals))
                kwargs[name] = vals[k]
        if fn is mpslayout.permute:
            args = (x, kwargs.pop("axes", (0, 1, 2, 3)))
        else:
            args = (x,)
        if rng.random() < 0.3:  # out= of the right shape and dtype, when there is one
            ref = _outcome(fn.__wrapped__, args, kwargs)
            if ref[0] != "error":
                dt, shape, _ = ref[0]
                kwargs["out"] = np.empty(shape, dt)
        want = _outcome(fn.__wrapped__, args, dict(kwargs))
        if "out" in kwargs:
            kwargs["out"] = np.empty_like(kwargs["out"])
        got = _outcome(fn, args, kwargs)
        assert got == want, (fn.__name__, args[1:], kwargs)
