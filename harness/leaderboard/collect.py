"""What the leaderboard reads: one Measured per eval unit of the plan, its numbers taken from
that eval's results.json in the run store and nothing else.

Which grid point of a baseline is published was decided on DEV by the merge stage, which wrote
and evaluated only that point; its manifest keeps every point's dev scores (the grid table). An eval that is not
in the store under the plan's current key (never run, or made by other inputs) is missing: its
row says so and is never filled from anywhere else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.errors import HarnessError
from harness.evaluation.tasks import data_key, task_configs, task_data
from harness.plan import Unit, _point_label
from harness.stages import Context

# Primary metric of a task, first found wins; accuracy is shown in percent.
METRICS = ("acc", "rougeL_char", "rougeL_word")
SCALE = {"acc": 100.0}


@dataclass
class Task:
    name: str
    language: str
    task_type: str       # mcqa | qa
    data: str            # the served data key


@dataclass
class Measured:
    row: str                     # the `model` column: base, a specialist, multitask, a method
    kind: str                    # base | specialist | multitask | merge
    seed: Optional[int]
    eval_unit: Unit
    model_stage: str
    model_key: str
    point: str = ""              # a merge's grid point, e.g. "density=0.5,weight=1.0"
    params: dict[str, Any] = field(default_factory=dict)
    dev_score: Optional[float] = None
    grid: list[dict[str, Any]] = field(default_factory=list)  # every point's dev scores
    method: str = ""             # a merge's method (the row is its recipe entry's name)
    options: Optional[dict[str, Any]] = None  # a search method's options (None: a grid)
    results: Optional[dict[str, Any]] = None  # results.json; None = missing

    @property
    def missing(self) -> bool:
        return self.results is None


def leaf_tasks(ctx: Context) -> list[Task]:
    """The recipe's tasks with groups expanded, each with the language and kind of its data."""
    tasks_dir = ctx.project / "tasks"
    configs = task_configs(tasks_dir)
    by_key = {data_key(d.source, d.language, d.task_type): d for d in ctx.recipe.datasets.values()}

    def expand(name: str) -> list[str]:
        config = configs[name]
        return [t for sub in config["task"] for t in expand(sub)] if "group" in config else [name]

    out, seen = [], set()
    for name in ctx.recipe.eval.tasks:
        for leaf in expand(name):
            if leaf not in seen:
                seen.add(leaf)
                data = task_data(tasks_dir, leaf)[0]
                ds = by_key[data]
                kind = "mcqa" if "mcqa" in configs[leaf].get("include", "") else ds.task_type
                out.append(Task(leaf, ds.language, kind, data))
    return out


def metric(results: dict[str, Any], task: str) -> tuple[Optional[float], Optional[float], str]:
    """(value, stderr, metric name) of a task's primary metric, in table units."""
    row = results.get("results", {}).get(task, {})
    for name in METRICS:
        value = row.get(f"{name},none")
        if isinstance(value, (int, float)):
            stderr = row.get(f"{name}_stderr,none")
            scale = SCALE.get(name, 1.0)
            return (value * scale, stderr * scale if isinstance(stderr, (int, float)) else None,
                    name)
    return None, None, ""


def _producers(ctx: Context) -> dict[str, Unit]:
    return {u.key: u for stage in ("specialists", "merge") for u in ctx.plan[stage]}


def _describe(ctx: Context, unit: Optional[Unit]) -> dict[str, Any]:
    if unit is None:
        return {"row": "base", "kind": "base", "seed": None}
    inputs = unit.inputs
    if "specialist" in inputs:
        return {"row": inputs["specialist"]["name"], "kind": "specialist", "seed": inputs["seed"]}
    if "multitask" in inputs:
        return {"row": "multitask", "kind": "multitask", "seed": inputs["seed"]}
    if "method" in inputs:
        info: dict[str, Any] = {"row": unit.label or inputs["method"], "kind": "merge",
                                "seed": inputs["seed"], "method": inputs["method"],
                                "options": inputs.get("options"),
                                "point": "search" if "options" in inputs else ""}
        if ctx.store.has("merge", unit.key):
            details = ctx.store.manifest("merge", unit.key)["details"]
            # Hi-Merging names its dev scores by specialist, the grids by dataset: one naming
            dataset = {sp.name: sp.dataset for sp in ctx.recipe.specialists}
            scores = {dataset.get(k, k): v for k, v in (details.get("dev_scores") or {}).items()}
            info["dev_score"] = sum(scores.values()) / len(scores) if scores else None
            info["grid"] = details.get("grid") or [
                {"point": "search", "params": {}, "dev_scores": scores,
                 "dev_mean": info["dev_score"], "dev_gain": details.get("dev_gain"),
                 "selected": True}]
            if "grid" in inputs:
                info["params"] = details["params"]
                info["point"] = _point_label(details["params"])
        return info
    return {"row": "base", "kind": "base", "seed": None}  # the tiny base, built here


def read_results(ctx: Context, unit: Unit) -> dict[str, Any]:
    path = ctx.store.path("eval", unit.key) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(results.get("results"), dict):
            raise ValueError("no 'results' mapping")
    except (OSError, ValueError, AttributeError) as exc:
        raise HarnessError(f"{path}: unreadable eval results ({type(exc).__name__}: "
                           f"{str(exc)[:80]}); delete {path.parent} and run `harness eval "
                           f"--recipe {ctx.recipe.name}` to evaluate that model again") from None
    return results


def collect(ctx: Context) -> list[Measured]:
    producers = _producers(ctx)
    out = []
    for unit in ctx.plan["eval"]:
        model = unit.inputs["model"]
        producer = producers.get(model["key"]) if model["stage"] != "external" else None
        results = None
        if ctx.store.has("eval", unit.key):
            results = read_results(ctx, unit)
        existing = (model.get("ref") or {}).get("specialist")  # a fine-tune named by `model:`
        info = ({"row": existing, "kind": "specialist", "seed": None} if existing
                else _describe(ctx, producer))
        out.append(Measured(eval_unit=unit, model_stage=model["stage"], model_key=model["key"],
                            results=results, **info))
    return out


def provenance(ctx: Context, m: Measured) -> dict[str, Any]:
    """What a row links to: the model's content key and manifest, the YAML that made it, the
    eval's backend, seeds and versions."""
    record: dict[str, Any] = {"model": m.row, "seed": m.seed, "point": m.point,
                              "model_stage": m.model_stage, "model_key": m.model_key,
                              "eval_key": m.eval_unit.key, "status": "missing" if m.missing else "ok"}
    if m.results is not None:
        meta = m.results.get("harness", {})
        record["eval"] = {k: meta.get(k) for k in ("backend", "split", "limit", "num_fewshot",
                                                   "apply_chat_template", "seed", "versions")}
    if m.model_stage in ("specialists", "merge") and ctx.store.has(m.model_stage, m.model_key):
        manifest = ctx.store.manifest(m.model_stage, m.model_key)
        record["model_manifest"] = {k: manifest.get(k) for k in ("inputs", "versions", "details")}
    return record


def recipe_files(ctx: Context, m: Measured) -> dict[str, Path]:
    """The files that reproduce the model: mergekit.yaml, or LLaMA-Factory's YAMLs."""
    if m.model_stage not in ("specialists", "merge") or not ctx.store.has(m.model_stage, m.model_key):
        return {}
    folder = ctx.store.path(m.model_stage, m.model_key)
    files = {p.name: p for p in [folder / "mergekit.yaml"] if p.is_file()}
    files.update({p.name: p for p in sorted((folder / "llamafactory").glob("*.yaml"))})
    return files
