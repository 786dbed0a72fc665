"""Smoke test of the benchmark suite (mpslayout.bench): structure and correctness, no timings."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

import numpy as np
import pytest

import mpslayout
from mpslayout import bench, cli

CASE = "mobilenet.depthwise"  # (512, 1, 3, 3): 18 kB, the smallest case
HAVE_MLX = importlib.util.find_spec("mlx") is not None


def small_run(**kwargs):
    options = {"cases": CASE, "repeats": 1, "threads": [1], "tiny": False, "progress": False,
               "flush_bytes": 1 << 20, "modes": ("cold",)}
    options.update(kwargs)
    return bench.run_benchmark(**options)


def test_result_structure():
    report = small_run()
    assert set(report) == {"machine", "settings", "results", "tiny_call"}
    assert report["tiny_call"] is None
    assert report["machine"]["isa"]
    assert report["settings"]["repeats"] == 1
    results = report["results"]
    assert [(r["case"], r["dtype"], r["threads"]) for r in results] == [
        (CASE, "float32", 1), (CASE, "float16", 1)]
    for r in results:
        assert r["shape"] == [512, 1, 3, 3]
        assert r["out_shape"] == [512, 3, 3]
        assert r["bytes_in"] == 512 * 9 * 4
        assert r["bytes_out"] == 512 * 9 * (4 if r["dtype"] == "float32" else 2)
        names = [c["name"] for c in r["contenders"]]
        assert names[:2] == ["mpslayout", "np.copyto"]
        assert names[-1] == "memcpy"
        assert ("np.astype" if r["dtype"] == "float16" else "np.ascontiguousarray") in names
        for c in r["contenders"]:
            assert len(c["times_s"]) == 1
            assert c["times_s"][0] > 0
            assert c["min_s"] <= c["q1_s"] <= c["median_s"] <= c["q3_s"] <= c["max_s"]
            assert c["median_s"] > 0
            assert c["gbps"] > 0
            for key in ("ratio_vs_memcpy", "ratio_vs_numpy"):
                assert c[key]["median"] > 0
                assert len(c[key]["values"]) == 1
        by_name = {c["name"]: c for c in r["contenders"]}
        assert by_name["np.copyto"]["ratio_vs_numpy"]["median"] == 1.0
        assert by_name["memcpy"]["ratio_vs_memcpy"]["median"] == 1.0
        assert by_name["memcpy"]["bytes_moved"] == 2 * r["bytes_in"]
    json.dumps(report)  # what --json writes
    text = bench.render_markdown(report)
    assert CASE in text
    assert "mpslayout" in text


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", bench.select_cases(CASE) + bench.select_cases("resnet50.conv1"),
                         ids=lambda c: c.name)
def test_bench_outputs_equal_numpy(case, dtype):
    outputs = bench.check_case(case, dtype, threads=1)
    x = bench.make_input(case)
    want = case.view(x).astype(np.float16 if dtype == "float16" else np.float32)
    want = np.ascontiguousarray(want).reshape(case.out_shape)
    got = outputs["mpslayout"]
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert np.array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))
    assert np.array_equal(outputs["np.copyto"], want)


def test_wrong_result_fails_loudly():
    case = bench.select_cases(CASE)[0]

    def wrong(x, out, dtype, threads):
        def run():
            mpslayout.depthwise_weights(x, dtype=dtype, out=out, threads=threads)
            out.reshape(-1)[-1] += 1
            return out
        return run

    bad = dataclasses.replace(case, mps=wrong)
    with pytest.raises(bench.BenchmarkError, match="mpslayout's result differs"):
        small_run(case_list=[bad], dtypes=("float32",))


def test_tiny_call_structure():
    tiny = bench.tiny_call(quick=True, repeat=1)
    names = [v["name"] for v in tiny["variants"]]
    assert names[0].startswith("mpslayout conv_weights")
    assert any(n.startswith("np.ascontiguousarray") for n in names)
    for v in tiny["variants"]:
        assert v["median_us"] > 0
        assert v["ratio_vs_numpy"] > 0


def test_unknown_case_is_an_error():
    with pytest.raises(ValueError, match="no benchmark case matches"):
        bench.select_cases("no-such-case")


def test_cli_and_script_take_the_same_options():
    argv = ["--quick", "--cases", "vgg", "--repeats", "2", "--threads", "1,2", "--json", "a.json",
            "--markdown", "a.md", "--plot", "a.png", "--no-torch", "--no-mlx", "--modes", "cold",
            "--processes", "3"]
    from_cli = vars(cli.build_parser().parse_args(["bench", *argv]))
    from_script = vars(bench.build_parser().parse_args(argv))
    assert from_cli.pop("command") == "bench"
    assert from_cli.pop("func") is not None
    assert from_cli == from_script
    assert bench._thread_list(from_script["threads"]) == [1, 2]
    assert from_script["no_mlx"]
    assert not bench.build_parser().parse_args([]).no_mlx


def test_no_mlx_and_no_torch_leave_them_out():
    report = small_run(use_torch=False, use_mlx=False, dtypes=("float32",))
    names = [c["name"] for c in report["results"][0]["contenders"]]
    assert "mlx" not in names
    assert "torch" not in names
    assert report["settings"]["mlx"] is False
    assert report["machine"]["mlx"] is None


def test_without_mlx_installed_it_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx", None)  # import mlx.core raises ImportError
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    outputs = bench.check_case(bench.select_cases(CASE)[0], use_torch=False)
    assert "mlx" not in outputs
    assert "np.copyto" in outputs


@pytest.mark.skipif(not HAVE_MLX, reason="needs mlx")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", bench.select_cases(quick=True) + bench.select_cases(CASE),
                         ids=lambda c: c.name)
def test_mlx_contender_equals_numpy(case, dtype):
    """MLX's CPU on the quick cases and the depthwise slice: its result is the numpy
    view's, bit for bit (in the setup verify() checks, and here against numpy directly)."""
    outputs = bench.check_case(case, dtype, threads=1, use_torch=False)
    x = bench.make_input(case)
    want = np.ascontiguousarray(case.view(x).astype(np.dtype(dtype))).reshape(case.out_shape)
    got = outputs["mlx"]
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert np.array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))


