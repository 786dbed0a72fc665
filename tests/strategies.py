"""Hypothesis strategies for the twin tests: small shapes, dtypes, random bits, odd strides.

Array values come from random bits (plus a sprinkle of special values: NaNs with payloads,
signalling NaNs, infinities, signed zeros, subnormals, rounding ties), so that a converter
that goes through floating point arithmetic instead of moving bits gets caught. Memory
layouts cover C order, Fortran order, steps, negative steps, permuted storage, zero strides
(np.broadcast_to) and unaligned buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

try:
    import ml_dtypes

    BFLOAT16: np.dtype | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - optional dependency
    BFLOAT16 = None

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

_BF16 = [BFLOAT16] if BFLOAT16 is not None else []

# dtypes permute/convert keep (itemsize 1, 2, 4 or 8)
GENERIC_DTYPES: list[np.dtype] = [
    np.dtype(t)
    for t in (
        np.float32,
        np.float16,
        np.float64,
        np.uint8,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.bool_,
        np.complex64,
    )
] + _BF16

# dtypes the MPS converters accept (float64 becomes float32)
MPS_DTYPES: list[np.dtype] = [F32, F16, F64, np.dtype(np.uint8), *_BF16]

# casts dtype= may request
CASTS: list[tuple[np.dtype, np.dtype]] = [(F32, F16), (F16, F32), (F64, F32)]
if BFLOAT16 is not None:
    CASTS += [(F32, BFLOAT16), (BFLOAT16, F32)]

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# bit patterns worth hitting on purpose, by float type
_SPECIALS: dict[str, list[int]] = {
    "float16": [
        0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE01, 0x7FFF, 0x8000, 0x0000,
        0x0001, 0x03FF, 0x0400, 0x7BFF, 0x3C00, 0xBC00,
    ],
    "bfloat16": [
        0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFC1, 0x7FFF, 0x8000, 0x0000,
        0x0001, 0x007F, 0x7F7F, 0x3F80, 0xBF80,
    ],
    "float32": [
        0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00123, 0x7FBFFFFF,
        0x80000000, 0x00000000, 0x00000001, 0x007FFFFF, 0x7F7FFFFF,
        0x477FEFFF, 0x477FF000, 0x47800000,  # around float16's max and overflow
        0x33000000, 0x33000001, 0x387FC000,  # float16 subnormal range and ties
        0x3F801000, 0x3F803000, 0x3F808000, 0x3F818000,  # float16 / bfloat16 ties
        0x7F7F8000, 0x7F7FFFFF,  # bfloat16 rounds up to inf
    ],
    "float64": [
        0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0x7FF0000000000001,
        0xFFF8000012345678, 0x8000000000000000, 0x0000000000000001, 0x3FF0000010000000,
        0x3FF0000030000000, 0x36A0000000000000, 0x47EFFFFFE0000000, 0x47EFFFFFF0000000,
        0x380FFFFFF0000000,
    ],
    "complex64": [0x7FC000007F800001, 0x8000000000000000],
}  # fmt: skip


def prod(shape: Sequence[int]) -> int:
    return math.prod(int(n) for n in shape)


def random_values(rng: np.random.Generator, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A C-contiguous array of random bits (bool: 0/1) with special values sprinkled in."""
    dt = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    n = prod(shape)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    u = _UINT[dt.itemsize]
    bits = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8).view(u).copy()
    if dt.kind == "f" or dt.name in ("bfloat16", "complex64"):
        # a third of the elements: moderate magnitudes (so casts round rather than overflow)
        moderate = rng.standard_normal(n).astype(dt)
        pick = rng.random(n) < 0.35
        bits[pick] = moderate.view(u)[pick]
        specials = np.array(_SPECIALS[dt.name], dtype=u)
        pick = rng.random(n) < 0.2
        bits[pick] = specials[rng.integers(0, len(specials), size=int(pick.sum()))]
    return bits.view(dt).reshape(shape)


def _copy_bits(dst: np.ndarray, src: np.ndarray) -> None:
    u = _UINT[src.dtype.itemsize]
    dst.view(u)[...] = src.view(u)


