"""The leaderboard's paired comparisons: every merge (and the multi-task fine-tune) against the
best baseline, task by task, on the same test items (harness/leaderboard/stats.py), read from
each eval's samples.jsonl in the run store."""
from __future__ import annotations

from typing import Any, Optional

from harness.leaderboard import stats
from harness.leaderboard.collect import Measured, Task
from harness.stages import Context


def items_of(ctx: Context, m: Measured) -> Optional[stats.Items]:
    path = ctx.store.path("eval", m.eval_unit.key) / "samples.jsonl"
    if m.missing or not path.is_file():
        return None
    return stats.read_items(path)


def per_seed(ctx: Context, measured: list[Measured]) -> dict[str, dict[Any, stats.Items]]:
    """row -> seed -> its per-item test scores (rows with every seed's samples only)."""
    out: dict[str, dict[Any, stats.Items]] = {}
    for m in measured:
        items = items_of(ctx, m)
        if items is not None:
            out.setdefault(m.row, {})[m.seed] = items
    return out


def best_baseline(rows: list[dict[str, Any]], measured: list[Measured]) -> Optional[str]:
    """The grid method (not a search) with the best test average: the bar every merge is held
    to (choosing it on test makes the comparison harder for the others, never easier)."""
    grids = {m.row for m in measured if m.kind == "merge" and m.options is None}
    scored = [r for r in rows if r["model"] in grids and r.get("avg") is not None]
    return max(scored, key=lambda r: r["avg"])["model"] if scored else None


def compare_rows(ctx: Context, rows: list[dict[str, Any]], measured: list[Measured],
                 tasks: list[Task], against: Optional[str] = None,
                 kinds: tuple[str, ...] = ("merge", "multitask")) -> list[dict[str, Any]]:
    """One row per (model, task): the paired difference with `against` (default: the best
    baseline), its 95 % interval and, for multiple choice, McNemar's p."""
    against = against or best_baseline(rows, measured)
    items = per_seed(ctx, measured)
    if against is None or against not in items:
        return []
    out = []
    for r in rows:
        if r["kind"] not in kinds or r["model"] == against or r["model"] not in items:
            continue
        seeds = sorted(set(items[r["model"]]) & set(items[against]), key=str)
        for task in tasks:
            a = [items[r["model"]][s].get(task.name, {}) for s in seeds]
            b = [items[against][s].get(task.name, {}) for s in seeds]
            result = stats.compare(a, b, task.task_type == "mcqa")
            if result is not None:
                out.append({"model": r["model"], "against": against, "task": task.name,
                            **result, "verdict": verdict(result)})
    return out


def verdict(result: dict[str, Any]) -> str:
    if result["ci_low"] > 0:
        return "better"
    if result["ci_high"] < 0:
        return "worse"
    return "not shown different"