@pytest.mark.skipif(not HAVE_MLX, reason="needs mlx")
def test_wrong_mlx_result_fails_loudly():
    """verify() checks MLX like every other contender: a wrong MLX view is refused."""
    case = bench.select_cases(CASE)[0]
    bad = dataclasses.replace(case, view=lambda x: x[:, 0] if isinstance(x, np.ndarray)
                              else x[:, 0] + 1)
    with pytest.raises(bench.BenchmarkError, match="mlx's result differs"):
        small_run(case_list=[bad], dtypes=("float32",), use_torch=False)


@pytest.mark.skipif(not HAVE_MLX, reason="needs mlx")
def test_mlx_in_the_report():
    report = small_run(dtypes=("float32",), use_torch=False)
    names = [c["name"] for c in report["results"][0]["contenders"]]
    assert "mlx" in names
    assert names[-1] == "memcpy"
    assert report["settings"]["mlx"] is True
    assert report["machine"]["mlx"]
    text = bench.render_markdown(report)
    assert "| mlx " in text
    assert f"mlx {report['machine']['mlx']}" in text
    tiny = bench.tiny_call(quick=True, repeat=1, mlx_mod=pytest.importorskip("mlx.core"))
    assert any(v["name"].startswith("mlx ") for v in tiny["variants"])


def test_cold_data_mode_cycles_distinct_copies_without_flushing():
    """cold-data: each run takes the next copy of the data (so no run finds the previous
    one's data in cache) and nothing is flushed; cold: every run flushed, one copy."""
    from mpslayout.bench.contenders import Contender, Setup

    ran: list[tuple[int, str]] = []
    flushes = []

    def setup(k):
        return Setup([Contender(name, (lambda k=k, name=name: ran.append((k, name))), 1, 1,
                                lambda r: None) for name in ("mpslayout", "np.copyto", "memcpy")])

    setups = [setup(k) for k in range(4)]
    times = bench.measure(setups, 3, lambda: flushes.append(1), mode="cold-data")
    assert not flushes
    assert [k for k, _ in ran] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [name for _, name in ran[:6]] == ["mpslayout", "np.copyto", "memcpy",
                                             "np.copyto", "memcpy", "mpslayout"]
    assert {n: len(t) for n, t in times.items()} == {"mpslayout": 3, "np.copyto": 3, "memcpy": 3}
    ran.clear()
    bench.measure(setups, 2, lambda: flushes.append(1), mode="cold")
    assert len(flushes) == 6
    assert {k for k, _ in ran} == {0}
    with pytest.raises(ValueError, match="mode"):
        bench.measure(setups, 1, lambda: None, mode="warm")


