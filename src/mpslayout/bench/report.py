"""The report as markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .cases import _shape_str


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


def _fmt_ratio(ratio: dict[str, Any]) -> str:
    """The pooled median, and with several processes the range of their medians."""
    text = f"{ratio['median']:.2f}"
    per_process = ratio.get("process_medians")
    if per_process and len(per_process) > 1:
        text += f" ({min(per_process):.2f}-{max(per_process):.2f})"
    return text


def results_table(report: dict[str, Any]) -> str:
    """The main table: one row per contender, grouped by case, dtype, threads and mode."""
    header = ["case", "input", "dtype", "thr", "mode", "bg", "contender", "median", "IQR",
              "GB/s", "t/memcpy", "t/numpy"]
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
                res.get("mode", "cold") if first else "",
                _fmt_bg(res.get("other_cpu_cores")) if first else "",
                c["name"],
                _fmt_time(c["median_s"]),
                _fmt_range(c["q1_s"], c["q3_s"]),
                f"{c['gbps']:.2f}",
                _fmt_ratio(c["ratio_vs_memcpy"]),
                _fmt_ratio(c["ratio_vs_numpy"]),
            ])
            first = False
    return _table(header, rows, right=[3, 5, 7, 8, 9, 10, 11])


def tiny_table(tiny: dict[str, Any]) -> str:
    header = ["call (w: (64,3,7,7) float32, warm)", "median µs/call", "min µs",
              "t/numpy ascontiguousarray"]
    rows = []
    for r in tiny["variants"]:
        median = f"{r['median_us']:.2f}"
        per_process = r.get("process_medians_us")
        if per_process and len(per_process) > 1:
            median += f" ({min(per_process):.2f}-{max(per_process):.2f})"
        rows.append([r["name"], median, f"{r['min_us']:.2f}", f"{r['ratio_vs_numpy']:.2f}"])
    return _table(header, rows, right=[1, 2, 3])


def _fmt_bg(cores: float | None) -> str:
    return "-" if cores is None else f"{cores:.2f}"


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
                     f"mlx {machine.get('mlx') or 'not used'}, "
                     f"mpslayout {machine['mpslayout']}"],
        ["mpslayout ISA", f"{machine['isa']} (available: {', '.join(machine['available_isas'])})"],
        ["engine build", f"{lib.get('sha256_16', '?')} (sha256 prefix of _core), built "
                         f"{lib.get('modified_utc', '?')}"],
        ["settings", f"repeats {settings['repeats']} in each of "
                     f"{settings.get('processes', 1)} process(es), threads {settings['threads']}, "
                     f"modes {', '.join(settings.get('modes', ['cold']))}, cache flush "
                     f"{_fmt_bytes(settings['flush_bytes'])} before each cold run, "
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
        "memcpy / np.copyto), followed, when several processes ran, by the range of the "
        "per-process medians. numpy and memcpy always run on one thread. mode: `cold` "
        "flushes every cache before each run (code and data cold); `cold-data` cycles "
        "through distinct copies of the data, together twice the last-level cache, with "
        "the code warm. bg: CPU cores other processes used meanwhile (above ~0.1, the "
        "timings of that row are disturbed; -: unknown, or the row ran under half a "
        "second, too briefly for /proc's 10 ms ticks).",
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
