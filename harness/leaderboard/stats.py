"""Paired statistics from the per-item test results (each eval's samples.jsonl).

Two models evaluated on the same test items differ item by item; the leaderboard compares each
merge with the best baseline on those pairs, not on two means with their own errors:
- the mean paired difference (table units: accuracy or ROUGE-L x 100) with a paired bootstrap
  95 % interval, resampling test items and, with several seeds, seeds (one draw of items is
  applied to every drawn seed, so an item stays paired across seeds);
- for multiple choice, the exact McNemar test on the discordant items pooled over seeds (two
  sided, binomial with p = 1/2 on the items exactly one of the two models gets right).
A claim that one model beats another stands only where the interval excludes 0.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from harness.leaderboard.collect import METRICS, SCALE

ITERATIONS = 2000
RANDOM_SEED = 0
Items = dict[str, dict[str, float]]  # task -> doc id -> the item's primary metric


def read_items(path: Path) -> Items:
    """Each task's per-item primary metric (the table's metric, in its units)."""
    out: Items = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            name = next((m for m in METRICS if isinstance(row.get(m), (int, float))), None)
            if name is not None:
                out.setdefault(row["task"], {})[str(row["doc_id"])] = (
                    float(row[name]) * SCALE.get(name, 1.0))
    return out


def _doc_order(doc_id: str) -> tuple:
    """lm-eval's document order (numeric ids), so a bootstrap's draws are reproducible."""
    return (0, int(doc_id), "") if doc_id.isdigit() else (1, 0, doc_id)


def paired_matrix(a: list[dict[str, float]], b: list[dict[str, float]]) -> np.ndarray:
    """seeds x items of a - b on the items both models have in every seed."""
    common = sorted(set.intersection(*(set(x) & set(y) for x, y in zip(a, b))), key=_doc_order)
    return np.array([[x[i] - y[i] for i in common] for x, y in zip(a, b)], dtype=float)


def bootstrap(diff: np.ndarray, iterations: int = ITERATIONS, seed: int = RANDOM_SEED
              ) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the mean paired difference over seeds and items."""
    rng = np.random.default_rng(seed)
    n_seeds, n_items = diff.shape
    means = np.empty(iterations)
    for k in range(iterations):
        seeds = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        items = rng.integers(0, n_items, n_items)
        means[k] = diff[np.ix_(seeds, items)].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p for b items only the first model gets right and c only the
    second: 2 x P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def discordant(a: list[dict[str, float]], b: list[dict[str, float]]) -> tuple[int, int]:
    """(only a right, only b right) over every seed's common items (accuracy in %: 100 = right)."""
    only_a = only_b = 0
    for x, y in zip(a, b):
        for item in set(x) & set(y):
            ra, rb = x[item] > 0, y[item] > 0
            only_a += ra and not rb
            only_b += rb and not ra
    return only_a, only_b


def compare(a: list[dict[str, float]], b: list[dict[str, float]], mcqa: bool
            ) -> Optional[dict[str, float]]:
    """One task, model a against model b, each a list over the same seeds of item -> score."""
    if not a or len(a) != len(b):
        return None
    diff = paired_matrix(a, b)
    if diff.size == 0:
        return None
    mean, low, high = bootstrap(diff)
    out = {"diff": mean, "ci_low": low, "ci_high": high, "items": diff.shape[1],
           "seeds": diff.shape[0]}
    if mcqa:
        only_a, only_b = discordant(a, b)
        out.update(only_row=only_a, only_best=only_b, mcnemar_p=mcnemar_exact(only_a, only_b))
    return out
