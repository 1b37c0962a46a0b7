"""The leaderboard stage: tables and plots from the eval results in the run store, published
to leaderboard/<recipe>/.

A leaderboard whose evals are all present is stored like any artifact (keyed by those evals)
and copied to the published folder. With evals missing it is still written, missing rows
marked, but not stored: the next run, with the evals done, builds it again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.leaderboard import collect as C
from harness.leaderboard import ablations, paired, plots, render, table
from harness.plan import Unit
from harness.portable import Portable
from harness.stages import Context

log = logging.getLogger("harness")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def reproduce_header(published: str, seed) -> str:
    return ("# Reproduce this model from the checkout root (its run store in ./runs, or\n"
            "# HARNESS_RUNS_DIR; hub models resolve through the hub cache):\n"
            f"#   harness reproduce {published} OUT"
            + (f" --random-seed {seed}" if seed is not None else "") + "\n")


def write_provenance(ctx: Context, folder: Path, measured: list[C.Measured]) -> dict[str, str]:
    """models/<model>.json per table row (every seed and grid point of it), with the YAMLs
    that reproduce each model beside it, every path in them made portable (harness/
    portable.py). Returns row -> link."""
    portable = Portable(ctx.store.root, ctx.project)
    links: dict[str, str] = {}
    by_row: dict[str, list[C.Measured]] = {}
    for m in measured:
        by_row.setdefault(m.row, []).append(m)
    for row, ms in by_row.items():
        slug = _slug(row)
        records = []
        for m in ms:
            record = C.provenance(ctx, m)
            tag = ("" if m.seed is None else f"seed{m.seed}") + (
                f"_{_slug(m.point)}" if m.point and m.point != "search" else "")
            record["files"] = {}
            for name, src in C.recipe_files(ctx, m).items():
                dst = folder / "models" / slug / (f"{tag}_{name}" if tag else name)
                dst.parent.mkdir(parents=True, exist_ok=True)
                text = portable.text(src.read_text(encoding="utf-8"))
                if name == "mergekit.yaml":
                    seed = (record.get("model_manifest") or {}).get("details", {}).get("random_seed")
                    published = f"leaderboard/{ctx.recipe.name}/{dst.relative_to(folder)}"
                    text = reproduce_header(published, seed) + text
                dst.write_text(text, encoding="utf-8")
                record["files"][name] = str(dst.relative_to(folder))
            records.append(record)
        path = folder / "models" / f"{slug}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(portable.text(json.dumps(records, indent=2, ensure_ascii=False,
                                                 default=str)), encoding="utf-8")
        links[row] = str(path.relative_to(folder))
    return links


def copy_heatmaps(ctx: Context, folder: Path, measured: list[C.Measured]) -> list[str]:
    """Hi-Merging's contribution heatmaps (layers x models, before and after resolution), as
    the merge stage drew them."""
    out = []
    for m in measured:
        if m.options is not None and ctx.store.has("merge", m.model_key):
            src = ctx.store.path("merge", m.model_key) / "heatmap.png"
            if src.is_file():
                name = f"plots/{_slug(m.row)}_contributions_seed{m.seed}.png"
                shutil.copyfile(src, folder / name)
                out.append(name)
    return out


def write_leaderboard(ctx: Context, folder: Path, unit: Unit) -> dict[str, Any]:
    tasks = C.leaf_tasks(ctx)
    measured = C.collect(ctx)
    rows = table.main_rows(measured, tasks) + table.reference_rows(
        ctx.recipe.leaderboard.reference, tasks)
    table.derive(rows, tasks)
    grid_rows = table.grid_rows(measured)
    links = write_provenance(ctx, folder, measured)
    for r in rows:
        r["_link"] = links.get(r["model"])
    table.add_best_specialist(rows)
    (folder / "plots").mkdir(exist_ok=True)
    made = []
    plots.bars(folder / "plots" / "tasks.png", rows, tasks)
    made.append("plots/tasks.png")
    if plots.grid(folder / "plots" / "grid.png", grid_rows):
        made.append("plots/grid.png")
    made += copy_heatmaps(ctx, folder, measured)
    meta = {"recipe": ctx.recipe.name, "description": ctx.recipe.description,
            "complete": not any(m.missing for m in measured),
            "seeds": list(ctx.recipe.seeds), "leaderboard_key": unit.key,
            "backend": ctx.plan["eval"][0].inputs["backend"] if ctx.plan["eval"] else ""}
    comparisons = paired.compare_rows(ctx, rows, measured, tasks)
    render.write_paired(folder, comparisons)
    has_ablations = ablations.write(folder, ctx, rows, measured, tasks)
    render.write_data(folder, rows, grid_rows, tasks, meta)
    render.readme(folder, rows, grid_rows, tasks, meta, made, comparisons, has_ablations)
    render.index_html(folder, rows, grid_rows, tasks, meta, made)
    missing = [m for m in measured if m.missing]
    return {"rows": len(rows), "grid_points": len(grid_rows), "missing_evals": len(missing),
            "missing": [m.eval_unit.name for m in missing]}


def published(ctx: Context) -> Path:
    """leaderboard/<recipe>/ (HARNESS_LEADERBOARD_DIR moves it, e.g. for a scratch run)."""
    root = os.environ.get("HARNESS_LEADERBOARD_DIR") or ctx.project / "leaderboard"
    return Path(root) / ctx.recipe.name


def _stamp(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "leaderboard.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def is_complete(folder: Path) -> bool:
    return bool(_stamp(folder).get("complete", False))


def covers_published(ctx: Context) -> bool:
    """False when leaderboard/<recipe>/ holds seeds this run lacks: a one-seed `make` on a
    fresh clone never replaces the published multi-seed table."""
    seeds = set(_stamp(published(ctx)).get("seeds") or [])
    return seeds <= set(ctx.recipe.seeds)


def publish(ctx: Context, source: Path, target: Path | None = None) -> None:
    """Replace leaderboard/<recipe>/ (or `target`) with `source`'s files (the manifest stays
    in the store)."""
    target = target or published(ctx)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=target.parent))
    try:
        shutil.copytree(source, staging / "out", ignore=shutil.ignore_patterns("manifest.json"))
        if target.exists():
            shutil.rmtree(target)
        (staging / "out").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("leaderboard: published %s", target)


def _kept(ctx: Context, source: Path) -> None:
    log.warning("leaderboard: %s is the published table of seeds %s; this run has seeds %s, "
                "so it is left as it is. This run's leaderboard: %s (rebuild the published one "
                "with `make recipe=%s SEEDS=%s`)", published(ctx),
                ",".join(map(str, _stamp(published(ctx)).get("seeds", []))),
                ",".join(map(str, ctx.recipe.seeds)), source, ctx.recipe.name,
                ",".join(map(str, _stamp(published(ctx)).get("seeds", []))))


def build(ctx: Context, units: list[Unit]) -> None:
    unit = units[0]
    missing = [u for u in ctx.plan["eval"] if not ctx.store.has("eval", u.key)]
    if missing:
        log.warning("leaderboard: %d of %d evals missing; their rows are marked missing and this "
                    "leaderboard is not cached", len(missing), len(ctx.plan["eval"]))
        if is_complete(published(ctx)) or not covers_published(ctx):
            # never replace a complete published table with a partial one
            target = ctx.store.stage_dir("leaderboard") / "partial"
            log.warning("leaderboard: %s holds a complete leaderboard; the partial one goes to %s",
                        published(ctx), target)
        else:
            target = None
        with tempfile.TemporaryDirectory() as tmp:
            write_leaderboard(ctx, Path(tmp), unit)
            publish(ctx, Path(tmp), target)
        return
    details: dict[str, Any] = {}
    with ctx.store.build("leaderboard", unit.key, unit.inputs, unit.versions, details) as tmp:
        details.update(write_leaderboard(ctx, tmp, unit))
    # published by `after`, which runs next (and also when this stage was cached)


def after(ctx: Context) -> None:
    """Publish the stored leaderboard when leaderboard/<recipe>/ is not it, unless that
    folder holds seeds this run lacks."""
    unit = ctx.plan["leaderboard"][0]
    if ctx.store.has("leaderboard", unit.key):
        stamp = _stamp(published(ctx))
        if stamp.get("leaderboard_key") != unit.key or not stamp.get("complete"):
            if covers_published(ctx):
                publish(ctx, ctx.store.path("leaderboard", unit.key))
            else:
                _kept(ctx, ctx.store.path("leaderboard", unit.key))
