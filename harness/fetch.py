"""`harness fetch`: every hub id a recipe names, in the hub cache before any stage runs.

On a host with hub access each model and dataset is downloaded once (huggingface_hub's cache,
resumable); offline, each is looked up in the cache. The harness's own tiny models
(`harness-tiny/*`, harness/tiny_hub.py) are built and published into the cache when absent.
Each line says what was found, downloaded or built, with its commit.
"""
from __future__ import annotations

import logging

from harness import hub, tiny_hub
from harness.data.converters import SOURCES
from harness.data.readers import is_local
from harness.errors import HarnessError
from harness.recipe import model_kind
from harness.stages import Context

log = logging.getLogger("harness")


def wanted(ctx: Context) -> list[tuple[str, str, str | None, str, list[str] | None]]:
    """(field, hub id, revision, repo type, allow patterns) of every hub reference."""
    recipe = ctx.recipe
    out = []
    if recipe.base.kind == "hub":
        out.append(("base.model", recipe.base.model, recipe.base.revision, "model", None))
    for sp in recipe.specialists:  # existing fine-tunes named by hub id
        if sp.existing and model_kind(sp.model) == "hub":
            out.append((f"specialists.{sp.name}.model", sp.model, sp.revision, "model", None))
    for name, ds in sorted(recipe.datasets.items()):
        if ds.path and not is_local(ds.path, ctx.project):
            subset = SOURCES[ds.source].subset(ds.config)
            out.append((f"datasets.{name}.path", ds.path, ds.revision, "dataset",
                        [f"{subset}/*" if subset else "*"]))
    return out


def fetch(ctx: Context) -> list[hub.Resolved]:
    found = []
    refs = wanted(ctx)
    if not refs:
        log.info("fetch: recipe %s names no hub id; nothing to fetch", ctx.recipe.name)
    for field, ref, revision, repo_type, patterns in refs:
        cached = hub.cached_revision(ref, revision, repo_type)
        if (cached is None and field.startswith("specialists.")
                and ref.split("/")[0] == hub.LOCAL_NAMESPACE):
            raise HarnessError(f"fetch: {field} {ref} is not in the hub cache {hub.cache_dir()}; "
                               "`harness publish --recipe RECIPE` puts a recipe's trained models "
                               f"there as {hub.LOCAL_NAMESPACE}/RECIPE-NAME (see the recipe's header)")
        if cached is None and ref in tiny_hub.TINY_REPOS:
            log.info("fetch: %s %s is not in the hub cache: building it here", field, ref)
            resolved = tiny_hub.build(ref, ctx.project)
            how = "built"
        else:
            try:
                resolved = hub.resolve(ref, revision, repo_type=repo_type,
                                       allow_patterns=patterns, what=field)
            except HarnessError as exc:
                raise HarnessError(f"fetch: {exc}") from None
            how = "cached" if cached == resolved.revision else "downloaded"
        log.info("fetch: %s %s@%s %s", field, ref, resolved.revision, how)
        found.append(resolved)
    return found
