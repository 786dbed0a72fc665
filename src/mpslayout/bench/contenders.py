"""What runs against what: mpslayout, numpy, torch, MLX and memcpy on one configuration,
and the bit-for-bit check that comes before any timing."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from .cases import DTYPES, BenchmarkError, Case

REFERENCE = "np.copyto"  # the "vs numpy" baseline
CEILING = "memcpy"


@dataclass
class Contender:
    """A call to time, the bytes it reads + writes, and how to fetch its result.

    ``fn`` is a C-level callable where one exists (a :func:`functools.partial` of the
    function, or a bound method): a Python frame of the harness's own would cost each
    contender a few microseconds in the ``cold`` mode, where even the interpreter's code
    comes from memory.
    """

    name: str
    fn: Callable[[], Any]
    nbytes: int
    threads: int
    result: Callable[[Any], np.ndarray]
    note: str = ""


@dataclass
class Setup:
    """Inputs, preallocated outputs and contenders of one (case, dtype, threads) config."""

    contenders: list[Contender]
    notes: list[str] = field(default_factory=list)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _mlx() -> Any:
    try:
        import mlx.core as mx
    except ImportError:
        return None
    return mx


def _out_dtype(dtype: str) -> type | None:
    return np.float16 if dtype == "float16" else None


def make_input(case: Case, seed: int = 0) -> np.ndarray:
    """Deterministic float32 input (normal values: most of them round when cast to float16)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(case.shape, dtype=np.float32)


