"""Benchmark suite: mpslayout against numpy, PyTorch and memcpy on real weight shapes.

Every case is a layout conversion an MPS exporter really performs (ResNet-50 and VGG-16
convolutions, VGG-16's Linear after flatten, the DCGAN Dense->Reshape, a depthwise
kernel, MPSImage slices), timed in float32 and fused to float16, with one thread and with
all threads. The contenders of one case run interleaved in one process after a warm-up,
each timed run preceded by a cache flush (cold runs):

- ``mpslayout``: the public converter with ``out=`` preallocated.
- ``np.copyto``: ``np.copyto(preallocated, view)``, ``view`` the equivalent numpy view.
- ``np.ascontiguousarray``: ``np.ascontiguousarray(view)``, or ``view.astype(np.float16,
  order="C")`` for the casts (it allocates its result, as a user's code would).
- ``torch``: ``t.permute(...).contiguous()`` (casts: ``.to(torch.float16,
  memory_format=torch.contiguous_format)``), when torch is importable.
- ``memcpy``: ``np.copyto`` of a contiguous uint8 buffer as large as the input: the ceiling.

Before timing, every contender's result is checked bit for bit against ``np.copyto``'s;
a mismatch raises :class:`BenchmarkError`. Run it with ``mpslayout bench`` or
``python bench/run.py``; ``bench/README.md`` explains the output.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import timeit
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from . import _core
from .engine import get_threads
from .images import image_slices
from .mps import conv_weights, dense_reshape, depthwise_weights, fc_weights

__all__ = [
    "CASES",
    "BenchmarkError",
    "Case",
    "build_parser",
    "check_case",
    "machine_info",
    "main",
    "render_markdown",
    "run_benchmark",
    "run_from_args",
    "select_cases",
    "tiny_call",
]

FULL_REPEATS = 15
QUICK_REPEATS = 3
DTYPES = ("float32", "float16")
DEFAULT_L3 = 32 << 20
REFERENCE = "np.copyto"  # the "vs numpy" baseline
CEILING = "memcpy"


class BenchmarkError(RuntimeError):
    """A contender's result differs from numpy's: the benchmark refuses to time it."""


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One conversion: an input shape, the mpslayout call and its numpy/torch equivalents.

    ``view(x)`` is a numpy view of ``x`` whose elements, in C order, are the result's;
    its shape may differ from ``out_shape`` (``out.reshape(view.shape)`` must be a view).
    ``torch_view(t)`` is the same view of a torch tensor. ``mps(x, out, dtype, threads)``
    fills ``out`` and returns the result.
    """

    name: str
    shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    mps: Callable[[np.ndarray, np.ndarray, Any, int], np.ndarray]
    view: Callable[[np.ndarray], np.ndarray]
    torch_view: Callable[[Any], Any]
    description: str = ""
    quick: bool = False

    def label(self) -> str:
        return f"{self.name} {_shape_str(self.shape)}"


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(int(s)) for s in shape) + ")"


def _conv(name: str, o: int, i: int, kh: int, kw: int, what: str, quick: bool = False) -> Case:
    return Case(
        name=name,
        shape=(o, i, kh, kw),
        out_shape=(o, kh, kw, i),
        mps=lambda x, out, dt, th: conv_weights(x, dtype=dt, out=out, threads=th),
        view=lambda x: x.transpose(0, 2, 3, 1),
        torch_view=lambda t: t.permute(0, 2, 3, 1),
        description=f"{what}: conv_weights, OIHW -> OHWI",
        quick=quick,
    )


def _fc_flatten(name: str, o: int, c: int, h: int, w: int, what: str) -> Case:
    return Case(
        name=name,
        shape=(o, c * h * w),
        out_shape=(o, h, w, c),
        mps=lambda x, out, dt, th: fc_weights(
            x, input_shape=(c, h, w), dtype=dt, out=out, threads=th
        ),
        view=lambda x: x.reshape(o, c, h, w).transpose(0, 2, 3, 1),
        torch_view=lambda t: t.reshape(o, c, h, w).permute(0, 2, 3, 1),
        description=f"{what}: fc_weights(input_shape=({c},{h},{w})), "
        f"(O, C*H*W) -> (O, H, W, C)",
    )


