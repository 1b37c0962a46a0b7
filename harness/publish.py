"""`harness publish`: a recipe's trained models into the local hub cache, under hub ids.

Existing fine-tunes are named by hub id (`specialists[].model`), as most people who merge find
them on the hub. This puts the base and the specialists a recipe trained (one seed) into the
hub cache as `harness-tiny/<recipe>-base` and `harness-tiny/<recipe>-<specialist>`, so a
recipe can merge them as hub models without training anything (tiny_existing_en_zh). The
`harness-tiny` namespace is local: never downloaded, resolved offline.
"""
from __future__ import annotations

import logging

from harness import hub
from harness.errors import HarnessError
from harness.stages import Context

log = logging.getLogger("harness")


def repo_id(recipe: str, model: str) -> str:
    return f"{hub.LOCAL_NAMESPACE}/{recipe}-{model}"


def publish_models(ctx: Context, seed: int) -> list[hub.Resolved]:
    """The tiny base (if the recipe builds one) and every trained specialist of `seed`."""
    wanted = [("base", u) for u in ctx.plan["specialists"] if "corpus" in u.inputs]
    for sp in ctx.recipe.specialists:
        if sp.existing:
            continue
        unit = next((u for u in ctx.plan["specialists"]
                     if u.inputs.get("specialist", {}).get("name") == sp.name
                     and u.inputs.get("seed") == seed), None)
        if unit is None:
            raise HarnessError(f"publish: recipe {ctx.recipe.name} has no seed {seed}; give one "
                               f"of --seed {', '.join(map(str, ctx.recipe.seeds))}")
        wanted.append((sp.name, unit))
    out = []
    for name, unit in wanted:
        if not ctx.store.has("specialists", unit.key):
            raise HarnessError(f"publish: {unit.name} [{unit.key}] is not built; run `make "
                               f"recipe={ctx.recipe.name}` first")
        resolved = hub.publish(ctx.store.path("specialists", unit.key) / "model",
                               repo_id(ctx.recipe.name, name))
        log.info("publish: %s [%s] -> %s@%s", unit.name, unit.key, resolved.ref, resolved.revision)
        out.append(resolved)
    return out
