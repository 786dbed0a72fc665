"""The report as a PNG bar chart (matplotlib)."""

from __future__ import annotations

from typing import Any

from .cases import DTYPES
from .contenders import CEILING


def _plot_name(name: str) -> str:
    return "np.ascontiguousarray / astype" if name in ("np.ascontiguousarray", "np.astype") \
        else name


def write_plot(report: dict[str, Any], path: str) -> None:
    """Bar chart: median time relative to memcpy, per case and contender, one panel per
    (mode, dtype, threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    results = report["results"]
    modes = list(dict.fromkeys(r.get("mode", "cold") for r in results))
    panels = sorted({(r.get("mode", "cold"), r["dtype"], r["threads"]) for r in results},
                    key=lambda p: (modes.index(p[0]), DTYPES.index(p[1]), p[2]))
    case_names = list(dict.fromkeys(r["case"] for r in results))
    contenders = list(dict.fromkeys(_plot_name(c["name"]) for r in results
                                    for c in r["contenders"] if c["name"] != CEILING))
    ncols = len({p[2] for p in panels})
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, (0.45 * len(case_names) + 1.2)
                                                     * nrows + 1.2), squeeze=False, sharey=True)
    height = 0.8 / max(1, len(contenders))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for idx, (mode, dtype, th) in enumerate(panels):
        ax = axes[idx // ncols][idx % ncols]
        for j, name in enumerate(contenders):
            ys, vals = [], []
            for r in results:
                if (r.get("mode", "cold"), r["dtype"], r["threads"]) != (mode, dtype, th):
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
                     f"{th} thread{'s' if th > 1 else ''}, {mode}")
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
    fig.suptitle(f"mpslayout benchmark — {m['cpu_model']}, "
                 f"{m['usable_cpus']} CPUs, {m['isa']}")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
