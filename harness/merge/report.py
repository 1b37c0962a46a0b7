"""Hi-Merging's records: contribution table (JSON + CSV), heatmap (PNG), decision log."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def _rows(table: dict[str, Any], models: list[str]) -> list[dict[str, Any]]:
    rows = []
    for key, gamma in table["gamma"].items():
        layer, model = key.split(":", 1)
        sp, mg = table["specialist"][key], table["merged"][key]
        rows.append({"layer": int(layer), "model": model,
                     "alpha_specialist": sp["alpha"], "beta_specialist": sp["beta"],
                     "c_specialist": sp["c"], "alpha_merged": mg["alpha"],
                     "beta_merged": mg["beta"], "c_merged": mg["c"], "gamma": gamma,
                     "gamma_se": table.get("gamma_se", {}).get(key),
                     "Gamma": table["Gamma"][layer],
                     "Gamma_se": table.get("Gamma_se", {}).get(layer)})
    return sorted(rows, key=lambda r: (r["layer"], models.index(r["model"])))


def heatmap(path: Path, before: dict, after: dict, models: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = sorted({int(k.split(":")[0]) for k in before["gamma"]})
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.6 * len(models) * 2, 1.5 + 0.35 * len(layers)),
                             sharey=True)
    grids = [np.array([[t["gamma"][f"{l}:{m}"] for m in models] for l in layers]) for t in (before, after)]
    bound = max(1e-9, max(float(abs(g).max()) for g in grids))
    for ax, grid, title in zip(axes, grids, ("before resolution", "after resolution")):
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
        ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers])
        ax.set_title(f"conflict γ, {title}")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="γ = c(specialist) − c(merged)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write(folder: Path, result: dict[str, Any], models: list[str]) -> None:
    """The search's records; a model-wise-only variant has no contribution analysis."""
    tables = {"before": result["contributions"], "after": result["contributions_after"]}
    if tables["before"] is not None:
        (folder / "contributions.json").write_text(json.dumps(tables, indent=2))
        rows = [{"stage": stage, **row} for stage, t in tables.items()
                for row in _rows(t, models)]
        with open(folder / "contributions.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        heatmap(folder / "heatmap.png", tables["before"], tables["after"], models)
    with open(folder / "decisions.jsonl", "w") as fh:
        for decision in result["decisions"]:
            fh.write(json.dumps(decision) + "\n")
    (folder / "plan.json").write_text(json.dumps(
        {"model_wise": result["model_wise"],
         "final": {str(g): parts for g, parts in result["final"].items()}}, indent=2))
