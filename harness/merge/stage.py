"""The merge stage: every baseline method and grid point, produced by mergekit.

Each merged model ships `mergekit.yaml`, the exact config that reproduces it with
`mergekit-yaml mergekit.yaml OUT --random-seed SEED` (absolute paths; the manifest maps each
path to its content key), and its dev-split scores, from which the leaderboard publishes each
method's best grid point. The test split is never looked at here.
"""
from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from harness.executor import distributed, run_units
from harness.merge_methods import HI_MERGING_OPTIONS
from harness.merge import preflight
from harness.merge.config import mergekit_config, validate
from harness.plan import Unit
from harness.stages import Context, register
from harness.models import resolve_base

log = logging.getLogger("harness")


def _dev_sets(ctx: Context) -> dict[str, tuple[Path, str]]:
    """Each specialist's dev split: the tasks the merge must keep."""
    out = {}
    for sp in ctx.recipe.specialists:
        key = next(u.key for u in ctx.plan["data"] if u.inputs.get("name") == sp.dataset)
        out[sp.dataset] = (ctx.store.path("data", key) / "dev.jsonl", sp.task_type)
    return out


def model_paths(ctx: Context, unit: Unit) -> dict[str, Path]:
    """The specialists a merge unit combines, by content key -> published folder."""
    return {key: ctx.store.path("specialists", key) / "model" for key in unit.inputs["models"]}


def build_baseline(ctx: Context, unit: Unit, scorer) -> None:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from harness.scoring.hf import load_model

    base = resolve_base(ctx.store, unit.inputs["base"])
    models = model_paths(ctx, unit)
    config = mergekit_config(unit.inputs["method"], unit.inputs["params"], str(base.path),
                             [str(p) for p in models.values()], ctx.recipe.base.dtype)
    seed = unit.inputs["seed"]
    details: dict[str, Any] = {
        "method": unit.inputs["method"], "params": unit.inputs["params"], "random_seed": seed,
        "reproduce": f"mergekit-yaml mergekit.yaml OUT --random-seed {seed}",
        "model_keys": {str(p): k for k, p in models.items()}, "base": base.describe(),
        "preflight": preflight.check_compatible(base, models)}
    with ctx.store.build("merge", unit.key, unit.inputs, unit.versions, details) as tmp:
        (tmp / "mergekit.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        run_merge(validate(config), str(tmp / "model"),
                  MergeOptions(random_seed=seed, quiet=True, copy_tokenizer=True,
                               trust_remote_code=ctx.recipe.base.trust_remote_code))
        model = load_model(tmp / "model", ctx.recipe.base.dtype)
        details["dev_scores"] = {name: scorer.score(model, path, kind)
                                 for name, (path, kind) in _dev_sets(ctx).items()}
    log.info("merge: %s [%s] dev %s", unit.name, unit.key, details["dev_scores"])


