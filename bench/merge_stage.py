"""The tiny recipe's baseline merges, before and after in-memory grid scoring, in one run.

before: what the merge stage did until now: every grid point written by mergekit, loaded from
        disk, and dev-scored by a transformers model built for it;
after:  the merge stage as it is: one unit per method and seed, every point built in memory
        and scored on the one resident scorer, only the chosen point written.
Both score the same dev records with the same prompts; the chosen points must agree.

The tiny recipe's data and specialists are built (or found cached) in runs/.bench-merge, so a
second `make bench` reuses them; Hi-Merging is left out (unchanged by this work).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]


def context():
    from harness.plan import build_plan
    from harness.recipe import parse_recipe
    from harness.stages import Context
    from harness.store import Store

    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh.yaml").read_text())
    data["merges"] = [m for m in data["merges"] if m["method"] != "hi_merging"]
    recipe = parse_recipe(data)
    store = Store(PROJECT / "runs" / ".bench-merge", recipe.name)
    return Context(recipe, store, build_plan(recipe, PROJECT / "requirements"), PROJECT)


def before(ctx) -> dict[str, tuple[dict, dict]]:
    """Every grid point written, loaded and scored on its own: method -> (chosen params, dev)."""
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from harness.merge.config import mergekit_config, validate
    from harness.merge.stage import _dev_sets, model_paths
    from harness.models import resolve_base
    from harness.scoring.hf import HFScorer, load_model

    chosen = {}
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        for unit in ctx.plan["merge"]:
            base = resolve_base(ctx.store, unit.inputs["base"])
            models = model_paths(ctx, unit)
            scorer = HFScorer(base.path, batch_size=ctx.recipe.scorer.batch_size,
                              apply_chat_template=ctx.recipe.eval.apply_chat_template,
                              limit=ctx.recipe.scorer.limit,
                              system_prompt=ctx.recipe.base.system_prompt)
            best = None
            for i, params in enumerate(unit.inputs["grid"]):
                out = Path(tmp) / f"{unit.key}-{i}"
                config = mergekit_config(unit.inputs["method"], params, str(base.path),
                                         [str(p) for p in models.values()], ctx.recipe.base.dtype)
                run_merge(validate(config), str(out),
                          MergeOptions(random_seed=unit.inputs["seed"], quiet=True,
                                       copy_tokenizer=True))
                model = load_model(out, ctx.recipe.base.dtype)
                dev = {t: scorer.score(model, path, kind) for t, (path, kind) in _dev_sets(ctx).items()}
                mean = sum(dev.values()) / len(dev)
                if best is None or mean > best[0]:
                    best = (mean, params, dev)
            chosen[unit.inputs["method"]] = (best[1], best[2])
    return chosen


def after(ctx) -> dict[str, tuple[dict, dict]]:
    from harness.stages import run_stage

    shutil.rmtree(ctx.store.stage_dir("merge"), ignore_errors=True)
    run_stage(ctx, "merge")
    out = {}
    for unit in ctx.plan["merge"]:
        details = ctx.store.manifest("merge", unit.key)["details"]
        out[unit.inputs["method"]] = (details["params"], details["dev_scores"])
    return out


def main() -> None:
    from harness.stages import run_stage

    ctx = context()
    for stage in ("data", "specialists"):
        run_stage(ctx, stage)
    points = sum(len(u.inputs["grid"]) for u in ctx.plan["merge"])
    start = time.perf_counter()
    old = before(ctx)
    old_s = time.perf_counter() - start
    start = time.perf_counter()
    new = after(ctx)
    new_s = time.perf_counter() - start
    same = all(old[m][0] == new[m][0] for m in old)
    close = all(abs(old[m][1][t] - new[m][1][t]) < 1e-6 for m in old for t in old[m][1])
    print(f"merge stage, tiny recipe baselines ({len(old)} methods, {points} grid points): "
          f"write + load + score every point {old_s:.1f} s; in memory, resident scorer, only "
          f"the chosen point written {new_s:.1f} s ({old_s / new_s:.1f}x); same choices: "
          f"{same}; dev scores equal: {close}", flush=True)
    written = len(list(ctx.store.stage_dir("merge").rglob("*.safetensors")))
    print(f"models written: {points} before, {written} after", flush=True)
    record(merge_stage_before_s=round(old_s, 2), merge_stage_after_s=round(new_s, 2),
           merge_stage_speedup=round(old_s / new_s, 2), merge_stage_same_choices=same,
           merge_stage_scores_equal=close, merge_stage_points=points,
           merge_stage_models_written=written)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
