"""A fine-tune whose vocabulary differs from the base's, put onto the base's token ids.

An existing fine-tune may have added tokens, or the same tokens under other ids. Its
embedding and lm_head rows then mean other tokens than the base's rows of the same index, and
a merge row by row would add unrelated vectors. mergekit reconciles this by token string
(`tokenizer_source: base`): every model's vocabulary-indexed rows are permuted onto the base
tokenizer's ids, a token the fine-tune lacks takes the base's row (no change for it), a token
only the fine-tune has is dropped (the merged model keeps the base's tokenizer, the one it is
prompted and scored with). The in-memory engine does the same through mergekit's own
`PermutedVocabulary`, so a candidate equals what `mergekit-yaml` writes.

Only `base` is offered as the source: a `union` vocabulary would give the merged model rows
the base never trained and a shape the resident scorer (which holds the base) cannot take.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.models import check_weights_folder, safetensors_header

# vocabulary-indexed tensors (vocabulary on axis 0) of the Qwen2 / Llama families
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")
# below this share of the base's tokens found in the fine-tune, the two tokenizers cut the same
# text differently: a merge by token string would mix models that never saw the same ids
MIN_SHARED = 0.9


def token_ids(folder: Path) -> tuple[str, dict[str, int]]:
    """tokenizer.json's model type and its token -> id (added tokens included)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: the vocabularies can only be mapped by token "
                         "string from a fast tokenizer's tokenizer.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    vocab = model.get("vocab") or {}
    if isinstance(vocab, list):  # Unigram: [piece, score] in id order
        vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
    ids = dict(vocab)
    ids.update({t["content"]: t["id"] for t in data.get("added_tokens") or []})
    return str(model.get("type")), ids


def embedding_rows(folder: Path) -> int:
    for f in check_weights_folder(folder):
        header = safetensors_header(f)
        if EMBEDDINGS[0] in header:
            return header[EMBEDDINGS[0]]["shape"][0]
    raise ValueError(f"{folder} has no {EMBEDDINGS[0]}")


def compare(base: Path, fine_tune: Path) -> dict[str, Any]:
    """How the fine-tune's vocabulary maps onto the base's; ValueError (the reason) where it
    cannot be reconciled."""
    base_type, base_ids = token_ids(base)
    own_type, own_ids = token_ids(fine_tune)
    if own_type != base_type:
        raise ValueError(f"tokenizer model {own_type} vs {base_type}: the two cut text into "
                         "different pieces")
    shared = base_ids.keys() & own_ids.keys()
    share = len(shared) / max(len(base_ids), 1)
    if share < MIN_SHARED:
        raise ValueError(f"only {share:.0%} of the base's {len(base_ids)} tokens are in the "
                         f"fine-tune's vocabulary (at least {MIN_SHARED:.0%} needed): the two "
                         "tokenizers cut text differently")
    return {"shared": len(shared), "moved": sum(base_ids[t] != own_ids[t] for t in shared),
            "from_base": len(base_ids.keys() - shared),     # rows the base gives (no change)
            "dropped": len(own_ids.keys() - shared)}        # the fine-tune's own tokens


def mergekit_tokenizer(base: Path, uses_base: bool = True) -> dict[str, Any]:
    """mergekit's `tokenizer:` block for a reconciled merge: the base's tokenizer (`base` where
    the method has a base model, its folder where it has none, e.g. linear). mergekit sizes
    the output vocabulary to the tokenizer's length; a base padded beyond it (Qwen2-7B: 152064
    rows for 151646 tokens) keeps its row count through `pad_to_multiple_of`, so the merged
    model has the base's shapes (the resident scorer swaps candidates into the base's tensors)."""
    rows, tokens = embedding_rows(base), len(token_ids(base)[1])
    return {"source": "base" if uses_base else str(base),
            **({"pad_to_multiple_of": rows} if rows > tokens else {})}


BASE = "__base__"  # the base's entry in align's tensors, as in the in-memory merge's inputs


def align(base: Path, models: dict[str, Path],
          tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """Every model's vocabulary-indexed tensors permuted onto the base tokenizer's ids by
    mergekit's own code, as `mergekit-yaml` does for the same config: `tensors` holds each
    merged model's (and, under BASE, the base's where the method has one; a token a model
    lacks then takes the base's row, otherwise the other models' mean)."""
    from mergekit.common import ModelReference
    from mergekit.tokenizer.build import build_tokenizer
    from mergekit.tokenizer.embed import PermutedVocabulary

    uses_base = BASE in tensors
    refs = {name: ModelReference.model_validate(str(path)) for name, path in models.items()}
    base_ref = ModelReference.model_validate(str(base))
    if uses_base:
        refs[BASE] = base_ref
    block = mergekit_tokenizer(base, uses_base)
    info = build_tokenizer(base_ref if uses_base else None, list(refs.values()),
                           "base" if uses_base else base_ref, trust_remote_code=False,
                           add_tokens=[])
    permute = PermutedVocabulary.model_construct(
        tokens=None, pad_to_multiple_of=block.get("pad_to_multiple_of"),
        base_model=base_ref if uses_base else None, vocabulary_axis=0)
    out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in tensors}
    for name in EMBEDDINGS:
        if name not in next(iter(tensors.values())):
            continue  # tied embeddings: no lm_head
        permuted = permute.execute(tokenizer_info=info,
                                   tensors={refs[m]: tensors[m][name] for m in tensors})
        for m in tensors:
            out[m][name] = permuted[refs[m]]
    return out