def build_hi_merging(ctx: Context, unit: Unit) -> None:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from harness.merge import report
    from harness.merge.hi_merging import Candidates, HiMerging, Options, ScoreCache, mergekit_yaml
    from harness.merge.memory import InMemoryMerger, load_folder
    from harness.scoring.pool import ScorerPool, ScorerSetup

    import torch

    from harness.evaluation.tasks import resolve_backend

    scorer_spec = ctx.recipe.scorer
    base = resolve_base(ctx.store, unit.inputs["base"])
    names = {sp.name: sp for sp in ctx.recipe.specialists}
    keys = dict(zip(names, unit.inputs["models"]))
    models = {n: ctx.store.path("specialists", k) / "model" for n, k in keys.items()}
    checked = preflight.check_compatible(base, models)
    dtype = getattr(torch, ctx.recipe.base.dtype)
    engine = InMemoryMerger(base.path, models, dtype)
    setup = ScorerSetup(
        resolve_backend(scorer_spec.backend), str(base.path), {n: str(p) for n, p in models.items()},
        {n: (str(path), kind) for n, (path, kind) in _dev_sets(ctx).items()},
        scorer_spec.limit, ctx.recipe.base.dtype, ctx.recipe.eval.apply_chat_template,
        scorer_spec.batch_size, ctx.recipe.eval.max_model_len,
        ctx.recipe.eval.tensor_parallel_size, ctx.recipe.base.system_prompt)
    batch = None
    if distributed(ctx.recipe.executor):
        # candidates go to `workers` scoring processes (pool or Ray actors), batch by batch
        scorer = batch = ScorerPool(ctx.recipe.executor, setup)
        score = None
    else:  # one resident scorer in this process
        scorer = setup.scorer()
        score = scorer.score

    # Scores outlive a killed run here, so a re-run resumes the search where it stopped.
    cache_dir = ctx.store.stage_dir("merge") / f".cache-{unit.key}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    options = Options(**{**HI_MERGING_OPTIONS, **unit.inputs["options"]})
    method = HiMerging(Candidates(engine), score, {n: sp.dataset for n, sp in names.items()},
                       options, ScoreCache(cache_dir / "scores.jsonl"), score_batch=batch)
    try:
        result = method.run()
    finally:
        scorer.close()
    config = mergekit_yaml(result["final"], engine.layers, str(base.path),
                           {n: str(p) for n, p in models.items()}, ctx.recipe.base.dtype)
    details: dict[str, Any] = {
        "method": "hi_merging", "options": options.__dict__, "random_seed": unit.inputs["seed"],
        "reproduce": "mergekit-yaml mergekit.yaml OUT", "base": base.describe(),
        "preflight": checked, "model_keys": {str(p): keys[n] for n, p in models.items()},
        "model_wise": result["model_wise"], "dev_scores": result["dev_final"],
        "candidates_scored": method.cache.misses, "cache_hits": method.cache.hits,
        "scorer": scorer.stats()}
    with ctx.store.build("merge", unit.key, unit.inputs, unit.versions, details) as tmp:
        (tmp / "mergekit.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        run_merge(validate(config), str(tmp / "model"),
                  MergeOptions(random_seed=unit.inputs["seed"], quiet=True, copy_tokenizer=True))
        memory = method.candidates.build(result["final"])  # groups already built are reused
        written = load_folder(tmp / "model", dtype)
        details["mergekit_equals_in_memory"] = written.keys() == memory.keys() and all(
            torch.equal(written[n], memory[n]) for n in memory)
        report.write(tmp, result, method.models)
    shutil.rmtree(cache_dir, ignore_errors=True)
    log.info("merge: %s [%s] dev %s", unit.name, unit.key, details["dev_scores"])


def build_one(ctx: Context, unit: Unit) -> None:
    """One merge unit (a baseline grid point or a whole Hi-Merging search): the executor's
    unit of work."""
    from harness.scoring.hf import HFScorer

    if unit.inputs["method"] == "hi_merging":
        return build_hi_merging(ctx, unit)
    # a merged model carries the base's tokenizer (tokenizer_source: base)
    base = resolve_base(ctx.store, unit.inputs["base"])
    scorer = HFScorer(base.path, batch_size=ctx.recipe.scorer.batch_size,
                      apply_chat_template=ctx.recipe.eval.apply_chat_template,
                      limit=ctx.recipe.scorer.limit, system_prompt=ctx.recipe.base.system_prompt)
    build_baseline(ctx, unit, scorer)


@register("merge")
def build(ctx: Context, units: list[Unit]) -> None:
    baselines = [u for u in units if u.inputs["method"] != "hi_merging"]
    by_models: dict[tuple, list[Unit]] = defaultdict(list)
    for unit in units:  # baselines and Hi-Merging searches: each writes one model
        by_models[tuple(unit.inputs["models"])].append(unit)
    for group in by_models.values():  # every check before any tensor work
        base = resolve_base(ctx.store, group[0].inputs["base"])
        models = model_paths(ctx, group[0])
        preflight.check_compatible(base, models)
        preflight.check_disk(ctx.store.stage_dir("merge"), next(iter(models.values())), len(group))
    if distributed(ctx.recipe.executor):
        # a Hi-Merging search runs here and spreads its candidate batches over the executor's
        # processes (a search holding a GPU while waiting on them could starve them)
        run_units(ctx, "merge", baselines, build_one)
        for unit in units:
            if unit not in baselines:
                build_hi_merging(ctx, unit)
    else:
        run_units(ctx, "merge", units, build_one)


def best_grid_points(ctx: Context) -> dict[tuple[str, int], Unit]:
    """Per (method, seed), the grid point with the best mean dev score: the one published."""
    best: dict[tuple[str, int], tuple[float, Unit]] = {}
    for unit in ctx.plan["merge"]:
        if unit.inputs["method"] == "hi_merging" or not ctx.store.has("merge", unit.key):
            continue
        scores = ctx.store.manifest("merge", unit.key)["details"]["dev_scores"]
        mean = sum(scores.values()) / len(scores)
        slot = (unit.inputs["method"], unit.inputs["seed"])
        if slot not in best or mean > best[slot][0]:
            best[slot] = (mean, unit)
    return {slot: unit for slot, (_, unit) in best.items()}
