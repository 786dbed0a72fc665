"""MLX affine quantization (mpslayout.mlx.quantize) against its per-group loop twin
(mpslayout.mlx.slow_quantize) and, when mlx is installed, bit for bit against
``mx.quantize`` / ``mx.dequantize`` and ``nn.QuantizedLinear`` / ``nn.QuantizedEmbedding``
on MLX's CPU."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import BFLOAT16
from test_twins import PROPERTY, assert_bit_equal

from mpslayout.mlx import quantize as quant
from mpslayout.mlx import slow_quantize as slow

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
DTYPES = [F32, F16] + ([BFLOAT16] if BFLOAT16 is not None else [])
# largest magnitude per dtype that keeps every scale finite in it (1-bit: scale = span)
TOP = {F32: 1e30, F16: 500.0, BFLOAT16: 1e30}  # the outlier pattern is 50x
HAVE_MLX = importlib.util.find_spec("mlx") is not None
PATTERNS = ("normal", "constant", "zeros", "negative", "positive", "outlier", "ties")


def _group(rng: np.random.Generator, pattern: str, size: int, scale: float) -> np.ndarray:
    x = rng.standard_normal(size) * scale
    if pattern == "constant":
        x[:] = x[0]
    elif pattern == "zeros":
        x[:] = 0.0
    elif pattern == "negative":
        x = -np.abs(x) - scale * 1e-3
    elif pattern == "positive":
        x = np.abs(x) + scale * 1e-3
    elif pattern == "outlier":
        x[rng.integers(size)] = scale * 50
    elif pattern == "ties":  # values on half steps of a 0..15 grid: rint's ties
        x = (rng.integers(0, 31, size) / 2.0) * scale
    return x


def make_weights(seed: int, dtype: np.dtype, lead: tuple[int, ...], n_groups: int,
                 group_size: int, magnitude: float) -> np.ndarray:
    """Rows of groups, each group drawn with one of PATTERNS."""
    rng = np.random.default_rng(seed)
    rows = int(np.prod(lead))
    w = np.empty((rows, n_groups * group_size))
    for r in range(rows):
        for g in range(n_groups):
            pattern = PATTERNS[rng.integers(len(PATTERNS))]
            w[r, g * group_size:(g + 1) * group_size] = _group(rng, pattern, group_size,
                                                               magnitude)
    return w.reshape(*lead, -1).astype(dtype)


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    dtype = draw(st.sampled_from(DTYPES))
    bits = draw(st.sampled_from(quant.BITS))
    group_size = draw(st.sampled_from(quant.GROUP_SIZES))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    n_groups = draw(st.integers(1, 2))
    magnitude = draw(st.sampled_from([1e-40, 1e-30, 1e-6, 1e-2, 1.0, 1e3, TOP[dtype]]))
    if dtype != F32:
        magnitude = max(magnitude, 1e-6)  # float16 / bfloat16 flush 1e-30 to zero
    seed = draw(st.integers(0, 2**32 - 1))
    return make_weights(seed, dtype, lead, n_groups, group_size, magnitude), group_size, bits


# --------------------------------------------------------------------------- the twin


@PROPERTY
@given(cases())
def test_quantize_matches_twin(case: tuple[np.ndarray, int, int]) -> None:
    w, group_size, bits = case
    got = quant.affine_quantize(w, group_size, bits)
    want = slow.affine_quantize(w, group_size, bits)
    for g, x in zip(got, want):
        assert_bit_equal(g, x)
    assert got[0].dtype == np.uint32
    assert got[0].shape == (*w.shape[:-1],
                                                          w.shape[-1] * bits // 32)
    assert got[1].dtype == w.dtype
    assert got[1].shape == (*w.shape[:-1],
                                                        w.shape[-1] // group_size)


@PROPERTY
@given(cases())
def test_dequantize_matches_twin(case: tuple[np.ndarray, int, int]) -> None:
    w, group_size, bits = case
    packed = slow.affine_quantize(w, group_size, bits)
    assert_bit_equal(quant.affine_dequantize(*packed, group_size, bits),
                     slow.affine_dequantize(*packed, group_size, bits))


@pytest.mark.parametrize("bits", quant.BITS)
def test_every_code_unpacks_as_the_twin(bits: int) -> None:
    """Random words (every code pattern) unpack as the twin's bit stream does."""
    rng = np.random.default_rng(bits)
    wq = rng.integers(0, 2**32, (3, 128 * bits // 32), dtype=np.uint32)
    ones = np.ones((3, 1), F32)
    values = quant.affine_dequantize(wq, ones, 0 * ones, 128, bits)
    assert_bit_equal(values, slow.affine_dequantize(wq, ones, 0 * ones, 128, bits))
    assert values.max() <= 2**bits - 1


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda: quant.affine_quantize(np.ones((2, 48), F32), 32, 4), ValueError,
     ["last dimension 48", "group_size=32"]),
    (lambda: quant.affine_quantize(np.ones((2, 64), F32), 64, 7), ValueError, ["bits=7"]),
    (lambda: quant.affine_quantize(np.ones((2, 64), F32), 16, 4), ValueError,
     ["group_size=16"]),
    (lambda: quant.affine_quantize(np.ones((2, 64), F32), 64, 4.0), TypeError, ["bits"]),
    (lambda: quant.affine_quantize(np.ones((2, 64), np.int32), 64, 4), TypeError,
     ["w has dtype int32"]),
    (lambda: quant.affine_quantize(np.ones(64, F32), 64, 4), ValueError, ["w must have"]),
    (lambda: quant.affine_quantize(np.full((2, 64), np.nan, F32), 64, 4), ValueError,
     ["w holds NaN or infinity"]),
    (lambda: quant.affine_quantize(np.r_[np.inf, np.ones(63)].astype(F16)[None], 64, 4),
     ValueError, ["w holds NaN or infinity"]),
    (lambda: quant.affine_quantize(np.r_[3e38, -3e38, np.ones(62)].astype(F32)[None], 64, 4),
     ValueError, ["overflows float32"]),
    (lambda: quant.affine_dequantize(np.ones((2, 8), np.int32), np.ones((2, 1), F32),
                                     np.ones((2, 1), F32), 64, 4), TypeError,
     ["wq has dtype int32"]),
    (lambda: quant.affine_dequantize(np.ones((2, 8), np.uint32), np.ones((2, 2), F32),
                                     np.ones((2, 2), F32), 64, 4), ValueError,
     ["scales has shape (2, 2)", "(2, 1)"]),
    (lambda: quant.affine_dequantize(np.ones((2, 8), np.uint32), np.ones((2, 1), F32),
                                     np.ones((2, 1), F16), 64, 4), TypeError,
     ["biases has dtype float16"]),
])
def test_refusals_name_the_argument(call: Any, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_quantize_module_imports_only_numpy() -> None:
    """Computed by this package: quantize.py and its twin never import mlx."""
    for module in (quant, slow):
        tree = ast.parse(pathlib.Path(str(module.__file__)).read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import) else
                               [ast.alias(node.module or "")])}
        assert names <= {"__future__", "typing", "numpy"}, names