@st.composite
def relayout(draw: st.DrawFn, values: np.ndarray, allow_broadcast: bool = False) -> np.ndarray:
    """An array with exactly the bits of ``values`` but another memory layout."""
    forms = ["c", "strided", "strided", "fortran", "unaligned", "list"]
    if allow_broadcast:
        forms.append("broadcast")
    form = draw(st.sampled_from(forms))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dt = values.dtype
    shape = values.shape
    if form == "c":
        return values.copy()  # (np.ascontiguousarray would make a 0-d array 1-d)
    if form == "fortran":
        return np.asfortranarray(values) if values.ndim else values.copy()
    if form == "list":
        # a plain (nested) Python list is array-like too; only where it round-trips exactly
        as_list = values.tolist()
        back = np.asarray(as_list)
        if back.dtype == dt and back.shape == shape and back.tobytes() == values.tobytes():
            return as_list
        return values.copy()
    if form == "unaligned":
        nbytes = values.size * dt.itemsize
        buf = np.zeros(nbytes + 1, dtype=np.uint8)
        buf[1:] = values.reshape(-1).view(np.uint8)
        return buf[1:].view(dt).reshape(shape)
    if form == "broadcast":
        # zero strides: values is replaced by a broadcast of its first entries along
        # some axes (so the caller must use the returned array, not ``values``)
        axes = [i for i in range(len(shape)) if draw(st.booleans())]
        base = values[tuple(slice(0, 1) if i in axes else slice(None) for i in range(len(shape)))]
        return np.broadcast_to(base, shape)
    # strided: permuted storage order, steps of 1..3, some of them negative
    nd = len(shape)
    perm = draw(st.permutations(range(nd))) if nd else []
    steps = [draw(st.sampled_from([1, 2, 3, -1, -2])) for _ in range(nd)]
    big = [shape[i] * abs(steps[i]) + draw(st.integers(0, 1)) for i in range(nd)]
    storage = rng.integers(0, 256, size=prod(big) * dt.itemsize, dtype=np.uint8)
    base = storage.view(_UINT[dt.itemsize]).view(dt).reshape([big[p] for p in perm])
    base = base.transpose(np.argsort(perm)) if nd else base
    index = []
    for i in range(nd):
        s = steps[i]
        if s > 0:
            index.append(slice(0, shape[i] * s, s))
        else:
            index.append(slice(shape[i] * -s - 1, None, s) if shape[i] else slice(0, 0))
    view = base[tuple(index)] if nd else base[...]
    assert view.shape == shape
    _copy_bits(view, values)
    return view


@st.composite
def arrays(
    draw: st.DrawFn, shape: Sequence[int], dtype: np.dtype, allow_broadcast: bool = True
) -> np.ndarray:
    """Random-bit array of ``shape``/``dtype`` in a random memory layout."""
    seed = draw(st.integers(0, 2**32 - 1))
    values = random_values(np.random.default_rng(seed), shape, dtype)
    return draw(relayout(values, allow_broadcast=allow_broadcast))


DIM_SIZES = [1, 2, 3, 4, 5, 7, 8, 13]


def dims(allow_zero: bool = False, max_value: int = 13) -> st.SearchStrategy[int]:
    """One axis length: 1, small primes, multiples of 4 and not, 0 if allowed."""
    sizes = [n for n in DIM_SIZES if n <= max_value]
    if allow_zero:
        sizes = [0, *sizes]
    return st.sampled_from(sizes)


@st.composite
def shapes(
    draw: st.DrawFn,
    min_dims: int,
    max_dims: int,
    budget: int = 2000,
    allow_zero: bool = False,
    max_value: int = 13,
) -> tuple[int, ...]:
    """A shape with at most ``budget`` elements (largest axes shrunk to fit)."""
    nd = draw(st.integers(min_dims, max_dims))
    shape = [draw(dims(max_value=max_value)) for _ in range(nd)]
    if allow_zero and nd and draw(st.integers(1, 8)) == 8:  # now and then, one empty axis
        shape[draw(st.integers(0, nd - 1))] = 0
    fit_budget(shape, budget)
    return tuple(shape)


def fit_budget(shape: list[int], budget: int) -> list[int]:
    """Shrink the largest axes of ``shape`` (in place) until prod(shape) <= budget."""
    while prod(shape) > budget:
        i = int(np.argmax(shape))
        shape[i] = max(1, shape[i] // 2)
    return shape


@st.composite
def generic_dtypes(draw: st.DrawFn) -> tuple[np.dtype, Any]:
    """(input dtype, dtype= argument) for permute / convert."""
    dt = draw(st.sampled_from(GENERIC_DTYPES))
    return dt, draw(_dtype_arg(dt))


@st.composite
def mps_dtypes(draw: st.DrawFn) -> tuple[np.dtype, Any]:
    """(input dtype, dtype= argument) for the MPS converters.

    float64 input is never asked to stay float64: the MPS converters make it float32 and
    the contract leaves dtype=float64 open for them.
    """
    dt = draw(st.sampled_from(MPS_DTYPES))
    return dt, draw(_dtype_arg(dt, identity=dt != F64))


def _dtype_arg(dt: np.dtype, identity: bool = True) -> st.SearchStrategy[Any]:
    targets = [t for s, t in CASTS if s == dt]
    options: list[Any] = [None, None, *([dt] if identity else []), *targets]
    # numpy spells dtypes as strings too ("float16"); bfloat16 only as the ml_dtypes type
    options += [t.name for t in options[2:] if t.name != "bfloat16"]
    return st.sampled_from(options)
