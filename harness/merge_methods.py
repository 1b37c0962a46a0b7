"""Registry of merge methods: each method's parameters declared in one place.

Like mergekit's own registry: a method is a name, the mergekit method that runs it, and its
parameters with defaults and ranges. `scope` says whether mergekit takes the value per model
(`model`, e.g. weight/density) or once for the merge (`global`, e.g. lambda/normalize).
The merge stage adds how each method turns into a mergekit config and an in-memory merge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


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

# Hi-Merging's choices where the paper is silent (../shared/docs/HI_MERGING.md), with defaults.
HI_MERGING_OPTIONS: dict[str, Any] = {
    "prune_grid": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "scale_grid": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "search": "coarse_to_fine",
    "halving_factor": 0.5,
    "greedy_acceptance": True,
    "recompute_every": 4,
    "epsilon": 0.0,
    "max_iterations": None,  # None = half the layer count
    "non_layer_tensors": "model_wise",
    # how tasks are summed (acceptance, Γ, the severe case's keeper): "normalised_gain" puts
    # each task on one scale, (S - base) / |specialist - base| on dev (harness/merge/gains.py);
    # "raw" adds the raw dev scores, as ../shared/docs/HI_MERGING.md first read the paper
    "combine": "normalised_gain",
}


def hi_merging_option_names() -> list[str]:
    return list(HI_MERGING_OPTIONS)