# --------------------------------------------------------------------------- MLX itself


@pytest.fixture(scope="module")
def mx() -> Any:
    return pytest.importorskip("mlx.core")


def _to_mx(mx: Any, a: np.ndarray) -> Any:
    if BFLOAT16 is not None and a.dtype == BFLOAT16:
        return mx.array(a.view(np.uint16)).view(mx.bfloat16)
    return mx.array(a)


def _to_np(mx: Any, x: Any) -> np.ndarray:
    if x.dtype == mx.bfloat16:
        assert BFLOAT16 is not None
        return np.ascontiguousarray(np.asarray(x.view(mx.uint16)).view(BFLOAT16))
    return np.ascontiguousarray(np.asarray(x))


def _mlx_has_bits(mx: Any, bits: int) -> bool:
    """1 bit came after mlx 0.29 (0.29.3 refuses it, 0.32.4 has it)."""
    try:
        mx.quantize(mx.zeros((1, 32)), group_size=32, bits=bits)
    except ValueError:
        return False
    return True


def _check_against_mlx(mx: Any, w: np.ndarray, group_size: int, bits: int) -> None:
    if not _mlx_has_bits(mx, bits):
        pytest.skip(f"mlx {mx.__version__} has no {bits}-bit affine mode")
    with mx.stream(mx.cpu):
        want = mx.quantize(_to_mx(mx, w), group_size=group_size, bits=bits)
        got = quant.affine_quantize(w, group_size, bits)
        for g, x in zip(got, want):
            assert_bit_equal(g, _to_np(mx, x))
        back = mx.dequantize(*want, group_size=group_size, bits=bits)
        assert_bit_equal(quant.affine_dequantize(*got, group_size, bits), _to_np(mx, back))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", quant.BITS)
