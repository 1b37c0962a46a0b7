"""The merge stage: every method's merged model, produced by mergekit.

A baseline unit is one method and seed with its whole grid: every grid point is built in
memory (mergekit's own merge code, harness/merge/memory.py) and dev-scored by the resident
candidate scorer that `scorer.backend` names (vLLM with weights swapped in place, or
transformers), on the GPU when there is one. Only the point with the best mean normalised dev
gain (harness/merge/gains.py: every task on one scale, 0 = base, 1 = its specialist) is
written, through `mergekit-yaml`'s code, and evaluated on test; the manifest keeps every point's
dev scores and gains (the leaderboard's grid.csv). A Hi-Merging search is one unit too, scored by
the same resident scorer. The test split is never looked at here.

Each written model ships `mergekit.yaml`, the exact config that reproduces it with
`mergekit-yaml mergekit.yaml OUT --random-seed SEED` (absolute paths; the manifest maps each
path to its content key).
"""
from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from harness.cost import metered
from harness.executor import distributed, run_units
from harness.merge import preflight
from harness.merge.config import mergekit_config, validate
from harness.plan import Unit, _point_label
from harness.stages import Context
from harness.models import resolve_base

log = logging.getLogger("harness")


def _dev_sets(ctx: Context) -> dict[str, tuple[Path, str]]:
    """Each specialist's dev split: the tasks the merge must keep."""
    out = {}
    for sp in ctx.recipe.specialists:
        key = next(u.key for u in ctx.plan["data"] if u.inputs.get("name") == sp.dataset)
        out[sp.dataset] = (ctx.store.path("data", key) / "dev.jsonl", sp.task_type)
    return out


def existing_names(ctx: Context) -> frozenset[str]:
    """The specialists named by `model:` (not trained here): their tokenizer and chat template
    are checked against the base's."""
    return frozenset(sp.name for sp in ctx.recipe.specialists if sp.existing)


def reconciled(unit: Unit) -> frozenset[str]:
    """The fine-tunes whose vocabulary is mapped onto the base's (`tokenizer_source: base`)."""
    return frozenset(unit.inputs.get("tokenizer_source", {}))


def named(ctx: Context, unit: Unit, paths: dict[str, Path]) -> dict[str, Path]:
    """Key -> folder as specialist name -> folder (what a pre-flight error names)."""
    return {sp.name: paths[k] for sp, k in zip(ctx.recipe.specialists, unit.inputs["models"])}


def model_paths(ctx: Context, unit: Unit) -> dict[str, Path]:
    """The specialists a merge unit combines, by content key -> folder: a fine-tune trained
    here from the run store, an existing one (hub id, local folder) through the resolver."""
    existing = unit.inputs.get("existing", {})
    names = dict(zip(unit.inputs["models"], (sp.name for sp in ctx.recipe.specialists)))
    return {key: (resolve_base(ctx.store, existing[key], what=f"specialist {names[key]}").path
                  if key in existing else ctx.store.path("specialists", key) / "model")
            for key in unit.inputs["models"]}


def scorer_setup(ctx: Context, base_path: Path, models: dict[str, Path],
                 reconcile_vocabulary: bool = False):
    """What the resident candidate scorer needs: one setup for baselines and Hi-Merging."""
    from harness.evaluation.tasks import resolve_backend
    from harness.scoring.pool import ScorerSetup

    spec, recipe = ctx.recipe.scorer, ctx.recipe
    return ScorerSetup(
        resolve_backend(spec.backend), str(base_path), {n: str(p) for n, p in models.items()},
        {n: (str(path), kind) for n, (path, kind) in _dev_sets(ctx).items()},
        spec.limit, recipe.base.dtype, recipe.eval.apply_chat_template, spec.batch_size,
        recipe.eval.max_model_len, recipe.eval.tensor_parallel_size, recipe.base.system_prompt,
        spec.mode, recipe.eval.max_gen_toks or 256, reconcile_vocabulary)


def dev_items(setup) -> dict[str, int]:
    """Dev records scored per task for one candidate (the scorer's limit applied)."""
    from harness.data.records import read_jsonl

    counts = {t: len(read_jsonl(Path(path))) for t, (path, _) in setup.dev.items()}
    return {t: min(n, setup.limit) if setup.limit else n for t, n in counts.items()}


def _scored_since(scorer, before: dict[str, Any]) -> dict[str, Any]:
    """The resident scorer's counters for this unit only (it outlives the unit)."""
    now = scorer.stats()
    return {k: (round(v - before.get(k, 0), 3) if isinstance(v, (int, float)) else v)
            for k, v in now.items()}


def _mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


_REFERENCES: dict[tuple, Any] = {}  # per process: every baseline unit of a group shares one


