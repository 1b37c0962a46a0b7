"""The leaderboard's PNG plots (matplotlib, Agg): grouped bars per task, and each method's
grid (test average and dev score against its swept parameter)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.leaderboard.collect import Task


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def bars(path: Path, rows: list[dict[str, Any]], tasks: list[Task]) -> None:
    """One group per task, one bar per model: mean over seeds, with the std over seeds as the
    error bar (lm-eval's standard error for a single seed)."""
    import numpy as np

    plt = _plt()
    shown = [r for r in rows if r["kind"] != "reported" and any(r.get(t.name) is not None
                                                                 for t in tasks)]
    width = 0.8 / max(1, len(shown))
    fig, ax = plt.subplots(figsize=(2.2 + 1.2 * len(tasks) + 0.25 * len(shown), 4.2))
    x = np.arange(len(tasks))
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(shown):
        values = [r.get(t.name) or 0.0 for t in tasks]
        errs = [r.get(f"{t.name}_std") or r.get(f"{t.name}_stderr") or 0.0 for t in tasks]
        ax.bar(x + (i - (len(shown) - 1) / 2) * width, values, width, yerr=errs,
               label=r["model"], color=cmap(i % 20), capsize=2)
    ax.set_xticks(x, [t.name for t in tasks])
    ax.set_ylabel("test score (accuracy %, ROUGE-L)")
    ax.set_title("Per task, per model")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def grid(path: Path, grid_rows: list[dict[str, Any]]) -> bool:
    """Per method with more than one grid point: the mean dev score against the swept
    parameter; the selected point is ringed. False when nothing was swept."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for r in grid_rows:
        if r["point"] != "search" and r["dev_score"] is not None:
            methods.setdefault(r["model"], []).append(r)
    swept = {}
    for method, rows in methods.items():
        params = [k for k in rows[0] if k.startswith("param_")]
        varying = [k for k in params if len({r.get(k) for r in rows}) > 1]
        if varying:
            swept[method] = (rows, varying[0])
    if not swept:
        return False
    plt = _plt()
    cols = min(4, len(swept))
    nrows = -(-len(swept) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat[len(swept):]:
        ax.set_visible(False)
    for ax, (method, (rows, axis)) in zip(axes.flat, swept.items()):
        for seed in sorted({r["seed"] for r in rows}):
            pts = sorted((r[axis], r["dev_score"], r["selected"]) for r in rows if r["seed"] == seed)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"seed {seed}")
            for xv, yv, sel in pts:
                if sel:
                    ax.scatter([xv], [yv], s=140, facecolors="none", edgecolors="black")
        ax.set_title(method)
        ax.set_xlabel(axis.removeprefix("param_"))
        ax.set_ylabel("dev mean")
        ax.legend(fontsize=7)
    fig.suptitle("Grid: mean dev score per point (ringed: chosen, the one evaluated on test)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True
