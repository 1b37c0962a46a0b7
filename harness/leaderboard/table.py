"""The leaderboard's numbers, computed from the collected evals exactly as DEFINITIONS say.

One row per model (`model` column): base, each specialist, multitask, each method at its
dev-selected grid point, each search variant (Hi-Merging); reported reference rows last. Multi-seed recipes average
each task over seeds (mean, sample std); every derived column is computed from those means.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import pandas as pd

from harness.leaderboard.collect import Measured, Task, metric
from harness.recipe import ReferenceRow

DEFINITIONS = {
    "task columns": "the task's primary metric on its TEST split: accuracy in % for multiple "
                    "choice, ROUGE-L F1 (x100) for open QA; mean over seeds, ± (`_std`) the "
                    "sample standard deviation over seeds, se (`_stderr`) lm-eval's standard "
                    "error (mean over seeds)",
    "avg_<lang>": "mean of the task columns of that language",
    "avg": "mean of all task columns",
    "avg_rank": "mean over tasks of the row's rank on that task among measured rows "
                "(1 = best, ties share the mean rank); reported rows are not ranked",
    "rel_improvement_pct": "100 x (avg - avg of base) / avg of base",
    "expert_normalised": "mean over tasks of 100 x row score / the best specialist's score on "
                         "that task",
    "<task>_cc": "chance-corrected accuracy, 100 x (acc - 1/k) / (1 - 1/k) with k options per "
                 "item (0 = chance, 100 = perfect); multiple-choice tasks only",
    "cc_avg": "mean of the <task>_cc columns",
    "<task>_kept": "share of the specialist gain kept on the task, 100 x (row - base) / (best "
                   "specialist on that task - base), from the test means; empty where no "
                   "specialist beats the base",
    "kept_min": "the smallest <task>_kept of the row (the task the row keeps least of): the "
                "worst task's normalised gain",
    "best single specialist": "the specialist with the best avg over all tasks, repeated as a "
                              "reference row after the merges (not ranked)",
    "paired.csv": "each merge and the multi-task fine-tune against the best baseline (the grid "
                  "method with the best test avg), per task on the same test items: the mean "
                  "paired difference, its paired bootstrap 95 % interval over items and seeds "
                  "(2000 draws), and for multiple choice the exact McNemar p on the discordant "
                  "items pooled over seeds; `better`/`worse` only where the interval excludes 0",
    "<qa task>_<metric>": "open QA's secondary metrics on test: lm-eval's BLEU-4 (bleu4_13a / "
                          "bleu4_zh) and LLaMA-Factory's ComputeSimilarity (lf_bleu4: BLEU-4 on "
                          "characters, smoothing method 3; lf_rouge1/2/L: ROUGE F1 over jieba "
                          "words), all x100",
    "selection": "a baseline's grid point is the one with the best mean normalised DEV gain for "
                 "its seed: per task (dev score - base) / (specialist - base), with dev scores "
                 "accuracy 0-1 for multiple choice and mean token log-likelihood for open QA, so "
                 "every task is on one scale; ties go to the higher raw dev mean, then to the "
                 "lighter merge; only that point is written and evaluated on test; every point's "
                 "dev scores and gain are in grid.csv",
}
KIND_ORDER = {"base": 0, "specialist": 1, "multitask": 2, "merge": 3, "reported": 4}
BEST_SPECIALIST = "best single specialist"


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> Optional[float]:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def chance_corrected(acc: float, options: int) -> float:
    return 100.0 * (acc / 100.0 - 1.0 / options) / (1.0 - 1.0 / options)


def _n_options(group: list[Measured], task: Task) -> Optional[int]:
    for m in group:
        if m.results:
            n = m.results.get("harness", {}).get("n_options", {}).get(task.data)
            if n:
                return int(n)
    return None


# Open QA's metrics beside the primary ROUGE-L (lm-eval's BLEU-4, LLaMA-Factory's similarity)
SECONDARY = ("bleu4_13a", "bleu4_zh", "lf_bleu4", "lf_rouge1", "lf_rouge2", "lf_rougeL")


def _secondary(done: list[Measured], task: Task) -> dict[str, float]:
    """Mean over seeds of each secondary QA metric every seed's results carry."""
    out = {}
    for name in SECONDARY:
        values = [m.results.get("results", {}).get(task.name, {}).get(f"{name},none")
                  for m in done]
        if values and all(isinstance(v, (int, float)) for v in values):
            out[f"{task.name}_{name}"] = _mean(values)
    return out


def main_rows(measured: list[Measured], tasks: list[Task]) -> list[dict[str, Any]]:
    """One row per model over its seeds: the selected point of each method and seed."""
    groups: dict[tuple[str, str], list[Measured]] = {}
    for m in measured:
        groups.setdefault((m.kind, m.row), []).append(m)
    rows = []
    for (kind, name), group in groups.items():
        done = [m for m in group if not m.missing]
        seeds = sorted({m.seed for m in group if m.seed is not None})
        status = "measured" if len(done) == len(group) else ("missing" if not done else "partial")
        row: dict[str, Any] = {"model": name, "kind": kind, "status": status,
                               "seeds": ",".join(map(str, seeds)), "n_evals": len(done)}
        if kind == "merge" and group[0].options is None:  # a grid, not a search
            row["selected_point"] = "; ".join(f"seed {m.seed}: {m.point}" for m in
                                              sorted(group, key=lambda m: m.seed or 0))
        for task in tasks:
            values = [v for v, _, _ in (metric(m.results, task.name) for m in done) if v is not None]
            errs = [e for _, e, _ in (metric(m.results, task.name) for m in done) if e is not None]
            complete = status == "measured" and len(values) == len(done)
            row[task.name] = _mean(values) if complete else None
            row[f"{task.name}_std"] = _std(values) if complete else None
            row[f"{task.name}_stderr"] = _mean(errs) if complete else None
            if task.task_type == "qa" and complete:
                row.update(_secondary(done, task))
            k = _n_options(done, task)
            if task.task_type == "mcqa" and k and row[task.name] is not None:
                row[f"{task.name}_cc"] = chance_corrected(row[task.name], k)
        row["_evals"] = [m.eval_unit.key for m in group]
        rows.append(row)
    rows.sort(key=lambda r: KIND_ORDER[r["kind"]])  # stable: the recipe's order within a kind
    return rows