def build_setup(
    case: Case, x: np.ndarray, dtype: str, threads: int, torch_mod: Any = None,
    mlx_mod: Any = None,
) -> Setup:
    """The contenders for one configuration, with their outputs preallocated."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    cast = _out_dtype(dtype)
    out_dt = np.dtype(cast or x.dtype)
    bytes_in = x.nbytes
    bytes_out = int(np.prod(case.out_shape)) * out_dt.itemsize
    moved = bytes_in + bytes_out
    notes: list[str] = []

    out_mps = np.empty(case.out_shape, out_dt)
    view = case.view(x)
    if view.size != out_mps.size:
        raise BenchmarkError(f"{case.name}: numpy view has {view.size} elements, "
                             f"result {out_mps.size}")
    out_np = np.empty(case.out_shape, out_dt)
    target = out_np.reshape(view.shape)
    if not np.shares_memory(target, out_np):  # pragma: no cover - a Case definition bug
        raise BenchmarkError(f"{case.name}: out.reshape(view.shape) is not a view")

    run_mps = case.mps(x, out_mps, cast, threads)
    run_copyto = partial(np.copyto, target, view)
    contenders = [
        Contender("mpslayout", run_mps, moved, threads, lambda r: out_mps),
        Contender(REFERENCE, run_copyto, moved, 1, lambda r: out_np),
    ]

    run_asc: Callable[[], Any]
    if cast is not None:
        run_asc = partial(view.astype, cast, order="C")
        asc_name = "np.astype"
    elif view.flags.c_contiguous:
        # ascontiguousarray would return the input itself, without copying anything
        run_asc = partial(view.copy, order="C")
        asc_name = "np.ascontiguousarray"
        notes.append("the view is already contiguous: np.ascontiguousarray and torch "
                     ".contiguous() would not copy, so .copy() / .clone() are timed")
    else:
        run_asc = partial(np.ascontiguousarray, view)
        asc_name = "np.ascontiguousarray"
    contenders.append(Contender(asc_name, run_asc, moved, 1,
                                lambda r: r.reshape(case.out_shape)))

    if torch_mod is not None:
        tview = case.torch_view(torch_mod.from_numpy(x))
        run_torch: Callable[[], Any]
        if cast is not None:
            run_torch = partial(tview.to, torch_mod.float16,
                                memory_format=torch_mod.contiguous_format)
        elif tview.is_contiguous():
            run_torch = partial(tview.clone, memory_format=torch_mod.contiguous_format)
        else:
            run_torch = tview.contiguous

        def torch_result(r: Any) -> np.ndarray:
            if not r.is_contiguous():
                raise BenchmarkError(f"{case.name}: torch's result is not contiguous")
            return r.numpy().reshape(case.out_shape)

        contenders.append(Contender("torch", run_torch, moved, threads, torch_result))

    if mlx_mod is not None:
        contenders.append(_mlx_contender(case, x, cast, moved, mlx_mod))
        notes.append("mlx: np.asarray(mx.contiguous(view of mx.array(x))) on MLX's CPU "
                     "stream (casts: .astype(mx.float16) first); the timed call includes "
                     "mx.array(x), MLX's copy of the numpy input")

    src_bytes = x.reshape(-1).view(np.uint8)
    dst_bytes = np.empty_like(src_bytes)

    run_memcpy = partial(np.copyto, dst_bytes, src_bytes)
    contenders.append(Contender(CEILING, run_memcpy, 2 * bytes_in, 1, lambda r: dst_bytes))
    return Setup(contenders, notes)


def _mlx_contender(case: Case, x: np.ndarray, cast: type | None, moved: int,
                   mx: Any) -> Contender:
    """MLX's CPU: ``case.view`` (transpose / reshape / slice) of ``mx.array(x)``,
    materialized contiguous and handed to numpy (``np.asarray`` evaluates it)."""
    cpu = mx.cpu

    def run_mlx() -> np.ndarray:
        with mx.stream(cpu):
            v = case.view(mx.array(x))
            if cast is not None:
                v = v.astype(mx.float16)
            return np.asarray(mx.contiguous(v))

    def mlx_result(r: np.ndarray) -> np.ndarray:
        if not r.flags.c_contiguous:
            raise BenchmarkError(f"{case.name}: mlx's result is not contiguous")
        return r.reshape(case.out_shape)

    return Contender("mlx", run_mlx, moved, 1, mlx_result)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ua = np.ascontiguousarray(a).reshape(-1).view(f"u{a.itemsize}")
    ub = np.ascontiguousarray(b).reshape(-1).view(f"u{b.itemsize}")
    return bool(np.array_equal(ua, ub))


def _describe_mismatch(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"got {a.shape} {a.dtype}, expected {b.shape} {b.dtype}"
    diff = np.flatnonzero(a.reshape(-1).view(f"u{a.itemsize}") != b.reshape(-1).view(
        f"u{b.itemsize}"))
    first = np.unravel_index(int(diff[0]), a.shape)
    return (f"{diff.size} of {a.size} elements differ; first at index {tuple(map(int, first))}: "
            f"got {a[first]!r}, expected {b[first]!r}")


def verify(case: Case, x: np.ndarray, setup: Setup, dtype: str, threads: int) -> None:
    """Run every contender once and compare its result with numpy's, bit for bit.

    Raises :class:`BenchmarkError` on any difference. This is also the warm-up.
    """
    for c in setup.contenders:  # garbage in the preallocated outputs: a no-op must fail
        if c.name in ("mpslayout", REFERENCE):
            c.result(None).reshape(-1).view(np.uint8)[:] = 0xA5
    results: dict[str, np.ndarray] = {}
    for c in setup.contenders:
        r = c.fn()
        results[c.name] = c.result(r)
        first = r[0] if isinstance(r, tuple) else r  # dense_reshape: (weights, bias)
        if c.name == "mpslayout" and not (
            isinstance(first, np.ndarray) and np.may_share_memory(first, results[c.name])
        ):
            raise BenchmarkError(f"{case.name}: mpslayout did not return its out= array")
    expected = case.view(x).astype(results[REFERENCE].dtype).reshape(case.out_shape)
    checks = [(REFERENCE, expected)] + [
        (name, results[REFERENCE]) for name in results if name not in (REFERENCE, CEILING)
    ]
    for name, want in checks:
        if not _same_bits(results[name], want):
            raise BenchmarkError(
                f"{case.label()} {dtype} threads={threads}: {name}'s result differs from "
                f"numpy's: {_describe_mismatch(results[name], want)}"
            )
    if not _same_bits(results[CEILING], x.reshape(-1).view(np.uint8)):
        raise BenchmarkError(f"{case.name}: the memcpy contender copied the wrong bytes")


def check_case(case: Case, dtype: str = "float32", threads: int = 1,
               use_torch: bool = True, use_mlx: bool = True) -> dict[str, np.ndarray]:
    """Verify one configuration and return each contender's result (for tests)."""
    x = make_input(case)
    torch_mod = _torch() if use_torch else None
    mlx_mod = _mlx() if use_mlx else None
    setup = build_setup(case, x, dtype, threads, torch_mod, mlx_mod)
    verify(case, x, setup, dtype, threads)
    return {c.name: c.result(c.fn()).copy() for c in setup.contenders}
