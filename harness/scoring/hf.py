"""Log-likelihood scoring with transformers (CPU hosts; the vLLM scorer is the GPU path).

MCQA: accuracy of the option letter with the highest log-likelihood after the prompt (the same
prompt and chat template as the lm-eval tasks, so it ranks models as the leaderboard would).
QA: mean per-token log-likelihood of the reference answer. Deterministic, batched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.data.prompts import mcqa_prompt, qa_prompt
from harness.data.records import read_jsonl


class HFScorer:
    def __init__(self, tokenizer_dir: str | Path, batch_size: int = 32,
                 apply_chat_template: bool = True, limit: int | None = None):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.batch_size = batch_size
        self.chat = apply_chat_template and bool(self.tok.chat_template)
        self.limit = limit

    def _context(self, text: str) -> str:
        if not self.chat:
            return text
        return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)

    def records(self, path: Path) -> list[dict[str, Any]]:
        rows = read_jsonl(path)
        return rows[: self.limit] if self.limit else rows

    @torch.no_grad()
    def mcqa_accuracy(self, model, records: list[dict[str, Any]], on_batch=None) -> float:
        """Letters are compared by the log-probability of their first token after the prompt.
        `on_batch(key)` is told which batch comes next (ResidentHFModel reuses its layers)."""
        hits = 0
        for start in range(0, len(records), self.batch_size):
            batch = records[start:start + self.batch_size]
            contexts = [self._context(mcqa_prompt(r)) for r in batch]
            enc = self.tok(contexts, return_tensors="pt", padding=True, add_special_tokens=False)
            if on_batch:
                on_batch(("mcqa", batch[0]["id"], len(batch)))
            logits = model(**enc, use_cache=False).logits[:, -1, :].float()
            for row, record in zip(logits, batch):
                letters = list(record["options"])
                ids = [self.tok.encode(L, add_special_tokens=False)[0] for L in letters]
                best = letters[int(torch.argmax(row[ids]))]
                hits += best == record["answer"]
        return hits / max(1, len(records))

    @torch.no_grad()
    def qa_loglik(self, model, records: list[dict[str, Any]], on_batch=None) -> float:
        total, count = 0.0, 0
        self.tok.padding_side = "right"
        try:
            for start in range(0, len(records), self.batch_size):
                batch = records[start:start + self.batch_size]
                ctx = [self.tok.encode(self._context(qa_prompt(r)), add_special_tokens=False) for r in batch]
                ans = [self.tok.encode(r["answer"], add_special_tokens=False) for r in batch]
                seqs = [c + a for c, a in zip(ctx, ans)]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), self.tok.pad_token_id)
                mask = torch.zeros_like(ids)
                for i, s in enumerate(seqs):
                    ids[i, :len(s)] = torch.tensor(s)
                    mask[i, :len(s)] = 1
                if on_batch:
                    on_batch(("qa", batch[0]["id"], len(batch)))
                logp = torch.log_softmax(
                    model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
                for i, (c, a) in enumerate(zip(ctx, ans)):
                    positions = torch.arange(len(c) - 1, len(c) + len(a) - 1)
                    total += logp[i, positions, torch.tensor(a)].sum().item()
                    count += len(a)
        finally:
            self.tok.padding_side = "left"
        return total / max(1, count)

    def score(self, model, dev_file: Path, task_type: str) -> float:
        records = self.records(dev_file)
        return (self.mcqa_accuracy if task_type == "mcqa" else self.qa_loglik)(model, records)


def load_model(folder: str | Path, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype),
                                                 use_safetensors=True)
    return model.eval()


class _ReusedLayer(torch.nn.Module):
    """A decoder layer that returns its output from the last pass over the same batch when
    nothing at or below it changed since: a candidate that differs in layer l recomputes
    layers l.. only."""

    def __init__(self, layer: torch.nn.Module, owner: "ResidentHFModel", index: int):
        super().__init__()
        self.layer, self.owner, self.index = layer, owner, index

    def forward(self, hidden_states, *args, **kwargs):
        owner = self.owner
        key = (owner.batch, self.index)
        stamp = tuple(owner.versions[: self.index + 2])
        hit = owner.outputs.get(key) if owner.batch is not None else None
        if hit is not None and hit[0] == stamp:
            owner.reused += 1
            return hit[1]
        out = self.layer(hidden_states, *args, **kwargs)
        owner.computed += 1
        if owner.batch is not None:
            owner.outputs[key] = (stamp, out)
        return out


class ResidentHFModel:
    """One loaded model whose parameters are overwritten in place per candidate: only the
    tensors that differ from what it holds now are copied (a one-layer candidate moves one
    layer), and the hidden states of the unchanged layers below the first changed one are
    reused per dev batch instead of recomputed. The CPU counterpart of the vLLM engine."""

    def __init__(self, folder: str | Path, dtype: str = "float32", reuse_layers: bool = True):
        self.model = load_model(folder, dtype)
        self.params = dict(self.model.state_dict())
        # name -> the tensor object last copied in (kept referenced, so identity is reliable)
        self.holding: dict[str, torch.Tensor] = {}
        self.copied = 0
        layers = self.model.model.layers
        self.versions = [0] * (len(layers) + 1)  # [embeddings, layer 0, layer 1, ...]
        self.outputs: dict[tuple, tuple] = {}
        self.batch = None
        self.reused = self.computed = 0
        if reuse_layers:
            for i in range(len(layers)):
                layers[i] = _ReusedLayer(layers[i], self, i)

    def set_batch(self, key) -> None:
        self.batch = key

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        from harness.merge.memory import layer_of

        with torch.no_grad():
            for name, tensor in tensors.items():
                if self.holding.get(name) is not tensor:
                    self.params[name].copy_(tensor)
                    self.holding[name] = tensor
                    self.copied += 1
                    layer = layer_of(name)
                    if layer is not None:
                        self.versions[layer + 1] += 1
                    elif "embed_tokens" in name:
                        self.versions[0] += 1
