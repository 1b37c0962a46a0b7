"""The leaderboard's files: README.md (the table people read), leaderboard.csv/json, grid.csv,
and a static index.html with the same tables and the plots."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional

from tabulate import tabulate

from harness.leaderboard.collect import Task
from harness.leaderboard.table import DEFINITIONS, frame


def fmt(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} ± {std:.1f}" if std is not None else f"{value:.1f}"


def headline(rows: list[dict[str, Any]], tasks: list[Task], link: bool = True) -> list[list[str]]:
    """The table cells: tasks (mean ± std), averages, rank and the relative columns."""
    languages = sorted({t.language for t in tasks})
    out = []
    for r in rows:
        name = r["model"]
        if link and r.get("_link"):
            name = f"[{name}]({r['_link']})"
        if r["status"] in ("missing", "partial"):
            name += f" ({r['status']})"
        cells = [name]
        for t in tasks:
            cell = fmt(r.get(t.name), r.get(f"{t.name}_std"))
            if cell and r.get(f"{t.name}_stderr") is not None:
                cell += f" (se {r[f'{t.name}_stderr']:.1f})"
            cells.append("missing" if r["status"] == "missing" else cell)
        cells += [fmt(r.get(f"avg_{lang}")) for lang in languages]
        cells += [fmt(r.get("avg")), fmt(r.get("avg_rank")), fmt(r.get("rel_improvement_pct")),
                  fmt(r.get("expert_normalised")), fmt(r.get("cc_avg")), fmt(r.get("kept_min"))]
        out.append(cells)
    return out


def header(tasks: list[Task]) -> list[str]:
    languages = sorted({t.language for t in tasks})
    return (["model"] + [t.name for t in tasks] + [f"avg {lang.upper()}" for lang in languages]
            + ["avg", "avg rank", "rel. impr. %", "expert-norm.", "chance-corr. acc",
               "kept min %"])


def kept_table(rows: list[dict[str, Any]], tasks: list[Task]) -> list[list[str]]:
    """Per merged or multi-task row: the share of each task's specialist gain it keeps."""
    return [[r["model"]] + [fmt(r.get(f"{t.name}_kept")) for t in tasks] + [fmt(r.get("kept_min"))]
            for r in rows if r["kind"] in ("merge", "multitask")]


def secondary_table(rows: list[dict[str, Any]], tasks: list[Task]) -> tuple[list[str], list[list[str]]]:
    """Open QA's secondary metrics (the columns any measured row has), one row per model."""
    from harness.leaderboard.table import SECONDARY

    cols = [f"{t.name}_{m}" for t in tasks if t.task_type == "qa" for m in SECONDARY
            if any(r.get(f"{t.name}_{m}") is not None for r in rows)]
    body = [[r["model"]] + [fmt(r.get(c)) for c in cols] for r in rows
            if r["kind"] != "reported" and any(r.get(c) is not None for c in cols)]
    return ["model"] + cols, body


def _dev_columns(grid_rows: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in grid_rows for k in r if k.startswith("dev_") and k != "dev_score"})


def grid_table(grid_rows: list[dict[str, Any]]) -> list[list[str]]:
    dev = _dev_columns(grid_rows)
    out = []
    for r in grid_rows:
        cells = [r["model"], "" if r["seed"] is None else str(r["seed"]), r["point"]]
        cells += ["" if r.get(c) is None else f"{r[c]:.3f}" for c in dev]
        cells += ["" if r[c] is None else f"{r[c]:.3f}" for c in ("dev_score", "gain_dev")]
        cells += ["yes" if r["selected"] else ""]
        out.append(cells)
    return out


def grid_header(grid_rows: list[dict[str, Any]]) -> list[str]:
    dev = [c.replace("_", " ", 1) for c in _dev_columns(grid_rows)]
    return ["method", "seed", "point"] + dev + ["dev mean", "dev gain (norm.)", "selected"]


def write_data(folder: Path, rows, grid_rows, tasks, meta: dict[str, Any]) -> None:
    frame(rows).to_csv(folder / "leaderboard.csv", index=False)
    frame(grid_rows).to_csv(folder / "grid.csv", index=False)
    clean = [{k: v for k, v in r.items() if not k.startswith("_") or k in ("_evals", "_link")}
             for r in rows]
    (folder / "leaderboard.json").write_text(json.dumps(
        {**meta, "tasks": [t.__dict__ for t in tasks], "definitions": DEFINITIONS,
         "rows": clean, "grid": grid_rows}, indent=2, ensure_ascii=False, default=str))


PAIRED_COLUMNS = ["model", "against", "task", "diff", "ci_low", "ci_high", "items", "seeds",
                  "only_row", "only_best", "mcnemar_p", "verdict"]


def write_paired(folder: Path, comparisons: list[dict[str, Any]]) -> None:
    import pandas as pd

    pd.DataFrame(comparisons, columns=PAIRED_COLUMNS).to_csv(folder / "paired.csv", index=False)


def paired_table(comparisons: list[dict[str, Any]]) -> list[list[str]]:
    return [[c["model"], c["task"], f"{c['diff']:+.1f}", f"[{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]",
             "" if c.get("mcnemar_p") is None else f"{c['mcnemar_p']:.3g}", str(c["items"]),
             c["verdict"]] for c in comparisons]


