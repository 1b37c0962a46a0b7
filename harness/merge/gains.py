"""One scale across tasks: a merge's dev score on a task as the share of that task's specialist
gain it keeps, (score - base) / (specialist - base).

Raw scores cannot be averaged across tasks: an open-QA mean log-likelihood (negative, unbounded)
beside an MCQA accuracy, or a 5-option task (chance 0.2) beside a 4-option one (chance 0.25),
weighs tasks by their units instead of by what the merge kept of them. The normalised gain is 0
for the base and 1 for the specialist on every task, whatever the metric.

A specialist that scores below the base on its own dev split still gets a scale: the span is
|specialist - base|, so a higher score stays better. A specialist that scores exactly the base
(a small dev split, a failed run) gave no gain to keep: its share is undefined, and dividing by
a floored span would let one dev item outweigh every other task (a 1/16 step over a 1e-6 span
scored 15624 in a reduced run). Such a flat task is left out of the mean gain and weighs 0 in
Hi-Merging's sums; if every task is flat, the raw differences from the base are used instead.
The merge stage logs weak and flat tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

FLOOR = 1e-9  # below this span a specialist counts as equal to the base on dev (flat)


@dataclass(frozen=True)
class Reference:
    """Per task (dev split name): the base's and its own specialist's dev score."""
    base: dict[str, float]
    specialist: dict[str, float]

    def span(self, task: str) -> float:
        return abs(self.specialist[task] - self.base[task])

    def flat(self) -> list[str]:
        """Tasks whose specialist scores the base on dev: no gain to keep a share of."""
        return [t for t in self.base if self.span(t) < FLOOR]

    def weak(self) -> list[str]:
        """Tasks whose specialist does not beat the base on dev (their gains are ill-defined)."""
        return [t for t in self.base if self.specialist[t] <= self.base[t]]

    def unit(self, task: str) -> float:
        """What one point of `task`'s score weighs in a sum across tasks: 1 / its span, 0 for a
        flat task, and 1 for every task when all are flat (raw differences)."""
        if len(self.flat()) == len(self.base):
            return 1.0
        return 0.0 if task in self.flat() else 1.0 / self.span(task)

    def gain(self, task: str, score: float) -> float:
        return (score - self.base[task]) * self.unit(task)

    def gains(self, scores: dict[str, float]) -> dict[str, float]:
        return {task: self.gain(task, s) for task, s in scores.items()}

    def mean_gain(self, scores: dict[str, float]) -> float:
        """Mean share kept over the tasks that have a gain (flat tasks are left out)."""
        counted = [t for t in scores if self.unit(t) > 0]
        return sum(self.gain(t, scores[t]) for t in counted) / len(counted)

    def describe(self) -> dict[str, Any]:
        return {t: {"base": self.base[t], "specialist": self.specialist[t]} for t in self.base}


def measure(score: Callable[[Any, str], float], base: Any, specialists: dict[str, Any]
            ) -> Reference:
    """The reference from a scorer: `specialists` maps each task to its specialist's weights."""
    return Reference({t: float(score(base, t)) for t in specialists},
                     {t: float(score(w, t)) for t, w in specialists.items()})


def lightness(params: dict[str, Any]) -> float:
    """How far a grid point moves from the base: the sum of its numeric values (weights,
    densities). The last tie-break: of two points equal on dev, the lighter one."""
    return sum(float(v) for v in params.values() if isinstance(v, (int, float))
               and not isinstance(v, bool))


def best_point(points: Iterable[dict[str, Any]]) -> int:
    """Index of the grid point to publish: best mean normalised dev gain, then best raw dev
    mean, then the lighter merge (never grid order)."""
    rows = list(points)
    return max(range(len(rows)), key=lambda i: (rows[i]["dev_gain"], rows[i]["dev_mean"],
                                                -lightness(rows[i]["params"])))
