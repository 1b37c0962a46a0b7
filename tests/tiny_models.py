"""Test fixtures: real tiny Qwen2 models (random weights) and a way to place them in a store.

The stages under test run for real on these; only the upstream stages that would have
trained them are skipped by writing their output folders directly.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from harness import tiny
from harness.data import synthetic
from harness.store import Store


@lru_cache(maxsize=1)
def tokenizer():
    return tiny.train_tokenizer((r["text"] for r in synthetic.corpus(4000, 0)), 3000)


def make_model(folder: Path, seed: int) -> Path:
    return tiny.build_untrained(folder, seed, tokenizer=tokenizer())


def plant(store: Store, stage: str, key: str, seed: int) -> Path:
    """Publish a model artifact under stage/key, as the stage that trains it would."""
    with store.build(stage, key, {"planted_by": "tests", "seed": seed}) as tmp:
        make_model(tmp / "model", seed)
    return store.path(stage, key) / "model"