def _fc_vector(name: str, o: int, n: int, what: str) -> Case:
    return Case(
        name=name,
        shape=(o, n),
        out_shape=(o, 1, 1, n),
        mps=lambda x, out, dt, th: fc_weights(x, dtype=dt, out=out, threads=th),
        view=lambda x: x.reshape(o, 1, 1, n),
        torch_view=lambda t: t.reshape(o, 1, 1, n),
        description=f"{what}: fc_weights on a plain vector, (O, N) -> (O, 1, 1, N), a copy",
    )


def _dense_reshape(name: str, h: int, w: int, c: int, i: int, what: str, quick: bool) -> Case:
    return Case(
        name=name,
        shape=(h * w * c, i),
        out_shape=(h * w * c, i),
        mps=lambda x, out, dt, th: dense_reshape(
            x, shape=(h, w, c), order="CHW", target="rows", dtype=dt, out=out, threads=th
        )[0],
        view=lambda x: x.reshape(c, h, w, i).transpose(1, 2, 0, 3),
        torch_view=lambda t: t.reshape(c, h, w, i).permute(1, 2, 0, 3),
        description=f"{what}: dense_reshape(shape=({h},{w},{c}), order='CHW'), "
        "rows CHW -> HWC (docs/layouts.md section 6, Dense followed by Reshape)",
        quick=quick,
    )


def _depthwise(name: str, c: int, kh: int, kw: int, what: str) -> Case:
    return Case(
        name=name,
        shape=(c, 1, kh, kw),
        out_shape=(c, kh, kw),
        mps=lambda x, out, dt, th: depthwise_weights(x, dtype=dt, out=out, threads=th),
        view=lambda x: x[:, 0],
        torch_view=lambda t: t[:, 0],
        description=f"{what}: depthwise_weights, (C, 1, kH, kW) -> (C, kH, kW), "
        "memory order unchanged",
    )


def _slices(name: str, n: int, c: int, h: int, w: int, what: str, quick: bool) -> Case:
    if c % 4:
        raise ValueError("the numpy equivalent below needs C to be a multiple of 4")
    s = c // 4
    return Case(
        name=name,
        shape=(n, c, h, w),
        out_shape=(n * s, h, w, 4),
        mps=lambda x, out, dt, th: image_slices(x, dtype=dt, out=out, threads=th),
        view=lambda x: x.reshape(n, s, 4, h, w).transpose(0, 1, 3, 4, 2),
        torch_view=lambda t: t.reshape(n, s, 4, h, w).permute(0, 1, 3, 4, 2),
        description=f"{what}: image_slices, NCHW -> (N*ceil(C/4), H, W, 4)",
        quick=quick,
    )


CASES: tuple[Case, ...] = (
    _conv("resnet50.conv1", 64, 3, 7, 7, "ResNet-50 first layer, 7x7 (the tiny one)", quick=True),
    _conv("resnet50.layer1.3x3", 64, 64, 3, 3, "ResNet-50 layer1 3x3"),
    _conv("resnet50.layer1.1x1", 256, 64, 1, 1, "ResNet-50 layer1 1x1 expansion"),
    _conv("resnet50.layer3.3x3", 256, 256, 3, 3, "ResNet-50 layer3 3x3"),
    _conv("resnet50.layer4.3x3", 512, 512, 3, 3, "ResNet-50 layer4 3x3", quick=True),
    _conv("conv5x5", 128, 64, 5, 5, "a 5x5 convolution (Inception/GoogLeNet style)"),
    _conv("vgg16.conv1_1", 64, 3, 3, 3, "VGG-16 conv1_1"),
    _conv("vgg16.conv2_1", 128, 64, 3, 3, "VGG-16 conv2_1"),
    _conv("vgg16.conv4_1", 512, 256, 3, 3, "VGG-16 conv4_1"),
    _fc_flatten("vgg16.fc6.flatten", 4096, 512, 7, 7, "VGG-16 fc6, Linear after flatten"),
    _fc_vector("vgg16.fc7.vector", 4096, 4096, "VGG-16 fc7, Linear on a vector"),
    _dense_reshape("dcgan.dense_reshape", 4, 4, 512, 100, "DCGAN Dense(8192)->Reshape(4,4,512)",
                   quick=True),
    _depthwise("mobilenet.depthwise", 512, 3, 3, "MobileNet-style depthwise 3x3"),
    _slices("mpsimage.slices", 1, 64, 512, 512, "64-channel 512x512 feature map", quick=True),
)