def dev_reference(ctx: Context, unit: Unit, scorer, engine, setup):
    """The base's and each specialist's dev score on every merge task (gains.Reference),
    scored once per process on the resident scorer and shared by the group's units."""
    from harness.merge import gains

    key = (str(setup.base), tuple(unit.inputs["models"]), setup.limit)
    if key not in _REFERENCES:
        datasets = [sp.dataset for sp in ctx.recipe.specialists]
        own = dict(zip(datasets, unit.inputs["models"]))
        reference = gains.measure(scorer.score, engine.base,
                                  {t: engine.models[own[t]] for t in setup.dev})
        for task in reference.weak():
            log.warning("merge: the %s specialist does not beat the base on dev (%.4f vs "
                        "%.4f): %s", task, reference.specialist[task], reference.base[task],
                        "no gain to keep, it is left out of the mean gain"
                        if task in reference.flat()
                        else "its gains are measured against |specialist - base|")
        _REFERENCES[key] = reference
    return _REFERENCES[key]


def build_grid(ctx: Context, unit: Unit) -> None:
    """One baseline method and seed: every grid point built in memory and dev-scored on the
    resident scorer; the best point written by mergekit and checked equal to its in-memory
    tensors."""
    import torch
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from harness.merge import gains
    from harness.merge.memory import load_folder
    from harness.scoring.pool import resident_candidates, resident_scorer

    method, seed = unit.inputs["method"], unit.inputs["seed"]
    base = resolve_base(ctx.store, unit.inputs["base"])
    models = model_paths(ctx, unit)
    mapped = bool(reconciled(unit))
    setup = scorer_setup(ctx, base.path, models, mapped)
    details: dict[str, Any] = {
        "method": method, "random_seed": seed, "base": base.describe(),
        "reproduce": f"mergekit-yaml mergekit.yaml OUT --random-seed {seed}",
        "model_keys": {str(p): k for k, p in models.items()},
        "preflight": preflight.check_compatible(base, named(ctx, unit, models),
                                                existing_names(ctx), reconciled(unit))}
    scorer = resident_scorer(setup)
    engine = resident_candidates(setup).engine
    reference = dev_reference(ctx, unit, scorer, engine, setup)  # not counted as grid work
    before = scorer.stats()
    grid = []
    for params in tqdm(unit.inputs["grid"], desc=f"{method} seed={seed} grid", unit="point",
                       leave=False):
        tensors = engine.merge(method, params, seed=seed)
        scores = {task: scorer.score(tensors, task) for task in setup.dev}
        grid.append({"params": params, "point": _point_label(params), "dev_scores": scores,
                     "dev_mean": _mean(scores), "dev_gain": reference.mean_gain(scores)})
        del tensors
    best = gains.best_point(grid)
    chosen = grid[best]["params"]
    for i, point in enumerate(grid):
        point["selected"] = i == best
    details.update(params=chosen, dev_scores=grid[best]["dev_scores"], grid=grid,
                   dev_reference=reference.describe(), dev_gain=grid[best]["dev_gain"],
                   scorer=_scored_since(scorer, before), points=len(grid),
                   items=sum(dev_items(setup).values()) * len(grid))
    config = mergekit_config(method, chosen, str(base.path), [str(p) for p in models.values()],
                             ctx.recipe.base.dtype, mapped)
    dtype = getattr(torch, ctx.recipe.base.dtype)
    with ctx.store.build("merge", unit.key, unit.inputs, unit.versions, details) as tmp:
        (tmp / "mergekit.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        run_merge(validate(config), str(tmp / "model"),
                  MergeOptions(random_seed=seed, quiet=True, copy_tokenizer=True,
                               trust_remote_code=ctx.recipe.base.trust_remote_code))
        memory = engine.merge(method, chosen, seed=seed)
        written = load_folder(tmp / "model", dtype)
        details["mergekit_equals_in_memory"] = written.keys() == memory.keys() and all(
            torch.equal(written[n], memory[n]) for n in memory)
    log.info("merge: %s [%s] chose %s of %d point(s) on dev %s", unit.name, unit.key,
             grid[best]["point"], len(grid), details["dev_scores"])


