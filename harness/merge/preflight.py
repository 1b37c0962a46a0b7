"""Checks before any tensor work: the models can be merged, and the outputs fit on disk."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.hub import Resolved
from harness.merge import vocab
from harness.merge.vocab import EMBEDDINGS
from harness.models import check_weights_folder, safetensors_header

CONFIG_KEYS = ("architectures", "num_hidden_layers", "hidden_size", "intermediate_size",
               "num_attention_heads", "num_key_value_heads", "vocab_size")


def _shapes(folder: Path) -> dict[str, list[int]]:
    shapes = {}
    for f in check_weights_folder(folder):
        header = safetensors_header(f)
        shapes.update({k: header[k]["shape"] for k in EMBEDDINGS if k in header})
    return shapes


def _tokenizer(folder: Path) -> dict[str, Any]:
    """The tokenizer facts a merge depends on: a hash of the vocabulary (tokenizer.json's model
    vocabulary and added tokens) and the chat template, where the folder has them."""
    out: dict[str, Any] = {}
    tok = folder / "tokenizer.json"
    if tok.is_file():
        data = json.loads(tok.read_text(encoding="utf-8"))
        words = {"vocab": (data.get("model") or {}).get("vocab"),
                 "added": [t.get("content") for t in data.get("added_tokens") or []]}
        out["vocabulary"] = hashlib.sha256(json.dumps(words, sort_keys=True).encode()).hexdigest()[:12]
    template = None
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template is not None:
        out["chat_template"] = hashlib.sha256(str(template).encode()).hexdigest()[:12]
    return out


def check_compatible(base: Resolved, models: dict[str, Path],
                     existing: frozenset[str] = frozenset(),
                     reconcile: frozenset[str] = frozenset()) -> dict:
    """Same architecture, layer count, hidden sizes, vocabulary (size, tokens, embedding shapes)
    and chat template as the (resolved) base, checked from config and tokenizer files before
    any tensor is read; a mismatch is one line naming both models and the field. The tokenizer
    and chat template are compared for the `existing` fine-tunes (named, not trained here):
    a fine-tune trained here has the base's tokenizer and the recipe's template by
    construction, and LLaMA-Factory's export may rewrite both files. A fine-tune in
    `reconcile` (`tokenizer_source: base`) may differ in vocabulary if its tokens map onto the
    base's (merge/vocab.py). Returns what was checked against what, for the manifest."""
    want = json.loads((base.path / "config.json").read_text())
    want_shapes = _shapes(base.path)
    want_tok = _tokenizer(base.path)

    def refuse(name: str, folder: Path, field: str, got: Any, wanted: Any, fix: str) -> None:
        raise HarnessError(f"merge pre-flight: {name} ({folder}) and the base {base.pinned} "
                           f"differ in {field}: {got} vs {wanted}; {fix}")

    def vocabulary_fix(name: str) -> str:
        if name in existing:
            return (f"set `tokenizer_source: base` on specialist {name} to map its tokens onto "
                    "the base's by token string (mergekit's tokenizer_source), or merge only "
                    "fine-tunes with the base's tokenizer")
        return "the vocabularies differ (resize or re-export the specialist)"

    mapped: dict[str, Any] = {}
    for name, folder in models.items():
        got = json.loads((folder / "config.json").read_text())
        for key in CONFIG_KEYS:
            if key == "vocab_size" and name in reconcile:
                continue  # the rows are mapped onto the base's below
            if got.get(key) != want.get(key):
                refuse(name, folder, key, got.get(key), want.get(key),
                       vocabulary_fix(name) if key == "vocab_size"
                       else "merge only models fine-tuned from the same base")
        tok = _tokenizer(folder) if name in existing else {}
        if name in reconcile:
            try:
                mapped[name] = vocab.compare(base.path, folder)
            except ValueError as exc:
                raise HarnessError(f"merge pre-flight: {name} ({folder}) cannot be mapped onto "
                                   f"the base {base.pinned}'s vocabulary: {exc}; merge only "
                                   "fine-tunes of the base's tokenizer") from None
        else:
            for tensor, shape in _shapes(folder).items():
                if want_shapes.get(tensor) != shape:
                    refuse(name, folder, f"{tensor} shape", shape, want_shapes.get(tensor),
                           vocabulary_fix(name))
            if "vocabulary" in tok and "vocabulary" in want_tok and tok["vocabulary"] != want_tok["vocabulary"]:
                refuse(name, folder, "tokenizer vocabulary", tok["vocabulary"], want_tok["vocabulary"],
                       "the same ids mean different tokens: " + vocabulary_fix(name))
        if "chat_template" in tok and "chat_template" in want_tok and tok["chat_template"] != want_tok["chat_template"]:
            refuse(name, folder, "chat_template", tok["chat_template"], want_tok["chat_template"],
                   "the merged model is prompted with the base's template; give the fine-tune "
                   "the base's chat template")
    checked = {"base": base.describe(), "models": len(models), "passed": list(CONFIG_KEYS) +
               [f"{t} shape" for t in want_shapes] + sorted(want_tok)}
    if mapped:  # the choice and what it did, per fine-tune
        checked["tokenizer_source"] = {"source": "base", "mapped": mapped,
                                       "mergekit": vocab.mergekit_tokenizer(base.path)}
    return checked


def check_disk(target: Path, model: Path, count: int) -> None:
    need = sum(f.stat().st_size for f in model.glob("*.safetensors")) * count
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if free < need * 1.1:
        raise HarnessError(f"merge pre-flight: {count} merged model(s) need about "
                           f"{need / 2**30:.1f} GiB, {target} has {free / 2**30:.1f} GiB free; "
                           "free space or move the run store (HARNESS_RUNS_DIR)")