@pytest.mark.parametrize("group_size", quant.GROUP_SIZES)
def test_bit_identical_to_mx_quantize(mx: Any, dtype: np.dtype, bits: int,
                                      group_size: int) -> None:
    """10 weights per (dtype, bits, group_size): every group pattern at six magnitudes."""
    for seed, magnitude in enumerate([1e-30, 1e-6, 1e-2, 1.0, 1.0, 1.0, 1e3, 1e3,
                                      TOP[dtype], TOP[dtype]]):
        if dtype != F32:
            magnitude = max(magnitude, 1e-6)
        w = make_weights(seed, dtype, (4, 3), 3, group_size, magnitude)
        _check_against_mlx(mx, w, group_size, bits)


@pytest.mark.skipif(not HAVE_MLX, reason="needs mlx")
@PROPERTY
@given(cases())
def test_bit_identical_to_mx_quantize_property(case: tuple[np.ndarray, int, int]) -> None:
    import mlx.core as mx

    assume(_mlx_has_bits(mx, case[2]))
    _check_against_mlx(mx, *case)


def test_float64_is_rounded_to_float32_as_mx_array_does(mx: Any) -> None:
    w = make_weights(3, np.dtype(np.float64), (5,), 2, 64, 1.0)
    with mx.stream(mx.cpu):
        want = mx.quantize(mx.array(w), group_size=64, bits=4)
    for g, x in zip(quant.affine_quantize(w, 64, 4), want):
        assert_bit_equal(g, _to_np(mx, x))


@pytest.mark.parametrize("dtype", [F32, F16], ids=str)
@pytest.mark.parametrize(("bits", "group_size"), [(4, 64), (8, 32), (3, 128), (2, 64)])
def test_quantized_linear_loads_the_arrays(mx: Any, dtype: np.dtype, bits: int,
                                           group_size: int) -> None:
    nn = pytest.importorskip("mlx.nn")
    rng = np.random.default_rng(bits)
    w = make_weights(bits, dtype, (24,), 2, group_size, 0.1)
    bias = rng.standard_normal(24).astype(dtype)
    x = mx.array(rng.standard_normal((5, w.shape[1])).astype(dtype))
    with mx.stream(mx.cpu):
        linear = nn.Linear(w.shape[1], 24)
        linear.update({"weight": mx.array(w), "bias": mx.array(bias)})
        theirs = nn.QuantizedLinear.from_linear(linear, group_size=group_size, bits=bits)
        ours = nn.QuantizedLinear(w.shape[1], 24, bias=True, group_size=group_size,
                                  bits=bits)
        wq, scales, biases = quant.affine_quantize(w, group_size, bits)
        ours.load_weights([("weight", mx.array(wq)), ("scales", mx.array(scales)),
                           ("biases", mx.array(biases)), ("bias", mx.array(bias))])
        assert_bit_equal(_to_np(mx, ours(x)), _to_np(mx, theirs(x)))

        emb = nn.Embedding(24, w.shape[1])
        emb.update({"weight": mx.array(w)})
        q_theirs = nn.QuantizedEmbedding.from_embedding(emb, group_size=group_size, bits=bits)
        q_ours = nn.QuantizedEmbedding(24, w.shape[1], group_size=group_size, bits=bits)
        q_ours.load_weights([("weight", mx.array(wq)), ("scales", mx.array(scales)),
                             ("biases", mx.array(biases))])
        ids = mx.array(rng.integers(0, 24, 7))
        assert_bit_equal(_to_np(mx, q_ours(ids)), _to_np(mx, q_theirs(ids)))