def readme(folder: Path, rows, grid_rows, tasks, meta: dict[str, Any], plots: list[str],
           comparisons: Optional[list[dict[str, Any]]] = None, ablations: bool = False) -> None:
    seeds = meta["seeds"]
    lines = [f"# Leaderboard: {meta['recipe']}", "",
             f"{meta['description']}", "",
             f"Test split, zero-shot, lm-eval ({meta['backend']} backend); "
             f"{len(seeds)} seed(s): {', '.join(map(str, seeds))}"
             + (" (mean ± sample std over seeds)." if len(seeds) > 1 else "."),
             "Every number below is read from the eval results in the run store "
             "(`runs/<recipe>/eval/<key>/results.json`); each model links its provenance "
             "(content keys, the mergekit or LLaMA-Factory YAML, versions).", "",
             tabulate(headline(rows, tasks), headers=header(tasks), tablefmt="pipe",
                      disable_numparse=True), ""]
    missing = [r["model"] for r in rows if r["status"] in ("missing", "partial")]
    if missing:
        lines += [f"Missing or incomplete evals (shown, never filled): {', '.join(missing)}. "
                  f"Run `make recipe={meta['recipe']}` to complete them.", ""]
    if any(r["kind"] == "reported" for r in rows):
        lines += ["Rows marked *(reported)* are numbers published elsewhere (source in "
                  "leaderboard.csv), not measured here; they are not ranked.", ""]
    kept = kept_table(rows, tasks)
    if kept:
        lines += ["## Kept share of each specialist's gain (test, %)", "",
                  "100 x (row - base) / (best specialist - base) per task: 100 = as good as the "
                  "specialist, 0 = no better than the base.", "",
                  tabulate(kept, headers=["model"] + [t.name for t in tasks] + ["min"],
                           tablefmt="pipe", disable_numparse=True), ""]
    if comparisons:
        lines += [f"## Paired comparisons with the best baseline ({comparisons[0]['against']}), "
                  "test", "",
                  "Per task, on the same test items: the mean paired difference (row - best "
                  "baseline, table units), its paired bootstrap 95 % interval over items and "
                  "seeds, and McNemar's exact p for multiple choice (paired.csv). A row is "
                  "called better or worse only where the interval excludes 0.", "",
                  tabulate(paired_table(comparisons),
                           headers=["model", "task", "diff", "95 % interval", "McNemar p",
                                    "items", "verdict"], tablefmt="pipe",
                           disable_numparse=True), ""]
    if ablations:
        lines += ["Hi-Merging's variants, side by side with their DEV gains: "
                  "[ablations.md](ablations.md).", ""]
    head, body = secondary_table(rows, tasks)
    if body:
        lines += ["## Open QA: secondary metrics (test)", "",
                  "lm-eval's BLEU-4 and LLaMA-Factory's ComputeSimilarity (lf_*: BLEU-4 on "
                  "characters, ROUGE over jieba words), for comparison with papers that report "
                  "them.", "",
                  tabulate(body, headers=head, tablefmt="pipe", disable_numparse=True), ""]
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()] + [""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += ["## Full grid (every grid point, every seed: dev scores)", "",
              "Each point was built in memory and scored on the dev split; only the selected "
              "one was written and evaluated on test (its numbers are the table above). The "
              "selection key is the dev gain: per task (score - base) / (specialist - base) on "
              "dev, averaged over tasks, so tasks of different metrics and option counts weigh "
              "the same; ties go to the higher raw dev mean, then to the lighter merge.", "",
              tabulate(grid_table(grid_rows), headers=grid_header(grid_rows), tablefmt="pipe",
                       disable_numparse=True), "",
              f"Files: leaderboard.csv, leaderboard.json, grid.csv, paired.csv, index.html, "
              "plots/, models/. "
              f"Rebuild: `make recipe={meta['recipe']}"
              + (f" SEEDS={','.join(map(str, seeds))}`" if len(seeds) > 1 else "`"), ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")


def _html_table(head: list[str], body: list[list[str]], links: list[Optional[str]]) -> str:
    cells = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row, link in zip(body, links):
        first = html.escape(row[0])
        if link:
            first = f'<a href="{html.escape(link)}">{first}</a>'
        rest = "".join(f"<td>{html.escape(c)}</td>" for c in row[1:])
        cells.append(f"<tr><td>{first}</td>{rest}</tr>")
    return "<table>\n" + "\n".join(cells) + "\n</table>"


def index_html(folder: Path, rows, grid_rows, tasks, meta: dict[str, Any], plots: list[str]) -> None:
    main = _html_table(header(tasks), headline(rows, tasks, link=False),
                       [r.get("_link") for r in rows])
    grid = _html_table(grid_header(grid_rows), grid_table(grid_rows), [None] * len(grid_rows))
    defs = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                   for k, v in DEFINITIONS.items())
    images = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}"></figure>'
                     for p in plots)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Leaderboard: {html.escape(meta['recipe'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #bbb; padding: 4px 8px; text-align: right; }}
th {{ background: #eef; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Leaderboard: {html.escape(meta['recipe'])}</h1>
<p>{html.escape(meta['description'])}</p>
<p>Test split, zero-shot, lm-eval ({html.escape(meta['backend'])} backend), seeds
{html.escape(', '.join(map(str, meta['seeds'])))}. Numbers are read from the eval results in the
run store; each model links its provenance.</p>
<h2>Results</h2>
<div id="leaderboard">{main}</div>
<h2>Definitions</h2><ul>{defs}</ul>
<h2>Plots</h2>{images}
<h2>Full grid</h2>
<div id="grid">{grid}</div>
</body></html>
"""
    (folder / "index.html").write_text(page, encoding="utf-8")
