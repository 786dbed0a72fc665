"""Timing: cache flushes, the two cold modes, interleaved rounds, paired ratios, and what
the rest of the machine did meanwhile."""

from __future__ import annotations

import gc
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from .contenders import CEILING, REFERENCE, Setup
from .machine import _lscpu

DEFAULT_L3 = 32 << 20


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


# /proc's CPU times move in ticks of 10 ms: two counters read twice over a shorter window
# than this say nothing (a configuration of tiny calls measured "20 cores" once).
MIN_BG_SECONDS = 0.5


def _other_cpu(start: tuple[float, float] | None, wall: float) -> float | None:
    """Cores used on average by other processes since ``start`` (wall seconds ago); None
    when unknown or when ``wall`` is under :data:`MIN_BG_SECONDS`."""
    end = _cpu_seconds()
    if start is None or end is None or wall < MIN_BG_SECONDS:
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


# Python source whose compilation runs tens of kilobytes of the interpreter's tokenizer,
# parser and compiler: code that no contender runs.
_CODE_FLUSH_SOURCE = "\n".join(
    f"def f{i}(a, b={i}, *c, **d):\n"
    f"    x = [a + b * {i} for _ in range(3) if _ % 2]\n"
    f"    return {{'k': x, 's': f'{{a}}-{{b}}', 't': (c, d)}}"
    for i in range(60)
)


class Flusher:
    """Evicts the caches: data by reading and writing a float32 buffer of ``nbytes``, then
    code by compiling a block of Python source.

    The data pass alone leaves the instruction cache holding the numpy code that ran it
    (ufunc dispatch, array arguments, iterators), which ``np.copyto`` and
    ``np.ascontiguousarray`` share: numpy's contenders started with warm code, the others
    cold (measured: ``np.copyto`` of a (64,64,3,3) transpose 6-8 us faster, ~20% of its
    cold time). Compiling runs the interpreter's compiler instead, which no contender uses.
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.buf = np.ones(max(1, self.nbytes // 4), np.float32)

    def __call__(self) -> None:
        np.add(self.buf, 1.0, out=self.buf)
        compile(_CODE_FLUSH_SOURCE, "<flush>", "exec")


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


MODES = ("cold", "cold-data")
MAX_COPIES = 4096  # cold-data: distinct copies of one configuration's data, at most


def copies_for(bytes_per_run: int, llc_bytes: int) -> int:
    """Cold-data mode: how many distinct copies of a configuration's data (input and
    outputs) make the runs between two uses of one copy touch twice the last-level cache."""
    return int(min(MAX_COPIES, max(1, -(-2 * llc_bytes // max(1, bytes_per_run)))))


def measure(setups: Sequence[Setup], repeats: int, flush: Flusher,
            tick: Callable[[], None] | None = None, mode: str = "cold"
            ) -> dict[str, list[float]]:
    """``repeats`` rounds; in each, every contender runs once (rotating order).

    ``cold``: the caches are flushed before every run (code and data cold), and
    ``setups[0]`` is used. ``cold-data``: no flush; each run takes the next of ``setups``
    (distinct copies of the same data, together larger than the last-level cache), so the
    data comes from memory while the code, Python's and the library's, stays warm.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    contenders = setups[0].contenders
    names = [c.name for c in contenders]
    times: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter_ns
    was_enabled = gc.isenabled()
    gc.disable()
    cold = mode == "cold"
    k = 0
    try:
        for r in range(repeats):
            first = r % len(contenders)
            for i in [*range(first, len(contenders)), *range(first)]:
                if cold:
                    c = contenders[i]
                    flush()
                else:
                    c = setups[k % len(setups)].contenders[i]
                    k += 1
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
