"""The plan: every unit of work a recipe implies, each with its content key.

Keys chain: a unit's key hashes its own recipe section, the keys of the units it reads, the
pinned versions of the packages that shape its output, and the hash of its stage's code
(harness/stagedefs.py). So changing one merge parameter changes exactly that merge's key and
its evaluation's key, and editing the merge code re-keys every merge.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.data import readers
from harness.errors import HarnessError
from harness.evaluation.tasks import data_key, resolve_backend, task_data, tasks_hash
from harness.models import base_reference, specialist_reference
from harness.merge_methods import SEARCH_OPTIONS
from harness.recipe import MergeSpec, Recipe
from harness.store import content_key
from harness.stagedefs import ORDER, code_hash
from harness.versions import stage_versions


def stage_code(stage: str) -> str:
    return code_hash(stage)

STAGES = ORDER


@dataclass(frozen=True)
class Unit:
    stage: str
    name: str
    key: str
    inputs: dict[str, Any] = field(compare=False, repr=False)
    versions: dict[str, str] = field(compare=False, repr=False)
    # a merge's leaderboard row (the recipe entry's name): not keyed, so renaming a variant
    # rebuilds nothing
    label: str = field(default="", compare=False, repr=False)

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.key}"


def _unit(stage: str, name: str, inputs: dict[str, Any], requirements: Path) -> Unit:
    versions = stage_versions(stage, requirements)
    # the stage's code (harness/stagedefs.py): a code change re-keys what that code writes
    keyed = {"stage": stage, "code": stage_code(stage), "inputs": inputs, "versions": versions}
    return Unit(stage, name, content_key(keyed), inputs, versions)


def _local_files(name: str, path: Path) -> str:
    """A local release copy's content hash: an edited file changes the dataset's key."""
    if not path.exists():
        raise HarnessError(f"datasets.{name}.path: {path} does not exist; fix the path (relative "
                           "paths are relative to the project folder)")
    return readers.local_fingerprint(path)


def grid_points(spec: MergeSpec) -> list[dict[str, Any]]:
    """Cartesian product of the grid axes, each point completed with the fixed params."""
    axes = sorted(spec.grid)
    points = []
    for values in itertools.product(*(spec.grid[a] for a in axes)):
        points.append({**spec.params, **dict(zip(axes, values))})
    return points or [dict(spec.params)]


def _point_label(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(point.items())) or "defaults"


def build_plan(recipe: Recipe, requirements: Path) -> dict[str, list[Unit]]:
    plan: dict[str, list[Unit]] = {s: [] for s in STAGES}

    data_keys = {}
    for name, ds in sorted(recipe.datasets.items()):
        inputs: dict[str, Any] = {"name": name, "dataset": ds.model_dump()}
        if ds.path and readers.is_local(ds.path, requirements.parent):
            inputs["files"] = _local_files(name, readers.local_path(ds.path, requirements.parent))
        unit = _unit("data", f"dataset {name}", inputs, requirements)
        plan["data"].append(unit)
        data_keys[name] = unit.key

    base = base_reference(recipe.base)
    if recipe.base.kind == "tiny":
        # The tiny base is pre-trained on a generated corpus about the same synthetic world as
        # the specialists' data, but not on their splits: changing a specialist's data
        # retrains that specialist only.
        tiny = recipe.base.tiny
        corpus = _unit("data", "pre-training corpus (synthetic)",
                       {"corpus": {"statements": tiny.corpus_statements,
                                   "seed": tiny.corpus_seed,
                                   # absent when 0: a random-facts corpus keeps its key
                                   **({"known": tiny.corpus_known} if tiny.corpus_known else {}),
                                   **({"instruct": {"items": tiny.instruct_items,
                                                    "share": tiny.instruct_share}}
                                      if tiny.instruct_steps else {})}},
                       requirements)
        plan["data"].append(corpus)
        unit = _unit("specialists", "base (tiny, pre-trained here)",
                     {"base": recipe.base.model_dump(), "corpus": corpus.key}, requirements)
        plan["specialists"].append(unit)
        base = {"kind": "tiny", "key": unit.key}

    # (label, stage, key, how to load it when it is not in the run store) of every model to
    # evaluate
    models: list[tuple[str, str, str, dict[str, Any] | None]] = []
    if "key" in base:
        models.append(("base", "specialists", base["key"], None))
    else:
        models.append(("base", "external", content_key(base), base))

    # Existing fine-tunes (`model:`): resolved like the base, never trained; one model for
    # every seed, keyed by what it resolves to (a hub commit, a folder's file hash).
    existing: dict[str, tuple[str, dict[str, Any]]] = {}
    for sp in recipe.specialists:
        if sp.existing:
            ref = specialist_reference(sp, recipe.base.dtype)
            existing[sp.name] = (content_key({"existing": ref}), ref)
            models.append((f"specialist {sp.name}", "external", existing[sp.name][0],
                           {**ref, "specialist": sp.name}))

    reconciled = {sp.name: sp.tokenizer_source for sp in recipe.specialists if sp.tokenizer_source}
    for seed in recipe.seeds:
        specialist_keys = []
        for sp in recipe.specialists:
            if sp.existing:
                specialist_keys.append(existing[sp.name][0])
                continue
            dkey = data_keys[sp.dataset]
            unit = _unit("specialists", f"specialist {sp.name} seed={seed}",
                         {"specialist": sp.model_dump(exclude={"model", "revision",
                                                                "tokenizer_source"}),
                          "data": dkey, "base": base,
                          "template": recipe.base.template, "seed": seed}, requirements)
            plan["specialists"].append(unit)
            specialist_keys.append(unit.key)
            models.append((f"specialist {sp.name} seed={seed}", "specialists", unit.key, None))
        if recipe.multitask.enabled:
            dkeys = tuple(data_keys[sp.dataset] for sp in recipe.specialists)
            unit = _unit("specialists", f"multitask seed={seed}",
                         {"multitask": recipe.multitask.model_dump(), "data": dkeys,
                          "base": base, "template": recipe.base.template, "seed": seed},
                         requirements)
            plan["specialists"].append(unit)
            models.append((f"multitask seed={seed}", "specialists", unit.key, None))

        # Dev scores choose every merge (a baseline's grid point, Hi-Merging's candidates), so
        # the scorer and the dev data shape the output. `auto` is resolved here: a GPU and a
        # CPU host score with different engines.
        scoring = {"scorer": {**recipe.scorer.model_dump(),
                              "backend": resolve_backend(recipe.scorer.backend)},
                   "dev_data": sorted(data_keys[sp.dataset] for sp in recipe.specialists)}
        for spec in recipe.merges:
            common = {"method": spec.method, "base": base, "models": specialist_keys,
                      "seed": seed, **scoring,
                      # where existing fine-tunes load from (absent when all are trained here)
                      **({"existing": {k: r for k, r in existing.values()}} if existing else {}),
                      # fine-tunes whose vocabulary is mapped onto the base's (merge/vocab.py)
                      **({"tokenizer_source": reconciled} if reconciled else {})}
            if spec.is_search:  # one search; every option keyed, defaults included, so a
                # changed default re-keys the searches that use it (harness/merge_methods.py)
                options = SEARCH_OPTIONS[spec.method].model_validate(spec.options)
                point, label = {"options": options.model_dump()}, "search"
            else:  # the whole grid in one unit: scored in memory, only the best point written
                points = grid_points(spec)
                point, label = {"grid": points}, f"grid of {len(points)}"
            unit = replace(_unit("merge", f"{spec.label} [{label}] seed={seed}",
                                 {**common, **point}, requirements), label=spec.label)
            same = next((u for u in plan["merge"] if u.key == unit.key), None)
            if same is not None:
                raise HarnessError(f"merges: {spec.label} and {same.label} are the same merge "
                                   "(method, grid/options); drop one")
            plan["merge"].append(unit)
            models.append((unit.name, "merge", unit.key, None))

    tasks_dir = requirements.parent / "tasks"
    served = {data_key(d.source, d.language, d.task_type): data_keys[n]
              for n, d in sorted(recipe.datasets.items())}
    needed = sorted({d for t in recipe.eval.tasks for d in task_data(tasks_dir, t)})
    missing = [d for d in needed if d not in served]
    if missing:
        raise HarnessError(f"eval.tasks: no dataset in the recipe provides {', '.join(missing)}; "
                           "add one under datasets (source/language/task_type) or drop the task")
    eval_inputs = {"eval": recipe.eval.model_dump(), "tasks_hash": tasks_hash(tasks_dir),
                   "backend": resolve_backend(recipe.eval.backend),
                   "data": {d: served[d] for d in needed}}
    for label, stage, key, ref in models:
        unit = _unit("eval", f"eval {label}",
                     {"model": {"stage": stage, "key": key, "ref": ref},
                      **eval_inputs}, requirements)
        plan["eval"].append(unit)

    eval_keys = tuple(u.key for u in plan["eval"])
    plan["leaderboard"].append(_unit("leaderboard", f"leaderboard {recipe.name}",
                                     {"evals": eval_keys, "recipe": recipe.name},
                                     requirements))
    return plan
