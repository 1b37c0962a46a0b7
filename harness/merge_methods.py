"""Registry of merge methods: each method's parameters declared in one place.

Like mergekit's own registry: a method is a name, the mergekit method that runs it, and its
parameters with defaults and ranges. `scope` says whether mergekit takes the value per model
(`model`, e.g. weight/density) or once for the merge (`global`, e.g. lambda/normalize).
The merge stage adds how each method turns into a mergekit config and an in-memory merge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class Param:
    default: Any
    scope: Literal["model", "global"]
    low: Optional[float] = None
    high: Optional[float] = None
    doc: str = ""


@dataclass(frozen=True)
class Method:
    name: str
    mergekit_method: Optional[str]
    parameters: dict[str, Param] = field(default_factory=dict)
    doc: str = ""
    uses_base: bool = True  # task-vector methods merge deltas from the base; linear does not

    def split(self, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A grid point's values, defaults filled in, as (per-model, global) parameters."""
        per_model, shared = {}, {}
        for name, param in self.parameters.items():
            value = values.get(name, param.default)
            (per_model if param.scope == "model" else shared)[name] = value
        return per_model, shared


_WEIGHT = Param(1.0, "model", 0.0, None, "scale of each model's task vector")
_DENSITY = Param(1.0, "model", 0.0, 1.0, "fraction of task-vector entries kept")
_LAMBDA = Param(1.0, "global", 0.0, None, "scale of the merged task vector")
_NORMALIZE = Param(False, "global", doc="divide by the weight sum (cancels a lone model's weight)")
_RESCALE = Param(True, "global", doc="rescale kept entries by 1/density (DARE)")

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("linear", "linear", {"weight": _WEIGHT, "normalize": Param(True, "global")},
           "weighted average of the models", uses_base=False),
    Method("task_arithmetic", "task_arithmetic",
           {"weight": _WEIGHT, "lambda": _LAMBDA, "normalize": _NORMALIZE},
           "base + sum of weighted task vectors"),
    Method("ties", "ties",
           {"weight": _WEIGHT, "density": _DENSITY, "lambda": _LAMBDA, "normalize": _NORMALIZE},
           "trim by magnitude, elect sign, disjoint merge"),
    Method("dare_ties", "dare_ties",
           {"weight": _WEIGHT, "density": _DENSITY, "lambda": _LAMBDA, "normalize": _NORMALIZE,
            "rescale": _RESCALE},
           "random drop + rescale, then TIES sign election"),
    Method("dare_linear", "dare_linear",
           {"weight": _WEIGHT, "density": _DENSITY, "lambda": _LAMBDA, "normalize": _NORMALIZE,
            "rescale": _RESCALE},
           "random drop + rescale, then linear sum"),
    Method("breadcrumbs", "breadcrumbs",
           {"weight": _WEIGHT, "density": _DENSITY, "gamma": Param(0.01, "model", 0.0, 1.0),
            "lambda": _LAMBDA, "normalize": _NORMALIZE},
           "drop the smallest and the largest entries"),
    Method("della", "della",
           {"weight": _WEIGHT, "density": _DENSITY, "epsilon": Param(0.1, "model", 0.0, 1.0),
            "lambda": _LAMBDA, "normalize": _NORMALIZE, "rescale": _RESCALE},
           "magnitude-ranked stochastic drop"),
    Method("hi_merging", "ties", {}, "Hierarchical Iterative Merging (options, not a grid)"),
]}

# ---------------------------------------------------------------- Hi-Merging's options
# Every choice the paper leaves open (../shared/docs/HI_MERGING.md) is a typed option here, in
# one place: the recipe validates `options:` against this model (an unknown value is refused,
# naming the valid ones) and the search (harness/merge/hi_merging.py) reads it. The defaults are
# the variant the ablation's DEV columns chose (README, Hi-Merging; leaderboard/*/ablations.md).
class HiMergingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # which steps run: the paper's ablation (model-wise pruning/scaling only; layer-wise
    # conflict resolution only, every model at p = s = 1; both)
    stages: Literal["full", "model_wise_only", "layer_wise_only"] = "full"
    prune_grid: list[float] = Field(default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                    min_length=1)
    scale_grid: list[float] = Field(default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                    min_length=1)
    search: Literal["coarse_to_fine", "grid"] = "coarse_to_fine"
    # step 1's objective for each model's (p, s): its own task with the model alone; all tasks
    # with the other models merged in at their current points (coordinate-wise); or, alone,
    # the sparsest point within one dev standard error of the best
    step1: Literal["alone", "merged", "sparsest"] = "alone"
    # the partial case (some γ > 0): shrink the models whose contribution fell in the merge
    # (γ > 0), or the ones that gained (γ <= 0, they took the others' contribution)
    partial: Literal["shrink_fell", "shrink_gained"] = "shrink_fell"
    halving_factor: float = Field(0.5, gt=0, lt=1)
    # the severe case (every γ > 0): keep the model with the largest specialist-context
    # contribution c, or score each keep-one option and keep the best
    severe: Literal["contribution", "score_each"] = "contribution"
    # accepting a change: the sum of raw dev scores must not fall; the mean normalised gain
    # must not fall; the mean gain must not fall and no task's gain may end below its gain at
    # the start of resolution minus `acceptance_margin`; or always
    acceptance: Literal["sum", "mean_gain", "no_task_below", "always"] = "mean_gain"
    acceptance_margin: float = Field(0.05, ge=0)  # in normalised gain (1 = a specialist's gain)
    # resolve a layer only while its Γ > epsilon + epsilon_se x (Γ's standard error on dev)
    epsilon: float = Field(0.0, ge=0)
    epsilon_se: float = Field(0.0, ge=0)
    # recompute γ after this many accepted changes (1: after every one)
    recompute_every: int = Field(4, gt=0)
    # passes over the layers: each visits every layer above the threshold once; null = repeat
    # until a pass changes nothing (at most 10)
    passes: Optional[int] = Field(1, gt=0)
    max_iterations: Optional[int] = Field(None, gt=0)  # per pass; null = half the layer count
    # β of layer l: on the base alone, or on the base with the non-layer tensors (embeddings,
    # final norm, lm_head) of the same context, without which a layer's delta may read shifted
    # embeddings
    beta: Literal["layer_only", "with_non_layer"] = "layer_only"
    non_layer_tensors: Literal["model_wise"] = "model_wise"
    # how tasks are summed in Γ and the severe case: per unit of each specialist's dev gain
    # (harness/merge/gains.py) or raw dev scores
    combine: Literal["normalised_gain", "raw"] = "normalised_gain"

    @field_validator("prune_grid", "scale_grid")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if len(set(values)) != len(values):
            raise ValueError("a value is listed twice; list each value once")
        for v in values:
            if not 0 < v <= 1:
                raise ValueError(f"{v!r} is outside (0, 1]; give fractions such as 0.5")
        return values


# A search method takes `options` (a typed model), not a grid; its unit is one search.
SEARCH_OPTIONS: dict[str, type[BaseModel]] = {"hi_merging": HiMergingOptions}


def option_names(method: str) -> list[str]:
    return list(SEARCH_OPTIONS[method].model_fields)