def build_hi_merging(ctx: Context, unit: Unit) -> None:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from harness.merge import report
    from harness.merge.hi_merging import HiMerging, Options, ScoreCache, mergekit_yaml
    from harness.merge.memory import load_folder
    from harness.merge.vocab import mergekit_tokenizer
    from harness.scoring.pool import ScorerPool, resident_candidates, resident_scorer

    import torch

    base = resolve_base(ctx.store, unit.inputs["base"])
    names = {sp.name: sp for sp in ctx.recipe.specialists}
    keys = dict(zip(names, unit.inputs["models"]))
    paths = model_paths(ctx, unit)
    models = {n: paths[k] for n, k in keys.items()}
    checked = preflight.check_compatible(base, models, existing_names(ctx), reconciled(unit))
    dtype = getattr(torch, ctx.recipe.base.dtype)
    setup = scorer_setup(ctx, base.path, models, bool(reconciled(unit)))
    batch = None
    if distributed(ctx.recipe.executor):
        # candidates go to `workers` scoring processes (pool or Ray actors), batch by batch
        scorer = batch = ScorerPool(ctx.recipe.executor, setup)
        score = None
        candidates = resident_candidates(setup)
        before: dict[str, Any] = {}
    else:  # the stage's one resident scorer, in this process
        scorer = resident_scorer(setup)
        candidates = resident_candidates(setup)
        score = scorer.score
        before = scorer.stats()
    engine = candidates.engine

    # Scores outlive a killed run here, so a re-run resumes the search where it stopped.
    cache_dir = ctx.store.stage_dir("merge") / f".cache-{unit.key}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    options = Options.model_validate(unit.inputs["options"])
    method = HiMerging(candidates, score, {n: sp.dataset for n, sp in names.items()},
                       options, ScoreCache(cache_dir / "scores.jsonl"), score_batch=batch,
                       items=dev_items(setup))
    try:
        result = method.run()
    finally:
        if batch is not None:
            batch.close()
    config = mergekit_yaml(result["final"], engine.layers, str(base.path),
                           {n: str(p) for n, p in models.items()}, ctx.recipe.base.dtype,
                           mergekit_tokenizer(base.path) if reconciled(unit) else None)
    details: dict[str, Any] = {
        "method": unit.inputs["method"], "options": options.model_dump(), "random_seed": unit.inputs["seed"],
        "reproduce": "mergekit-yaml mergekit.yaml OUT", "base": base.describe(),
        "preflight": checked, "model_keys": {str(p): keys[n] for n, p in models.items()},
        "model_wise": result["model_wise"], "dev_scores": result["dev_final"],
        "dev_reference": result["dev_reference"], "dev_gain": result["dev_gain"],
        "candidates_scored": method.cache.misses, "cache_hits": method.cache.hits,
        "items": method.cache.misses * round(_mean(dev_items(setup))),
        "scorer": _scored_since(scorer, before)}
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


# The search methods' builders, by the registry's name (harness/merge_methods.py SEARCH_OPTIONS);
# every other method is a grid.
SEARCHES = {"hi_merging": build_hi_merging}


def is_search(unit: Unit) -> bool:
    return "options" in unit.inputs


def _check_built(ctx: Context, unit: Unit) -> None:
    """Every specialist a merge reads is complete in the run store (manifest and model)."""
    from harness.errors import HarnessError

    for key in unit.inputs["models"]:
        if key in unit.inputs.get("existing", {}):
            continue  # resolved (and checked for safetensors) by model_paths
        folder = ctx.store.path("specialists", key) / "model"
        if not ctx.store.has("specialists", key) or not (folder / "config.json").is_file():
            raise HarnessError(f"merge pre-flight: {folder}: the specialist is missing or "
                               "incomplete (no valid manifest.json or config.json); run `harness "
                               f"specialists --recipe {ctx.recipe.name}` to build it again")


def build_one(ctx: Context, unit: Unit) -> None:
    """One merge unit (a baseline's grid or a whole Hi-Merging search): the executor's unit."""
    from harness.executor import kind
    from harness.scoring.pool import close_residents

    if is_search(unit):
        return SEARCHES[unit.inputs["method"]](ctx, unit)
    try:
        build_grid(ctx, unit)
    finally:
        if kind(ctx.recipe.executor) == "ray":  # a Ray worker may idle on: hold no engine
            close_residents()


def build(ctx: Context, units: list[Unit]) -> None:
    from harness.scoring.pool import close_residents

    baselines = [u for u in units if not is_search(u)]
    by_models: dict[tuple, list[Unit]] = defaultdict(list)
    for unit in units:  # baselines and Hi-Merging searches: each writes one model
        by_models[tuple(unit.inputs["models"])].append(unit)
    for group in by_models.values():  # every check before any tensor work
        _check_built(ctx, group[0])
        base = resolve_base(ctx.store, group[0].inputs["base"])
        models = model_paths(ctx, group[0])
        preflight.check_compatible(base, named(ctx, group[0], models), existing_names(ctx),
                                   reconciled(group[0]))
        preflight.check_disk(ctx.store.stage_dir("merge"), next(iter(models.values())), len(group))
    try:
        if distributed(ctx.recipe.executor):
            # a Hi-Merging search runs here and spreads its candidate batches over the
            # executor's processes (a search holding a GPU while waiting on them could starve
            # them)
            run_units(ctx, "merge", baselines, build_one)
            for unit in units:
                if unit not in baselines:
                    with metered():
                        SEARCHES[unit.inputs["method"]](ctx, unit)
        else:
            run_units(ctx, "merge", units, build_one)
    finally:
        close_residents()  # the eval stage starts its own engine on the same GPU
