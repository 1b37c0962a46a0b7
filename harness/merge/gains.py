"""One scale across tasks: a merge's dev score on a task as the share of that task's specialist
gain it keeps, (score - base) / (specialist - base).

Raw scores cannot be averaged across tasks: an open-QA mean log-likelihood (negative, unbounded)
beside an MCQA accuracy, or a 5-option task (chance 0.2) beside a 4-option one (chance 0.25),
weighs tasks by their units instead of by what the merge kept of them. The normalised gain is 0
for the base and 1 for the specialist on every task, whatever the metric.

A specialist that does not beat the base on its own dev split still gets a finite scale: the
span is |specialist - base|, floored, so a higher score stays better and the task is not blown
up by a near-zero denominator (the merge stage logs such a task).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

FLOOR = 1e-6  # smallest span: a specialist equal to the base on dev


@dataclass(frozen=True)
class Reference:
    """Per task (dev split name): the base's and its own specialist's dev score."""
    base: dict[str, float]
    specialist: dict[str, float]

    def span(self, task: str) -> float:
        return max(abs(self.specialist[task] - self.base[task]), FLOOR)

    def gain(self, task: str, score: float) -> float:
        return (score - self.base[task]) / self.span(task)

    def gains(self, scores: dict[str, float]) -> dict[str, float]:
        return {task: self.gain(task, s) for task, s in scores.items()}

    def mean_gain(self, scores: dict[str, float]) -> float:
        values = self.gains(scores)
        return sum(values.values()) / len(values)

    def weak(self) -> list[str]:
        """Tasks whose specialist does not beat the base on dev (their gains are ill-defined)."""
        return [t for t in self.base if self.specialist[t] <= self.base[t]]

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
