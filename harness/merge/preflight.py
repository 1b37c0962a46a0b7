"""Checks before any tensor work: the models can be merged, and the outputs fit on disk."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.errors import HarnessError
from harness.hub import Resolved
from harness.models import check_weights_folder, safetensors_header

CONFIG_KEYS = ("architectures", "num_hidden_layers", "hidden_size", "intermediate_size",
               "num_attention_heads", "num_key_value_heads", "vocab_size")
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")


def _shapes(folder: Path) -> dict[str, list[int]]:
    shapes = {}
    for f in check_weights_folder(folder):
        header = safetensors_header(f)
        shapes.update({k: header[k]["shape"] for k in EMBEDDINGS if k in header})
    return shapes


def check_compatible(base: Resolved, models: dict[str, Path]) -> dict:
    """Same architecture, layer count, vocabulary and embedding shapes as the (resolved)
    base; returns what was checked against what, for the manifest."""
    want = json.loads((base.path / "config.json").read_text())
    want_shapes = _shapes(base.path)
    for name, folder in models.items():
        got = json.loads((folder / "config.json").read_text())
        for key in CONFIG_KEYS:
            if got.get(key) != want.get(key):
                raise HarnessError(f"merge pre-flight: {name} ({folder}) has {key}={got.get(key)} "
                                   f"but the base has {want.get(key)}; merge only models fine-tuned "
                                   "from the same base (re-export the specialist)")
        for tensor, shape in _shapes(folder).items():
            if want_shapes.get(tensor) != shape:
                raise HarnessError(f"merge pre-flight: {name} ({folder}) has {tensor} of shape "
                                   f"{shape} but the base has {want_shapes.get(tensor)}; the "
                                   "vocabularies differ (resize or re-export the specialist)")
    return {"base": base.describe(), "models": len(models), "passed": list(CONFIG_KEYS) +
            [f"{t} shape" for t in want_shapes]}


def check_disk(target: Path, model: Path, count: int) -> None:
    need = sum(f.stat().st_size for f in model.glob("*.safetensors")) * count
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if free < need * 1.1:
        raise HarnessError(f"merge pre-flight: {count} merged model(s) need about "
                           f"{need / 2**30:.1f} GiB, {target} has {free / 2**30:.1f} GiB free; "
                           "free space or move the run store (HARNESS_RUNS_DIR)")
