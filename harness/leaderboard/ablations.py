"""ablations.md / ablations.csv: the variants of a search method (Hi-Merging) that a recipe lists
as entries of their own, side by side: which options each changes from the defaults, the DEV
gain its search reached (what chooses the defaults), and its test scores with the paired
difference from the default variant."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from tabulate import tabulate

from harness.leaderboard import paired
from harness.leaderboard.collect import Measured, Task
from harness.leaderboard.table import _mean, _std
from harness.merge_methods import SEARCH_OPTIONS
from harness.stages import Context


def _mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    return _mean(values), _std(values)


def changed(method: str, options: dict[str, Any]) -> str:
    """The options a variant sets away from the registry's defaults, as `k=v; ...`."""
    defaults = SEARCH_OPTIONS[method]().model_dump()
    return "; ".join(f"{k}={v}" for k, v in sorted(options.items())
                     if k in defaults and defaults[k] != v) or "defaults"


def variant_rows(ctx: Context, rows: list[dict[str, Any]], measured: list[Measured],
                 tasks: list[Task]) -> tuple[list[dict[str, Any]], Optional[str]]:
    """One row per search variant; and the reference variant (the one on the defaults, else
    the first)."""
    searches: dict[str, list[Measured]] = {}
    for m in measured:
        if m.kind == "merge" and m.options is not None:
            searches.setdefault(m.row, []).append(m)
    if len(searches) < 2:
        return [], None
    by_name = {r["model"]: r for r in rows}
    out = []
    for name, ms in searches.items():
        method = ms[0].method
        row: dict[str, Any] = {"variant": name, "options": changed(method, ms[0].options or {}),
                               "seeds": len(ms)}
        gains = [g["dev_gain"] for m in ms for g in m.grid[:1] if g.get("dev_gain") is not None]
        row["dev_gain"], row["dev_gain_std"] = _mean_std(gains)
        for dataset in sorted({k for m in ms for g in m.grid[:1] for k in g["dev_scores"]}):
            devs = [g["dev_scores"][dataset] for m in ms for g in m.grid[:1]
                    if dataset in g["dev_scores"]]
            row[f"dev_{dataset}"] = sum(devs) / len(devs)  # dev score per dataset (0-1)
        for task in tasks:
            row[task.name] = by_name.get(name, {}).get(task.name)
            row[f"{task.name}_std"] = by_name.get(name, {}).get(f"{task.name}_std")
        row["avg"] = by_name.get(name, {}).get("avg")
        row["kept_min"] = by_name.get(name, {}).get("kept_min")
        out.append(row)
    reference = next((r["variant"] for r in out if r["options"] == "defaults"), out[0]["variant"])
    comparisons = paired.compare_rows(ctx, rows, measured, tasks, against=reference,
                                      kinds=("merge",))
    for row in out:
        for c in comparisons:
            if c["model"] == row["variant"]:
                row[f"{c['task']}_vs_ref"] = c["diff"]
                row[f"{c['task']}_vs_ref_ci"] = f"[{c['ci_low']:.1f}, {c['ci_high']:.1f}]"
    return out, reference


def _fmt(value: Optional[float], std: Optional[float] = None, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def write(folder: Path, ctx: Context, rows, measured, tasks) -> bool:
    """ablations.md and ablations.csv when the recipe has two or more search variants."""
    variants, reference = variant_rows(ctx, rows, measured, tasks)
    if not variants:
        return False
    variants.sort(key=lambda r: -(r["dev_gain"] if r["dev_gain"] is not None else -math.inf))
    pd.DataFrame(variants).to_csv(folder / "ablations.csv", index=False)
    dev = sorted({k for r in variants for k in r if k.startswith("dev_") and k != "dev_gain"
                  and k != "dev_gain_std"})
    head = (["variant", "options changed", "seeds", "DEV gain (norm.)"]
            + [f"DEV {d[4:]}" for d in dev]
            + [f"test {t.name}" for t in tasks] + ["test avg", "kept min %"]
            + [f"{t.name} vs {reference}" for t in tasks])
    body = [[r["variant"], r["options"], str(r["seeds"]), _fmt(r["dev_gain"], r["dev_gain_std"], 3)]
            + [_fmt(r.get(d), digits=3) for d in dev]
            + [_fmt(r.get(t.name), r.get(f"{t.name}_std")) for t in tasks]
            + [_fmt(r.get("avg")), _fmt(r.get("kept_min"))]
            + [(_fmt(r[f"{t.name}_vs_ref"]) + " " + r[f"{t.name}_vs_ref_ci"])
               if f"{t.name}_vs_ref" in r else "" for t in tasks]
            for r in variants]
    lines = [f"# Ablations: {ctx.recipe.name}", "",
             "Each variant is one entry of the recipe's `merges` (the method and its options); "
             "every option a variant does not set has the registry's default "
             "(harness/merge_methods.py). Sorted by the DEV gain its search reached: the mean "
             "over tasks of (dev score - base) / (specialist - base), mean ± std over seeds. "
             "The DEV column is the one that chooses the defaults; the test columns are the "
             "leaderboard's (mean ± std over seeds), and the last columns the paired test "
             f"difference from `{reference}` with its bootstrap 95 % interval over items and "
             "seeds (an interval that holds 0 shows no difference).", "",
             tabulate(body, headers=head, tablefmt="pipe", disable_numparse=True), "",
             "The same numbers: ablations.csv.", ""]
    (folder / "ablations.md").write_text("\n".join(lines), encoding="utf-8")
    return True
