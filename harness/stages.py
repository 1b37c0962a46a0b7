"""Stage runner: skips cached units (and says so), builds the rest through their stage builder.

A stage is pluggable: its builder is registered in BUILDERS by the module that implements it.
A stage without a builder fails with a clear message and writes nothing.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from harness.errors import StageNotImplemented
from harness.plan import STAGES, Unit
from harness.recipe import Recipe
from harness.store import Store

log = logging.getLogger("harness")

# Where each stage's implementation is tracked, for the not-implemented message.
TRACKING_ISSUE = {"data": 3, "eval": 4, "specialists": 5, "merge": 6, "leaderboard": 8}


@dataclass
class Context:
    recipe: Recipe
    store: Store
    plan: dict[str, list[Unit]]
    project: Path


class Builder(Protocol):
    def __call__(self, ctx: Context, units: list[Unit]) -> None:
        """Build every unit in `units` (none is cached), each via ctx.store.build(...)."""


BUILDERS: dict[str, Callable[[Context, list[Unit]], None]] = {}
# The module that registers each implemented stage's builder (imported on first use, so the
# CLI starts fast and a stage's heavy imports are paid only when it runs).
BUILDER_MODULES = {"data": "harness.data.stage", "specialists": "harness.train.stage",
                   "merge": "harness.merge.stage", "eval": "harness.evaluation.stage",
                   "leaderboard": "harness.leaderboard.stage"}
# A function of the stage's module run after the stage, cached or not (the leaderboard
# re-publishes its stored folder when leaderboard/<recipe>/ holds another one).
AFTER = {"leaderboard": "after"}


def register(stage: str):
    def wrap(fn: Builder) -> Builder:
        BUILDERS[stage] = fn
        return fn
    return wrap


def run_stage(ctx: Context, stage: str) -> list[Unit]:
    """Build the stage's missing units; return the ones that were to do."""
    assert stage in STAGES, stage
    removed = ctx.store.clean_stale(stage)
    for tmp in removed:
        log.warning("%s: removed incomplete folder left by a killed run: %s", stage, tmp)
    units = ctx.plan[stage]
    todo = [u for u in units if not ctx.store.has(stage, u.key)]
    for unit in units:
        if unit not in todo:
            log.info("%s: skipped (cached) %s [%s]", stage, unit.name, unit.key)
    if not todo:
        log.info("%s: all %d unit(s) cached, nothing to do", stage, len(units))
        _after(ctx, stage)
        return []
    if stage not in BUILDERS and stage in BUILDER_MODULES:
        importlib.import_module(BUILDER_MODULES[stage])
    builder = BUILDERS.get(stage)
    if builder is None:
        raise StageNotImplemented(
            f"stage '{stage}' is not implemented yet (tracked in issue #{TRACKING_ISSUE[stage]}); "
            f"{len(todo)} unit(s) to do, nothing was written")
    builder(ctx, todo)
    _after(ctx, stage)
    return todo


def _after(ctx: Context, stage: str) -> None:
    if stage in AFTER:
        getattr(importlib.import_module(BUILDER_MODULES[stage]), AFTER[stage])(ctx)
