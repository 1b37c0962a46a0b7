"""Stage runner: skips cached units (and says so), builds the rest through their stage's module.

Each stage is declared once, in harness/stagedefs.py: its module (imported on first use, so the
CLI starts fast and a stage's heavy imports are paid only when it runs) defines
`build(ctx, units)` and, for some stages, a function run after the stage, cached or not.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from harness.plan import STAGES, Unit
from harness.recipe import Recipe
from harness.stagedefs import STAGES as DEFS
from harness.store import Store

log = logging.getLogger("harness")


@dataclass
class Context:
    recipe: Recipe
    store: Store
    plan: dict[str, list[Unit]]
    project: Path


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
    module = importlib.import_module(DEFS[stage].module)
    if todo:
        module.build(ctx, todo)
    else:
        log.info("%s: all %d unit(s) cached, nothing to do", stage, len(units))
    if DEFS[stage].after:
        getattr(module, DEFS[stage].after)(ctx)
    return todo