def select_cases(pattern: str | None = None, *, quick: bool = False) -> list[Case]:
    """Cases whose name or input shape contains ``pattern`` (case-insensitive).

    Without a pattern: every case, or the ``quick`` subset when ``quick`` is set.
    """
    if pattern:
        p = pattern.lower()
        found = [c for c in CASES if p in c.label().lower()]
        if not found:
            names = ", ".join(c.name for c in CASES)
            raise ValueError(f"no benchmark case matches {pattern!r}; cases: {names}")
        return found
    return [c for c in CASES if c.quick] if quick else list(CASES)


# ------------------------------------------------------------------------ contenders


@dataclass
class Contender:
    """A closure to time, the bytes it reads + writes, and how to fetch its result."""

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


def _out_dtype(dtype: str) -> type | None:
    return np.float16 if dtype == "float16" else None


def make_input(case: Case, seed: int = 0) -> np.ndarray:
    """Deterministic float32 input (normal values: most of them round when cast to float16)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(case.shape, dtype=np.float32)


def build_setup(
    case: Case, x: np.ndarray, dtype: str, threads: int, torch_mod: Any = None
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

    def run_mps() -> np.ndarray:
        return case.mps(x, out_mps, cast, threads)

    def run_copyto() -> None:
        np.copyto(target, view)

    contenders = [
        Contender("mpslayout", run_mps, moved, threads, lambda r: out_mps),
        Contender(REFERENCE, run_copyto, moved, 1, lambda r: out_np),
    ]

    if cast is not None:
        def run_asc() -> np.ndarray:
            return view.astype(cast, order="C")
        asc_name = "np.astype"
    elif view.flags.c_contiguous:
        # ascontiguousarray would return the input itself, without copying anything
        def run_asc() -> np.ndarray:
            return view.copy(order="C")
        asc_name = "np.ascontiguousarray"
        notes.append("the view is already contiguous: np.ascontiguousarray and torch "
                     ".contiguous() would not copy, so .copy() / .clone() are timed")
    else:
        def run_asc() -> np.ndarray:
            return np.ascontiguousarray(view)
        asc_name = "np.ascontiguousarray"
    contenders.append(Contender(asc_name, run_asc, moved, 1,
                                lambda r: r.reshape(case.out_shape)))

    if torch_mod is not None:
        tview = case.torch_view(torch_mod.from_numpy(x))
        if cast is not None:
            def run_torch() -> Any:
                return tview.to(torch_mod.float16, memory_format=torch_mod.contiguous_format)
        elif tview.is_contiguous():
            def run_torch() -> Any:
                return tview.clone(memory_format=torch_mod.contiguous_format)
        else:
            def run_torch() -> Any:
                return tview.contiguous()

        def torch_result(r: Any) -> np.ndarray:
            if not r.is_contiguous():
                raise BenchmarkError(f"{case.name}: torch's result is not contiguous")
            return r.numpy().reshape(case.out_shape)

        contenders.append(Contender("torch", run_torch, moved, threads, torch_result))

    src_bytes = x.reshape(-1).view(np.uint8)
    dst_bytes = np.empty_like(src_bytes)

    def run_memcpy() -> None:
        np.copyto(dst_bytes, src_bytes)

    contenders.append(Contender(CEILING, run_memcpy, 2 * bytes_in, 1, lambda r: dst_bytes))
    return Setup(contenders, notes)


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
        if c.name == "mpslayout" and not (
            isinstance(r, np.ndarray) and np.may_share_memory(r, results[c.name])
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
               use_torch: bool = True) -> dict[str, np.ndarray]:
    """Verify one configuration and return each contender's result (for tests)."""
    x = make_input(case)
    torch_mod = _torch() if use_torch else None
    setup = build_setup(case, x, dtype, threads, torch_mod)
    verify(case, x, setup, dtype, threads)
    return {c.name: c.result(c.fn()).copy() for c in setup.contenders}


# ------------------------------------------------------------------------- measuring


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews the timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes spent busy, CPU seconds this process spent), from /proc."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    own = os.times()
    return busy / tick, own.user + own.system


def _other_cpu(start: tuple[float, float] | None, wall: float) -> float | None:
    """Cores used on average by other processes since ``start`` (wall seconds ago)."""
    end = _cpu_seconds()
    if start is None or end is None or wall <= 0:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / wall)


