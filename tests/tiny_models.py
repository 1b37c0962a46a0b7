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


def plant_family(store: Store, base_key: str, specialist_keys: list[str],
                 noise: float = 0.01) -> None:
    """A base and specialists 'fine-tuned' from it (base + small noise), as the specialists
    stage would publish them: what the merge stage needs."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base = plant(store, "specialists", base_key, seed=0)
    for i, key in enumerate(specialist_keys):
        with store.build("specialists", key, {"planted_by": "tests", "from": base_key}) as tmp:
            model = shutil.copytree(base, tmp / "model")
            tensors = load_file(str(model / "model.safetensors"))
            g = torch.Generator().manual_seed(100 + i)
            tensors = {k: v + noise * torch.randn(v.shape, generator=g) for k, v in tensors.items()}
            save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
