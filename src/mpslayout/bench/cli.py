"""``mpslayout bench`` and ``bench/run.py``: options, the run, the files it writes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from .cases import select_cases
from .plot import write_plot
from .report import render_markdown
from .suite import FULL_REPEATS, QUICK_REPEATS, _thread_list, merge_reports, run_benchmark
from .timing import MODES, _cpu_seconds, _other_cpu


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``bench/run.py`` and ``mpslayout bench`` (both call this)."""
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
    p.add_argument("--no-mlx", action="store_true", help="leave MLX out even if installed")
    p.add_argument("--modes", metavar="LIST", default=",".join(MODES),
                   help="cold modes, comma separated: cold (every cache flushed before each "
                        "run), cold-data (distinct data larger than the LLC, code warm); "
                        "default both")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="repeat the whole run in N fresh processes and report the spread "
                        "of the paired ratios across them (default 1: this process)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Time mpslayout's conversions against numpy, PyTorch, MLX and memcpy on "
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


def _modes(text: str) -> list[str]:
    modes = [m for m in text.replace(" ", "").split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"--modes must be a comma separated list of {', '.join(MODES)}, "
                         f"got {text!r}")
    return list(dict.fromkeys(modes))


def _child_argv(args: argparse.Namespace, json_path: str) -> list[str]:
    """The options of one process of ``--processes N``: the same run, results as JSON."""
    argv = [sys.executable, "-m", "mpslayout.bench", "--json", json_path, "--modes", args.modes]
    if args.quick:
        argv.append("--quick")
    for opt in ("cases", "repeats", "threads"):
        value = getattr(args, opt)
        if value is not None:
            argv += [f"--{opt}", str(value)]
    if args.no_torch:
        argv.append("--no-torch")
    if args.no_mlx:
        argv.append("--no-mlx")
    return argv


def _run_processes(args: argparse.Namespace) -> dict:
    """``--processes N``: the run N times in fresh processes, one after the other, merged."""
    reports = []
    with tempfile.TemporaryDirectory(prefix="mpslayout-bench-") as tmp:
        for i in range(args.processes):
            path = os.path.join(tmp, f"process{i}.json")
            print(f"mpslayout bench: process {i + 1} of {args.processes}", file=sys.stderr)
            proc = subprocess.run(_child_argv(args, path), stdout=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise OSError(f"benchmark process {i + 1} failed (exit {proc.returncode})")
            with open(path, encoding="utf-8") as f:
                reports.append(json.load(f))
    return merge_reports(reports)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the suite for parsed options (shared by ``mpslayout bench`` and bench/run.py)."""
    if args.plot and not _have_matplotlib():
        print("mpslayout bench: --plot needs matplotlib, which is not installed: "
              "pip install 'mpslayout[bench]' (or pip install matplotlib). Nothing was run.",
              file=sys.stderr)
        return 2
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.processes < 1:
        raise ValueError(f"--processes must be >= 1, got {args.processes}")
    select_cases(args.cases, quick=args.quick)  # report a bad option before anything runs
    _thread_list(args.threads)
    modes = _modes(args.modes)
    start, t0 = _cpu_seconds(), time.perf_counter()
    time.sleep(0.5)
    busy = _other_cpu(start, time.perf_counter() - t0)
    if busy is not None and busy > 0.2:
        print(f"mpslayout bench: warning: the machine is busy (other processes use {busy:.1f} "
              "cores); timings, multi-threaded ones most, will be noisy", file=sys.stderr)
    if args.processes > 1:
        report = _run_processes(args)
    else:
        report = run_benchmark(cases=args.cases, quick=args.quick, repeats=args.repeats,
                               threads=args.threads, use_torch=not args.no_torch,
                               use_mlx=not args.no_mlx, modes=modes)
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