def _l3_bytes() -> int:
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            with open(os.path.join(path, "level")) as f:
                level = f.read().strip()
            if level == "3":
                with open(os.path.join(path, "size")) as f:
                    return _parse_size(f.read())
    except OSError:
        pass
    caches = _lscpu().get("L3 cache")
    if caches:
        try:
            return _parse_size(caches)
        except ValueError:
            pass
    return DEFAULT_L3


def _parse_size(text: str) -> int:
    m = re.match(r"\s*([\d.]+)\s*([KMG]?)i?B?", text)
    if not m:
        raise ValueError(f"cannot read a size from {text!r}")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
    return int(float(m.group(1)) * scale)


class Flusher:
    """Evicts the caches by reading and writing a float32 buffer of ``nbytes``."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.buf = np.ones(max(1, self.nbytes // 4), np.float32)

    def __call__(self) -> None:
        np.add(self.buf, 1.0, out=self.buf)


class Progress:
    """A progress bar on stderr: tqdm when importable, else plain text."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.start = time.perf_counter()
        self.label = ""
        self.tty = enabled and sys.stderr.isatty()
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=self.total, file=sys.stderr, unit="run", leave=False)

    def update(self, n: int = 1, label: str | None = None) -> None:
        self.done += n
        if not self.enabled:
            return
        new_label = label is not None and label != self.label
        if label is not None:
            self.label = label
        if self.bar is not None:
            self.bar.set_description(self.label, refresh=False)
            self.bar.update(n)
            return
        if self.tty:
            frac = min(1.0, self.done / self.total)
            width = 30
            filled = int(frac * width)
            elapsed = time.perf_counter() - self.start
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            sys.stderr.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% "
                f"{elapsed:5.0f}s eta {eta:4.0f}s  {self.label[:60]:<60}"
            )
            sys.stderr.flush()
        elif new_label:
            pct = min(100.0, 100.0 * self.done / self.total)
            sys.stderr.write(f"[{pct:5.1f}%] {self.label}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.tty:
            sys.stderr.write("\r" + " " * 120 + "\r")
            sys.stderr.flush()


def _stats(times: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times, dtype=np.float64)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3),
            "min_s": float(t.min()), "max_s": float(t.max())}


