"""The whole suite: every case, dtype, thread count and cold mode, and the tiny call."""

from __future__ import annotations

import gc
import re
import sys
import time
import timeit
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from ..engine import get_threads
from ..mps import conv_weights
from .cases import DTYPES, BenchmarkError, Case, select_cases
from .contenders import (
    _mlx,
    _out_dtype,
    _same_bits,
    _torch,
    build_setup,
    make_input,
    verify,
)
from .machine import _library_id, _loaded_library, machine_info
from .timing import (
    MODES,
    Flusher,
    Progress,
    _cpu_seconds,
    _l3_bytes,
    _loadavg,
    _other_cpu,
    _stats,
    copies_for,
    measure,
    summarize,
)

FULL_REPEATS = 15
QUICK_REPEATS = 3


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


def _run_config(case: Case, x: np.ndarray, dtype: str, th: int, mode: str, reps: int,
                flush: Flusher, l3: int, torch_mod: Any, bar: Progress,
                mlx_mod: Any = None) -> dict[str, Any]:
    """One (case, dtype, threads, mode): verify (also the warm-up), then the timed rounds."""
    label = f"{case.name} {dtype} threads={th} {mode}"
    bar.update(0, label)
    if torch_mod is not None:
        torch_mod.set_num_threads(th)
    setup = build_setup(case, x, dtype, th, torch_mod, mlx_mod)
    verify(case, x, setup, dtype, th)
    out_dt = np.dtype(_out_dtype(dtype) or x.dtype)
    bytes_out = int(np.prod(case.out_shape)) * out_dt.itemsize
    setups = [setup]
    if mode == "cold-data":  # distinct copies: the data of one run is not in cache for the next
        copies = copies_for(x.nbytes + bytes_out, l3)
        setups += [build_setup(case, x.copy(), dtype, th, torch_mod, mlx_mod)
                   for _ in range(copies - 1)]
        for s in setups[1:]:  # fault every copy's pages in: a timed run must not pay for them
            for c in s.contenders:
                c.fn()
    bar.update(1)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    times = measure(setups, reps, flush, tick=bar.update, mode=mode)
    other = _other_cpu(cpu0, time.perf_counter() - t0)
    return {
        "case": case.name,
        "description": case.description,
        "shape": list(case.shape),
        "out_shape": list(case.out_shape),
        "dtype": dtype,
        "threads": th,
        "mode": mode,
        "data_copies": len(setups),
        "repeats": reps,
        "bytes_in": x.nbytes,
        "bytes_out": bytes_out,
        "notes": setup.notes,
        "other_cpu_cores": other,
        "contenders": summarize(setup, times),
    }


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from the same run repeated in several processes.

    Times and paired ratios are pooled (the statistics are over all of them); each
    contender also keeps the median ratio of every process (``process_medians``), which the
    markdown shows as the spread across processes.
    """
    if not reports:
        raise ValueError("nothing to merge")
    keys = [[(r["case"], r["dtype"], r["threads"], r.get("mode")) for r in rep["results"]]
            for rep in reports]
    if any(k != keys[0] for k in keys):
        raise ValueError("the reports ran different configurations")
    merged = {**reports[0], "results": []}
    for i, first in enumerate(reports[0]["results"]):
        runs = [rep["results"][i] for rep in reports]
        contenders = []
        for j, c in enumerate(first["contenders"]):
            each = [run["contenders"][j] for run in runs]
            times = [t for e in each for t in e["times_s"]]
            st = _stats(times)
            row = {**c, "times_s": times, **st,
                   "gbps": c["bytes_moved"] / st["median_s"] / 1e9 if st["median_s"] > 0
                   else float("inf")}
            for key in ("ratio_vs_memcpy", "ratio_vs_numpy"):
                values = [v for e in each for v in e[key]["values"]]
                row[key] = {"median": float(np.median(values)), "values": values,
                            "process_medians": [e[key]["median"] for e in each]}
            contenders.append(row)
        other = [run["other_cpu_cores"] for run in runs if run["other_cpu_cores"] is not None]
        merged["results"].append({**first, "contenders": contenders,
                                  "repeats": sum(run["repeats"] for run in runs),
                                  "other_cpu_cores": max(other) if other else None})
    settings = dict(reports[0]["settings"])
    settings.update(
        processes=len(reports),
        elapsed_s=sum(rep["settings"]["elapsed_s"] for rep in reports),
        loadavg_end=reports[-1]["settings"]["loadavg_end"],
        other_cpu_cores=max((rep["settings"]["other_cpu_cores"] or 0.0) for rep in reports),
        engine_rebuilt_during_run=any(rep["settings"]["engine_rebuilt_during_run"]
                                      for rep in reports),
    )
    merged["settings"] = settings
    tiny = [rep["tiny_call"] for rep in reports if rep.get("tiny_call")]
    if tiny:
        variants = []
        for j, v in enumerate(tiny[0]["variants"]):
            each = [t["variants"][j] for t in tiny]
            medians = [e["median_us"] for e in each]
            variants.append({**v, "median_us": float(np.median(medians)),
                             "min_us": min(e["min_us"] for e in each),
                             "max_us": max(e["max_us"] for e in each),
                             "process_medians_us": medians,
                             "per_call_us": [p for e in each for p in e["per_call_us"]],
                             "ratio_vs_numpy": float(np.median([e["ratio_vs_numpy"]
                                                                for e in each]))})
        merged["tiny_call"] = {**tiny[0], "variants": variants}
    return merged


def run_benchmark(
    *,
    cases: str | None = None,
    quick: bool = False,
    repeats: int | None = None,
    threads: Any = None,
    dtypes: Sequence[str] = DTYPES,
    tiny: bool = True,
    use_torch: bool = True,
    use_mlx: bool = True,
    flush_bytes: int | None = None,
    progress: bool = True,
    case_list: Sequence[Case] | None = None,
    modes: Sequence[str] = MODES,
) -> dict[str, Any]:
    """Run the suite and return the results (the structure ``--json`` writes).

    ``cases`` filters by substring; ``case_list`` gives the cases directly instead.
    ``repeats`` defaults to 15 (3 with ``quick``); ``threads`` is a list of thread counts
    (default: 1 and :func:`mpslayout.get_threads`); ``flush_bytes`` defaults to twice the L3;
    ``modes`` are the cold modes to run (:data:`MODES`: ``cold``, ``cold-data``).
    ``use_torch`` / ``use_mlx``: time torch / MLX's CPU too when importable.
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
    modes = list(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be some of {MODES}, got {modes}")
    torch_mod = _torch() if use_torch else None
    mlx_mod = _mlx() if use_mlx else None
    l3 = _l3_bytes()
    flush = Flusher(flush_bytes if flush_bytes is not None else 2 * l3)
    configs = [(c, d, t, m) for c in selected for d in dtypes for t in thread_list for m in modes]
    bar = Progress(len(configs) * (reps + 1) + (1 if tiny else 0), enabled=progress)

    torch_threads = torch_mod.get_num_threads() if torch_mod is not None else None
    results: list[dict[str, Any]] = []
    try:
        for case in selected:
            x = make_input(case)
            for dtype in dtypes:
                for th in thread_list:
                    for mode in modes:
                        results.append(_run_config(case, x, dtype, th, mode, reps, flush, l3,
                                                   torch_mod, bar, mlx_mod))
            del x
            gc.collect()
        tiny_result = None
        if tiny:
            bar.update(0, "tiny call: conv_weights (64,3,7,7)")
            tiny_result = tiny_call(quick=quick, torch_mod=torch_mod, mlx_mod=mlx_mod)
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
        "machine": machine_info(torch_mod, mlx_mod),
        "settings": {
            "quick": quick,
            "cases_filter": cases,
            "repeats": reps,
            "threads": thread_list,
            "dtypes": list(dtypes),
            "modes": modes,
            "processes": 1,
            "flush_bytes": flush.nbytes,
            "l3_bytes": l3,
            "torch": torch_mod is not None,
            "mlx": mlx_mod is not None,
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


def tiny_call(*, quick: bool = False, torch_mod: Any = None, repeat: int | None = None,
              mlx_mod: Any = None) -> dict[str, Any]:
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
    if mlx_mod is not None:
        mx = mlx_mod

        def run_mlx() -> np.ndarray:
            with mx.stream(mx.cpu):
                return np.asarray(mx.contiguous(mx.array(w).transpose(0, 2, 3, 1)))

        if not _same_bits(run_mlx(), np.ascontiguousarray(view)):
            raise BenchmarkError("tiny call: mlx differs from numpy")
        variants.append(("mlx np.asarray(mx.contiguous(mx.array(w).transpose(0,2,3,1)))",
                         run_mlx))
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
