"""Train/dev/test: official splits where they exist, a seeded split where they do not, and
never one question in two splits.

Rules, in order:
1. A release with one split only (or unnamed files) is a pool: test and dev are carved from it
   by fraction, the rest is train.
2. Otherwise official splits are kept; a missing dev or test is carved from train.
3. Exact duplicates (whitespace-normalised) are removed, keeping the copy in the most
   protected split: test over dev over train. The count removed is reported.
Records with a `_group` (the QA pairs of one CMB-Clin case) move between splits together.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any

from harness.data.records import dedup_key

SPLITS = ("train", "dev", "test")
PRIORITY = ("test", "dev", "train")


def carve(records: list[dict], fraction: float, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Take about `fraction` of the records out, whole groups at a time; return (taken, rest),
    each in the original order."""
    keys = [r.get("_group", f"#{i}") for i, r in enumerate(records)]
    sizes = Counter(keys)
    order = sorted(sizes)
    rng.shuffle(order)
    want, n, taken_keys = round(len(records) * fraction), 0, set()
    for key in order:
        if n >= want:
            break
        taken_keys.add(key)
        n += sizes[key]
    taken = [r for r, k in zip(records, keys) if k in taken_keys]
    rest = [r for r, k in zip(records, keys) if k not in taken_keys]
    return taken, rest


def assign(official: dict[str, list[dict]], seed: int, dev_fraction: float,
           test_fraction: float) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    rng = random.Random(seed)
    named = {s: r for s, r in official.items() if s in SPLITS and r}
    report: dict[str, Any] = {"official_splits": sorted(named), "carved": []}
    if len(named) <= 1:
        pool = [r for s in sorted(official) for r in official[s]]
        test, rest = carve(pool, test_fraction, rng)
        dev, train = carve(rest, dev_fraction / max(1e-9, 1 - test_fraction), rng)
        splits = {"train": train, "dev": dev, "test": test}
        report["carved"] = ["dev", "test"]
        report["pool"] = sorted(official)
    else:
        splits = {s: list(named.get(s, [])) for s in SPLITS}
        for missing in ("test", "dev"):
            if not splits[missing]:
                fraction = test_fraction if missing == "test" else dev_fraction
                splits[missing], splits["train"] = carve(splits["train"], fraction, rng)
                report["carved"].append(missing)
    splits, removed = dedup(splits)
    report["duplicates_removed"] = removed
    return splits, report


def dedup(splits: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], dict[str, int]]:
    seen: set[str] = set()
    removed: Counter = Counter()
    out = {}
    for split in PRIORITY:
        kept = []
        for record in splits.get(split, []):
            key = dedup_key(record)
            if key in seen:
                removed[split] += 1
                continue
            seen.add(key)
            kept.append(record)
        out[split] = kept
    return {s: out[s] for s in SPLITS}, {s: removed[s] for s in SPLITS}
