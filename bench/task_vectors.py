"""How large the specialists' deltas are and how much they overlap: the two numbers that place
a testbed in (or out of) the paper's regime, where LoRA fine-tunes of a 7B model are a small
change of the weights and their task vectors are nearly orthogonal.

    python bench/task_vectors.py BASE_MODEL_DIR NAME=SPECIALIST_MODEL_DIR [NAME=DIR ...]

Prints, per specialist, ||delta|| / ||base weights|| per decoder layer and for the rest
(embeddings, final norm, lm_head), and the cosine between every two task vectors (all
tensors flattened). Folders hold safetensors weights (a run store's `specialists/<key>/model`).
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def weights(folder: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        out.update({k: v.float() for k, v in load_file(str(shard)).items()})
    if not out:
        sys.exit(f"error: {folder}: no *.safetensors files; pass a model folder")
    return out


def group(name: str) -> str:
    return f"layer {name.split('.layers.')[1].split('.')[0]}" if ".layers." in name else "rest"


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        sys.exit(__doc__)
    base = weights(argv[0])
    specialists = {n: weights(d) for n, d in (a.split("=", 1) for a in argv[1:])}
    groups = sorted({group(k) for k in base}, key=lambda g: (g == "rest", len(g), g))
    print("relative delta ||specialist - base|| / ||base||")
    for name, sd in specialists.items():
        cells = []
        for g in groups:
            keys = [k for k in base if group(k) == g]
            delta = torch.sqrt(sum(((sd[k] - base[k]) ** 2).sum() for k in keys))
            norm = torch.sqrt(sum((base[k] ** 2).sum() for k in keys))
            cells.append(f"{g} {delta / norm:.3f}")
        print(f"  {name}: " + ", ".join(cells))
    vectors = {n: torch.cat([(sd[k] - base[k]).flatten() for k in sorted(base)])
               for n, sd in specialists.items()}
    print("cosine between task vectors")
    for a, b in itertools.combinations(vectors, 2):
        cosine = torch.nn.functional.cosine_similarity(vectors[a], vectors[b], 0)
        print(f"  {a} / {b}: {cosine:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