def measure(setup: Setup, repeats: int, flush: Flusher,
            tick: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """``repeats`` rounds; in each, every contender runs once (rotating order), cold."""
    names = [c.name for c in setup.contenders]
    times: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter_ns
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(setup.contenders)
            for c in setup.contenders[k:] + setup.contenders[:k]:
                flush()
                t0 = clock()
                res = c.fn()
                t1 = clock()
                del res
                times[c.name].append((t1 - t0) * 1e-9)
            if tick is not None:
                tick()
    finally:
        if was_enabled:
            gc.enable()
    return times


def summarize(setup: Setup, times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Per contender: stats, GB/s (bytes read + written) and paired ratios."""
    ceiling = np.asarray(times[CEILING])
    ref = np.asarray(times[REFERENCE])
    rows = []
    for c in setup.contenders:
        t = np.asarray(times[c.name])
        st = _stats(t)
        vs_mem = t / ceiling
        vs_np = t / ref
        rows.append({
            "name": c.name,
            "threads": c.threads,
            "bytes_moved": c.nbytes,
            "times_s": [float(v) for v in t],
            **st,
            "gbps": c.nbytes / st["median_s"] / 1e9 if st["median_s"] > 0 else float("inf"),
            "ratio_vs_memcpy": {"median": float(np.median(vs_mem)),
                                "values": [float(v) for v in vs_mem]},
            "ratio_vs_numpy": {"median": float(np.median(vs_np)),
                               "values": [float(v) for v in vs_np]},
        })
    return rows


def _thread_list(threads: Any) -> list[int]:
    if threads is None:
        n = get_threads()
        return [1] if n == 1 else [1, n]
    if isinstance(threads, str):
        parts = [p for p in re.split(r"[,\s]+", threads.strip()) if p]
        if not parts:
            raise ValueError("--threads needs a list like 1,2")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"--threads must be a comma separated list of ints, "
                             f"got {threads!r}") from None
    else:
        values = [int(v) for v in threads]
    if any(v < 1 for v in values):
        raise ValueError(f"thread counts must be positive, got {values}")
    return list(dict.fromkeys(values))


def run_benchmark(
    *,
    cases: str | None = None,
    quick: bool = False,
    repeats: int | None = None,
    threads: Any = None,
    dtypes: Sequence[str] = DTYPES,
    tiny: bool = True,
    use_torch: bool = True,
    flush_bytes: int | None = None,
    progress: bool = True,
    case_list: Sequence[Case] | None = None,
) -> dict[str, Any]:
    """Run the suite and return the results (the structure ``--json`` writes).

    ``cases`` filters by substring; ``case_list`` gives the cases directly instead.
    ``repeats`` defaults to 15 (3 with ``quick``); ``threads`` is a list of thread counts
    (default: 1 and :func:`mpslayout.get_threads`); ``flush_bytes`` defaults to twice the L3.
    """
    t_start = time.perf_counter()
    load_start = _loadavg()
    cpu_start = _cpu_seconds()
    library = _loaded_library()
    selected = list(case_list) if case_list is not None else select_cases(cases, quick=quick)
    reps = int(repeats) if repeats is not None else (QUICK_REPEATS if quick else FULL_REPEATS)
    if reps < 1:
        raise ValueError(f"repeats must be >= 1, got {reps}")
    thread_list = _thread_list(threads)
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {d!r}")
    torch_mod = _torch() if use_torch else None
    l3 = _l3_bytes()
    flush = Flusher(flush_bytes if flush_bytes is not None else 2 * l3)
    configs = [(c, d, t) for c in selected for d in dtypes for t in thread_list]
    bar = Progress(len(configs) * (reps + 1) + (1 if tiny else 0), enabled=progress)

    torch_threads = torch_mod.get_num_threads() if torch_mod is not None else None
    results: list[dict[str, Any]] = []
    try:
        for case in selected:
            x = make_input(case)
            for dtype in dtypes:
                for th in thread_list:
                    label = f"{case.name} {dtype} threads={th}"
                    bar.update(0, label)
                    if torch_mod is not None:
                        torch_mod.set_num_threads(th)
                    setup = build_setup(case, x, dtype, th, torch_mod)
                    verify(case, x, setup, dtype, th)  # also the warm-up
                    bar.update(1)
                    cpu0, t0 = _cpu_seconds(), time.perf_counter()
                    times = measure(setup, reps, flush, tick=bar.update)
                    other = _other_cpu(cpu0, time.perf_counter() - t0)
                    out_dt = np.dtype(_out_dtype(dtype) or x.dtype)
                    results.append({
                        "case": case.name,
                        "description": case.description,
                        "shape": list(case.shape),
                        "out_shape": list(case.out_shape),
                        "dtype": dtype,
                        "threads": th,
                        "repeats": reps,
                        "bytes_in": x.nbytes,
                        "bytes_out": int(np.prod(case.out_shape)) * out_dt.itemsize,
                        "notes": setup.notes,
                        "other_cpu_cores": other,
                        "contenders": summarize(setup, times),
                    })
                    del setup
            del x
            gc.collect()
        tiny_result = None
        if tiny:
            bar.update(0, "tiny call: conv_weights (64,3,7,7)")
            tiny_result = tiny_call(quick=quick, torch_mod=torch_mod)
            bar.update(1)
    finally:
        bar.close()
        if torch_mod is not None and torch_threads is not None:
            torch_mod.set_num_threads(torch_threads)

    rebuilt = _library_id().get("sha256_16") != library.get("sha256_16")
    if rebuilt:
        print("mpslayout bench: warning: the engine (_core) was rebuilt on disk during the "
              "run; the results are from the build this process loaded "
              f"({library.get('sha256_16')})", file=sys.stderr)
    return {
        "machine": machine_info(torch_mod),
        "settings": {
            "quick": quick,
            "cases_filter": cases,
            "repeats": reps,
            "threads": thread_list,
            "dtypes": list(dtypes),
            "flush_bytes": flush.nbytes,
            "l3_bytes": l3,
            "torch": torch_mod is not None,
            "elapsed_s": time.perf_counter() - t_start,
            "loadavg_start": load_start,
            "loadavg_end": _loadavg(),
            "other_cpu_cores": _other_cpu(cpu_start, time.perf_counter() - t_start),
            "engine_rebuilt_during_run": rebuilt,
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "results": results,
        "tiny_call": tiny_result,
    }


def tiny_call(*, quick: bool = False, torch_mod: Any = None, repeat: int | None = None
              ) -> dict[str, Any]:
    """Warm per-call cost of conv_weights on the tiny (64,3,7,7) weight, via timeit."""
    w = np.random.default_rng(1).standard_normal((64, 3, 7, 7), dtype=np.float32)
    out = np.empty((64, 7, 7, 3), np.float32)
    view = w.transpose(0, 2, 3, 1)
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("mpslayout conv_weights(w)", lambda: conv_weights(w)),
        ("mpslayout conv_weights(w, out=o)", lambda: conv_weights(w, out=out)),
        ("mpslayout conv_weights(w, threads=1)", lambda: conv_weights(w, threads=1)),
        ("np.ascontiguousarray(w.transpose(0,2,3,1))",
         lambda: np.ascontiguousarray(w.transpose(0, 2, 3, 1))),
        ("np.copyto(o, w.transpose(0,2,3,1))", lambda: np.copyto(out, view)),
    ]
    if torch_mod is not None:
        t = torch_mod.from_numpy(w)
        variants.append(("torch t.permute(0,2,3,1).contiguous()",
                         lambda: t.permute(0, 2, 3, 1).contiguous()))
    if not _same_bits(conv_weights(w), np.ascontiguousarray(view)):
        raise BenchmarkError("tiny call: conv_weights differs from numpy")
    n_repeat = repeat if repeat is not None else (5 if quick else 9)
    rows = []
    for name, fn in variants:
        timer = timeit.Timer(fn)
        number, _ = timer.autorange()  # at least 0.2 s per repeat, and warms up
        if quick:
            number = max(1, number // 4)
        per_call = [t / number * 1e6 for t in timer.repeat(repeat=n_repeat, number=number)]
        rows.append({"name": name, "calls_per_repeat": number, "repeats": n_repeat,
                     "median_us": float(np.median(per_call)), "min_us": float(min(per_call)),
                     "max_us": float(max(per_call)), "per_call_us": per_call})
    ref = next(r for r in rows if r["name"].startswith("np.ascontiguousarray"))["median_us"]
    for r in rows:
        r["ratio_vs_numpy"] = r["median_us"] / ref
    return {"shape": [64, 3, 7, 7], "dtype": "float32", "default_threads": get_threads(),
            "variants": rows}


# -------------------------------------------------------------------------- machine


def _lscpu() -> dict[str, str]:
    exe = shutil.which("lscpu")
    if exe is None:
        return {}
    try:
        text = subprocess.run([exe], capture_output=True, text=True, timeout=10,
                              check=False, env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> str | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kib = int(line.split()[1])
                    return f"{kib / (1 << 20):.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _library_id() -> dict[str, Any]:
    """Which build of the C++ engine ran: its file, modification time and hash."""
    path = getattr(_core, "__file__", None)
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        mtime = datetime.fromtimestamp(os.path.getmtime(path), timezone.utc)
    except OSError:
        return {"file": path}
    return {"file": path, "modified_utc": mtime.isoformat(timespec="seconds"),
            "sha256_16": digest}


_LOADED_LIBRARY: dict[str, Any] | None = None  # the build this process runs, seen at first use


def _loaded_library() -> dict[str, Any]:
    global _LOADED_LIBRARY
    if _LOADED_LIBRARY is None:
        _LOADED_LIBRARY = _library_id()
    return _LOADED_LIBRARY


def machine_info(torch_mod: Any = None) -> dict[str, Any]:
    """CPU, caches, versions and instruction set, for the JSON and markdown reports."""
    from . import __version__

    lscpu = _lscpu()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    caches = {k: v for k, v in lscpu.items() if re.fullmatch(r"L\d\w? cache", k)}
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "caches": caches,
        "memory": _mem_total(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch_mod is None else str(torch_mod.__version__),
        "matplotlib": _version("matplotlib"),
        "mpslayout": __version__,
        "isa": _core.isa(),
        "core_library": _loaded_library(),
        "available_isas": list(_core.available_isas()),
        "mpslayout_threads": get_threads(),
        "hardware_threads": _core.hardware_threads(),
    }


# -------------------------------------------------------------------------- reports


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _fmt_range(lo: float, hi: float) -> str:
    if hi < 1e-3:
        return f"{lo * 1e6:.3g}-{hi * 1e6:.3g} µs"
    if hi < 1.0:
        return f"{lo * 1e3:.3g}-{hi * 1e3:.3g} ms"
    return f"{lo:.3g}-{hi:.3g} s"


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def results_table(report: dict[str, Any]) -> str:
    """The main table: one row per contender, grouped by case, dtype and threads."""
    header = ["case", "input", "dtype", "thr", "bg", "contender", "median", "IQR", "GB/s",
              "t/memcpy", "t/numpy"]
    rows = []
    for res in report["results"]:
        first = True
        dt = "f32" if res["dtype"] == "float32" else "f32→f16"
        for c in res["contenders"]:
            rows.append([
                res["case"] if first else "",
                _shape_str(res["shape"]) if first else "",
                dt if first else "",
                str(res["threads"]) if first else "",
                _fmt_bg(res.get("other_cpu_cores")) if first else "",
                c["name"],
                _fmt_time(c["median_s"]),
                _fmt_range(c["q1_s"], c["q3_s"]),
                f"{c['gbps']:.2f}",
                f"{c['ratio_vs_memcpy']['median']:.2f}",
                f"{c['ratio_vs_numpy']['median']:.2f}",
            ])
            first = False
    return _table(header, rows, right=[3, 4, 6, 7, 8, 9, 10])


def tiny_table(tiny: dict[str, Any]) -> str:
    header = ["call (w: (64,3,7,7) float32, warm)", "median µs/call", "min µs",
              "t/numpy ascontiguousarray"]
    rows = [[r["name"], f"{r['median_us']:.2f}", f"{r['min_us']:.2f}",
             f"{r['ratio_vs_numpy']:.2f}"] for r in tiny["variants"]]
    return _table(header, rows, right=[1, 2, 3])


def _fmt_bg(cores: float | None) -> str:
    return "?" if cores is None else f"{cores:.2f}"


def _fmt_cores(cores: float | None) -> str:
    return "unknown CPU" if cores is None else f"{cores:.2f} cores"


def _fmt_load(load: Sequence[float] | None) -> str:
    return "unknown" if load is None else " / ".join(f"{v:.2f}" for v in load)


def machine_table(machine: dict[str, Any], settings: dict[str, Any]) -> str:
    caches = ", ".join(f"{k.replace(' cache', '')} {v}" for k, v in machine["caches"].items())
    lib = machine.get("core_library") or {}
    rows = [
        ["CPU", str(machine["cpu_model"])],
        ["CPUs", f"{machine['usable_cpus']} usable of {machine['logical_cpus']} "
                 f"(hypervisor: {machine['hypervisor'] or 'none'})"],
        ["caches", caches or "unknown"],
        ["memory", str(machine["memory"])],
        ["platform", str(machine["platform"])],
        ["versions", f"python {machine['python']}, numpy {machine['numpy']}, "
                     f"torch {machine['torch'] or 'not used'}, "
                     f"mpslayout {machine['mpslayout']}"],
        ["mpslayout ISA", f"{machine['isa']} (available: {', '.join(machine['available_isas'])})"],
        ["engine build", f"{lib.get('sha256_16', '?')} (sha256 prefix of _core), built "
                         f"{lib.get('modified_utc', '?')}"],
        ["settings", f"repeats {settings['repeats']}, threads {settings['threads']}, "
                     f"cache flush {_fmt_bytes(settings['flush_bytes'])} before each run, "
                     f"took {settings['elapsed_s']:.0f} s, {settings['date_utc']}"],
        ["other load", f"other processes used {_fmt_cores(settings.get('other_cpu_cores'))} "
                       f"on average during the run; load average "
                       f"{_fmt_load(settings.get('loadavg_start'))} at start, "
                       f"{_fmt_load(settings.get('loadavg_end'))} at end"],
    ]
    return _table(["machine", ""], rows, right=[])


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: machine, main table, notes, tiny-call table."""
    parts = ["# mpslayout benchmark", "", machine_table(report["machine"], report["settings"]), ""]
    parts += [
        "## Layout conversions, cold cache",
        "",
        "Median over the runs; IQR = 25th-75th percentile; GB/s counts bytes read + written; "
        "t/memcpy and t/numpy are medians of per-round time ratios (below 1 = faster than "
        "memcpy / np.copyto). numpy and memcpy always run on one thread. bg: CPU cores other "
        "processes used meanwhile (above ~0.1, the timings of that row are disturbed).",
        "",
        results_table(report),
        "",
    ]
    notes = sorted({f"{r['case']}: {n}" for r in report["results"] for n in r["notes"]})
    if notes:
        parts += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    if report.get("tiny_call"):
        parts += ["## Tiny call, warm", "", tiny_table(report["tiny_call"]), ""]
    return "\n".join(parts)


def _plot_name(name: str) -> str:
    return "np.ascontiguousarray / astype" if name in ("np.ascontiguousarray", "np.astype") \
        else name


def write_plot(report: dict[str, Any], path: str) -> None:
    """Bar chart: median time relative to memcpy, per case and contender, one panel per
    (dtype, threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    results = report["results"]
    panels = sorted({(r["dtype"], r["threads"]) for r in results},
                    key=lambda p: (DTYPES.index(p[0]), p[1]))
    case_names = list(dict.fromkeys(r["case"] for r in results))
    contenders = list(dict.fromkeys(_plot_name(c["name"]) for r in results
                                    for c in r["contenders"] if c["name"] != CEILING))
    ncols = len({p[1] for p in panels})
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 0.45 * len(case_names) * nrows
                                                     + 1.8), squeeze=False, sharey=True)
    height = 0.8 / max(1, len(contenders))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for idx, (dtype, th) in enumerate(panels):
        ax = axes[idx // ncols][idx % ncols]
        for j, name in enumerate(contenders):
            ys, vals = [], []
            for r in results:
                if (r["dtype"], r["threads"]) != (dtype, th):
                    continue
                for c in r["contenders"]:
                    if _plot_name(c["name"]) == name:
                        ys.append(case_names.index(r["case"]) + j * height)
                        vals.append(c["ratio_vs_memcpy"]["median"])
            ax.barh(ys, vals, height=height, label=name, color=colors[j % len(colors)])
        ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=2))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(f"{'float32' if dtype == 'float32' else 'float32 → float16'}, "
                     f"{th} thread{'s' if th > 1 else ''}")
        ax.set_xlabel("median time / memcpy time (log; lower is better, dashed = memcpy)")
        ax.set_yticks([i + (len(contenders) - 1) * height / 2 for i in range(len(case_names))])
        ax.set_yticklabels(case_names)
        ax.grid(axis="x", which="major", alpha=0.3)
    axes[0][0].set_ylim(len(case_names) - 0.1, -0.1 - height)  # first case on top (shared)
    for idx in range(len(panels), nrows * ncols):
        axes[idx // ncols][idx % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique),
               frameon=False)
    m = report["machine"]
    fig.suptitle(f"mpslayout benchmark, cold cache — {m['cpu_model']}, "
                 f"{m['usable_cpus']} CPUs, {m['isa']}")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``bench/run.py`` (``mpslayout bench`` declares the same in cli.py)."""
    p.add_argument("--quick", action="store_true",
                   help="a few cases, 3 repeats: finishes in under a minute")
    p.add_argument("--cases", metavar="SUBSTRING",
                   help="only cases whose name or input shape contains SUBSTRING")
    p.add_argument("--repeats", type=int, metavar="N",
                   help=f"timed runs per contender (default {FULL_REPEATS}, "
                        f"{QUICK_REPEATS} with --quick)")
    p.add_argument("--threads", metavar="LIST",
                   help="comma separated thread counts (default: 1 and all CPUs)")
    p.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Time mpslayout's conversions against numpy, PyTorch and memcpy on "
        "real weight shapes (cold cache, interleaved runs). See bench/README.md.",
    )
    add_arguments(p)
    return p


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_from_args(args: argparse.Namespace) -> int:
    """Run the suite for parsed options (shared by ``mpslayout bench`` and bench/run.py)."""
    if args.plot and not _have_matplotlib():
        print("mpslayout bench: --plot needs matplotlib, which is not installed: "
              "pip install 'mpslayout[bench]' (or pip install matplotlib). Nothing was run.",
              file=sys.stderr)
        return 2
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    select_cases(args.cases, quick=args.quick)  # report a bad option before anything runs
    _thread_list(args.threads)
    start, t0 = _cpu_seconds(), time.perf_counter()
    time.sleep(0.5)
    busy = _other_cpu(start, time.perf_counter() - t0)
    if busy is not None and busy > 0.2:
        print(f"mpslayout bench: warning: the machine is busy (other processes use {busy:.1f} "
              "cores); timings, multi-threaded ones most, will be noisy", file=sys.stderr)
    report = run_benchmark(cases=args.cases, quick=args.quick, repeats=args.repeats,
                           threads=args.threads, use_torch=not args.no_torch)
    text = render_markdown(report)
    print(text)
    if args.json:
        _write_text(args.json, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        _write_text(args.markdown, text)
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.plot:
        write_plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _write_text(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, OSError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