def reference_rows(references: list[ReferenceRow], tasks: list[Task]) -> list[dict[str, Any]]:
    rows = []
    for ref in references:
        row: dict[str, Any] = {"model": f"{ref.name} (reported)", "kind": "reported",
                               "status": "reported", "source": ref.source}
        for task in tasks:
            row[task.name] = ref.scores.get(task.name)
        rows.append(row)
    return rows


def derive(rows: list[dict[str, Any]], tasks: list[Task]) -> None:
    """Fill the derived columns of every measured row in place (see DEFINITIONS)."""
    names = [t.name for t in tasks]
    languages = sorted({t.language for t in tasks})
    measured = [r for r in rows if r["kind"] != "reported"]
    for r in rows:
        for lang in languages:
            vals = [r.get(t.name) for t in tasks if t.language == lang]
            r[f"avg_{lang}"] = _mean(vals) if all(v is not None for v in vals) else None
        vals = [r.get(n) for n in names]
        r["avg"] = _mean(vals) if all(v is not None for v in vals) else None
    base = next((r for r in measured if r["kind"] == "base"), None)
    best = {n: max((r[n] for r in measured if r["kind"] == "specialist" and r.get(n) is not None),
                   default=None) for n in names}
    ranks = {n: _ranks([(i, r.get(n)) for i, r in enumerate(measured)]) for n in names}
    for i, r in enumerate(measured):
        per_task = [ranks[n].get(i) for n in names]
        r["avg_rank"] = _mean(per_task) if all(p is not None for p in per_task) else None
        r["rel_improvement_pct"] = (100.0 * (r["avg"] - base["avg"]) / base["avg"]
                                    if base and base["avg"] and r["avg"] is not None else None)
        norm = [100.0 * r[n] / best[n] for n in names if r.get(n) is not None and best[n]]
        r["expert_normalised"] = _mean(norm) if len(norm) == len(names) else None
        cc = [r[f"{t.name}_cc"] for t in tasks if f"{t.name}_cc" in r]
        r["cc_avg"] = _mean(cc) if cc else None
        for n in names:
            gain = best[n] - base[n] if base and best[n] is not None and base.get(n) is not None else None
            r[f"{n}_kept"] = (100.0 * (r[n] - base[n]) / gain
                              if gain and gain > 0 and r.get(n) is not None else None)
        kept = [r[f"{n}_kept"] for n in names]
        r["kept_min"] = min(kept) if kept and all(k is not None for k in kept) else None


def add_best_specialist(rows: list[dict[str, Any]]) -> None:
    """A reference row after the merges: the specialist with the best average over every task,
    the bar a merge must clear to be worth more than picking one model. Not ranked."""
    specialists = [r for r in rows if r["kind"] == "specialist" and r.get("avg") is not None]
    if not specialists:
        return
    best = max(specialists, key=lambda r: r["avg"])
    row = {k: v for k, v in best.items() if k not in ("avg_rank", "_link")}
    row.update(model=f"{BEST_SPECIALIST} ({best['model']})", kind="best_specialist",
               _link=best.get("_link"))
    at = max((i for i, r in enumerate(rows) if r["kind"] in ("merge", "multitask",
                                                             "specialist")), default=-1)
    rows.insert(at + 1, row)


def _ranks(values: list[tuple[int, Optional[float]]]) -> dict[int, float]:
    """Rank 1 = highest; ties share the mean of their ranks; missing values are not ranked."""
    present = sorted([(v, i) for i, v in values if v is not None], key=lambda x: -x[0])
    out, pos = {}, 0
    while pos < len(present):
        end = pos
        while end + 1 < len(present) and present[end + 1][0] == present[pos][0]:
            end += 1
        for k in range(pos, end + 1):
            out[present[k][1]] = (pos + end) / 2 + 1
        pos = end + 1
    return out


def grid_rows(measured: list[Measured]) -> list[dict[str, Any]]:
    """Every grid point the merge stage scored, per method and seed: its DEV scores and whether
    it was chosen. Test numbers exist only for the chosen point (the leaderboard row): the
    others were never written or evaluated."""
    rows = []
    for m in measured:
        if m.kind != "merge":
            continue
        for point in m.grid:
            row: dict[str, Any] = {"model": m.row, "seed": m.seed, "point": point["point"],
                                   **{f"param_{k}": v for k, v in point["params"].items()},
                                   **{f"dev_{t}": v for t, v in point["dev_scores"].items()},
                                   "dev_score": point["dev_mean"],
                                   # the selection key: mean normalised dev gain (merge/gains.py)
                                   "gain_dev": point.get("dev_gain"),
                                   "selected": point["selected"]}
            rows.append(row)
    return rows


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
