"""Log-likelihood scoring with transformers (CPU hosts; the vLLM scorer is the GPU path).

MCQA: accuracy of the option whose choice (letter, or text for cloze records) has the highest
log-likelihood after the prompt, with the tasks' prompt and chat template (requests.py), so it
ranks models as the leaderboard would. QA: mean per-token log-likelihood of the reference
answer, or (`generate` mode) the ROUGE-L of its greedy answer. Deterministic, batched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.data.records import read_jsonl
from harness.scoring.requests import (Pair, Requests, accuracy, mean_rouge,
                                      mean_token_loglik)


class HFScorer:
    def __init__(self, tokenizer_dir: str | Path, batch_size: int = 32,
                 apply_chat_template: bool = True, limit: int | None = None,
                 system_prompt: str | None = None):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.requests = Requests(self.tok, apply_chat_template, system_prompt)
        self.batch_size = batch_size
        self.limit = limit

    def records(self, path: Path) -> list[dict[str, Any]]:
        rows = read_jsonl(path)
        return rows[: self.limit] if self.limit else rows

    @torch.no_grad()
    def logliks(self, model, pairs: list[Pair], on_batch=None) -> list[float]:
        """Summed log-likelihood of each pair's continuation. `on_batch(key)` is told which
        batch comes next, keyed by its exact token ids (ResidentHFModel reuses the layers
        below the first changed one for a batch it has seen)."""
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            seqs = [p.context + p.continuation for p in chunk]
            ids = torch.full((len(seqs), max(map(len, seqs))), self.tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            if on_batch:
                on_batch(tuple(map(tuple, seqs)))
            device = next(model.parameters()).device
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           use_cache=False).logits
            logp = torch.log_softmax(logits.float(), -1)
            for i, p in enumerate(chunk):
                positions = torch.arange(len(p.context) - 1, len(seqs[i]) - 1, device=device)
                tokens = torch.tensor(p.continuation, device=device)
                out.append(logp[i, positions, tokens].sum().item())
        return out

    def mcqa_accuracy(self, model, records: list[dict[str, Any]], on_batch=None) -> float:
        pairs = self.requests.mcqa(records)
        return accuracy(records, pairs, self.logliks(model, pairs, on_batch))

    def qa_loglik(self, model, records: list[dict[str, Any]], on_batch=None) -> float:
        pairs = self.requests.qa(records)
        return mean_token_loglik(pairs, self.logliks(model, pairs, on_batch))

    @torch.no_grad()
    def generations(self, model, contexts: list[list[int]], max_new_tokens: int) -> list[str]:
        """Greedy answers, batched with left padding, stopped at the QA tasks' stop tokens."""
        out = []
        device = next(model.parameters()).device
        stop = self.requests.stop_ids()
        for start in range(0, len(contexts), self.batch_size):
            chunk = contexts[start:start + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), self.tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for i, c in enumerate(chunk):
                ids[i, width - len(c):] = torch.tensor(c)
                mask[i, width - len(c):] = 1
            new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=self.tok.pad_token_id)
            out += self.tok.batch_decode(new[:, width:], skip_special_tokens=True)
        return out

    def qa_rouge(self, model, records: list[dict[str, Any]], max_new_tokens: int,
                 on_batch=None) -> float:
        if on_batch:
            on_batch(None)  # layer reuse keys on a fixed batch; a generation grows every step
        texts = self.generations(model, self.requests.qa_contexts(records), max_new_tokens)
        return mean_rouge(records, texts)

    def score(self, model, dev_file: Path, task_type: str) -> float:
        records = self.records(dev_file)
        return (self.mcqa_accuracy if task_type == "mcqa" else self.qa_loglik)(model, records)


def load_model(folder: str | Path, dtype: str = "float32", device: str | None = None):
    """The model in `dtype` on `device` (default: the GPU when there is one)."""
    from transformers import AutoModelForCausalLM

    from harness.devices import torch_device

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype),
                                                 use_safetensors=True)
    return model.to(device or torch_device()).eval()


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
                    self.params[name].copy_(tensor)  # host -> device when on the GPU
                    self.holding[name] = tensor
                    self.copied += 1
                    layer = layer_of(name)
                    if layer is not None:
                        self.versions[layer + 1] += 1
                    elif "embed_tokens" in name:
                        self.versions[0] += 1
