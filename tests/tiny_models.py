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


def renumbered(src: Path, dst: Path, seed: int, added: int = 4, dropped: int = 0) -> Path:
    """The model of `src` with another vocabulary, as a fine-tune published with a re-trained
    or extended tokenizer: every non-special token under another id (its embedding and lm_head
    rows moved alike), `dropped` of the base's tokens missing (the last BPE merges' results)
    and `added` new tokens with rows of their own. On the tokens it shares with the base it is
    the same function as `src`."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok["model"]
    specials = {t["id"] for t in tok["added_tokens"]}
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    parts = {p for m in merges for p in m}
    gone = [a + b for a, b in reversed(merges) if a + b not in parts][:dropped]
    model["merges"] = [[a, b] for a, b in merges if a + b not in gone]
    kept = sorted((i, t) for t, i in model["vocab"].items() if t not in gone)
    movable = [t for i, t in kept if i not in specials]
    g = torch.Generator().manual_seed(seed)
    new_ids = [len(specials) + j for j in torch.randperm(len(movable), generator=g).tolist()]
    old = dict((t, i) for i, t in kept)
    model["vocab"] = {**{t: i for i, t in kept if i in specials}, **dict(zip(movable, new_ids))}
    size = len(model["vocab"])
    tok["added_tokens"] += [{"id": size + j, "content": f"<med_{j}>", "single_word": False,
                             "lstrip": False, "rstrip": False, "normalized": False,
                             "special": False} for j in range(added)]
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    order = torch.tensor([old[t] for t, _ in sorted(model["vocab"].items(), key=lambda x: x[1])])
    tensors = load_file(str(dst / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = tensors[name][order]  # new id k holds the row of the token now at k
        tensors[name] = torch.cat([rows, torch.randn(added, rows.shape[1], generator=g)])
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["vocab_size"] = size + added
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def padded(folder: Path, rows: int) -> Path:
    """Embedding and lm_head padded to `rows` (config vocab_size too), past the tokenizer's
    length, as Qwen2-7B's 152064 rows for 151646 tokens."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(rows)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        t = tensors[name]
        tensors[name] = torch.cat([t, 0.02 * torch.randn(rows - t.shape[0], t.shape[1],
                                                         generator=g)])
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = rows
    (folder / "config.json").write_text(json.dumps(config))
    return folder