def test_copies_fill_twice_the_last_level_cache():
    from mpslayout.bench.timing import MAX_COPIES, copies_for

    assert copies_for(36 << 10, 32 << 20) == -(-(64 << 20) // (36 << 10))
    assert copies_for(800 << 20, 32 << 20) == 1  # one run alone is past the LLC
    assert copies_for(1, 32 << 20) == MAX_COPIES


def test_both_modes_and_processes_merge():
    """A run in both modes, and two runs merged as --processes 2 merges them: times and
    paired ratios pooled, each process's median kept and shown as a range."""
    runs = [small_run(modes=("cold", "cold-data"), dtypes=("float32",)) for _ in range(2)]
    assert [(r["mode"], r["data_copies"] > 1) for r in runs[0]["results"]] == [
        ("cold", False), ("cold-data", True)]
    merged = bench.merge_reports(runs)
    assert merged["settings"]["processes"] == 2
    for i, res in enumerate(merged["results"]):
        for j, c in enumerate(res["contenders"]):
            each = [run["results"][i]["contenders"][j] for run in runs]
            assert c["times_s"] == each[0]["times_s"] + each[1]["times_s"]
            assert c["ratio_vs_memcpy"]["process_medians"] == [
                e["ratio_vs_memcpy"]["median"] for e in each]
            assert c["min_s"] == min(e["min_s"] for e in each)
    text = bench.render_markdown(merged)
    lo, hi = sorted(merged["results"][0]["contenders"][0]["ratio_vs_numpy"]["process_medians"])
    assert f"({lo:.2f}-{hi:.2f})" in text
    assert "cold-data" in text
    json.dumps(merged)
    with pytest.raises(ValueError, match="different configurations"):
        bench.merge_reports([runs[0], small_run(dtypes=("float16",))])


def test_processes_option_runs_fresh_processes(tmp_path):
    path = tmp_path / "r.json"
    code = bench.main(["--cases", CASE, "--repeats", "1", "--threads", "1", "--modes", "cold",
                       "--no-torch", "--no-mlx", "--processes", "2", "--json", str(path)])
    assert code == 0
    report = json.loads(path.read_text())
    assert report["settings"]["processes"] == 2
    assert report["settings"]["mlx"] is False  # --no-mlx reaches every process
    assert all(len(c["times_s"]) == 2 for r in report["results"] for c in r["contenders"])
    assert bench.main(["--modes", "lukewarm"]) == 1


def test_flusher_evicts_data_and_code() -> None:
    """The cold flush reads and writes its whole buffer (data) and then compiles Python
    source (code): the data pass alone leaves numpy's ufunc code in the instruction cache,
    which numpy's contenders share."""
    from mpslayout.bench.timing import Flusher

    flush = Flusher(1 << 20)
    assert flush.buf.nbytes == 1 << 20
    calls: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call":
            calls.append(getattr(arg, "__name__", ""))

    sys.setprofile(profile)
    try:
        flush()
    finally:
        sys.setprofile(None)
    assert (flush.buf == 2.0).all()
    assert "compile" in calls


def test_background_load_needs_a_long_enough_window() -> None:
    """/proc's CPU times move in 10 ms ticks: over a few milliseconds the other processes'
    share is noise (it read 20 cores once), so it is reported as unknown, not a number."""
    from mpslayout.bench import timing

    start = timing._cpu_seconds()
    if start is None:
        pytest.skip("no /proc/stat here")
    assert timing._other_cpu(start, 0.004) is None
    assert timing._other_cpu(start, timing.MIN_BG_SECONDS - 1e-3) is None
    got = timing._other_cpu(start, timing.MIN_BG_SECONDS)
    assert got is not None
    assert got >= 0.0
