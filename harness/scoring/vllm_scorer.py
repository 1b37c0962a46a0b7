"""Candidate scoring on ONE resident vLLM engine, weights pushed in place.

Only the tensors that differ from what the engine holds move: they are written to a tmpfs
safetensors file and the workers reload them (`reload_weights`, see harness/engine.py); a
candidate that differs in one layer moves that layer. MCQA is scored from the next-token
log-probabilities of the option letters (one forward pass per item, `allowed_token_ids` with
processed log-probs); QA by the mean log-likelihood of the reference answer (prompt log-probs).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.data.prompts import mcqa_prompt, qa_prompt
from harness.engine import _reload_from_files, cpu_engine_kwargs, on_gpu


class VLLMScorer:
    def __init__(self, base: str | Path, dtype: str = "float32", max_model_len: int = 2048,
                 apply_chat_template: bool = True, tensor_parallel_size: int = 1, seed: int = 0):
        from vllm import LLM

        extra = {} if on_gpu() else cpu_engine_kwargs()
        self.llm = LLM(model=str(base), dtype=dtype, max_model_len=max_model_len, seed=seed,
                       tensor_parallel_size=tensor_parallel_size,
                       logprobs_mode="processed_logprobs", **extra)
        self.tok = self.llm.get_tokenizer()
        self.chat = apply_chat_template and bool(getattr(self.tok, "chat_template", None))
        shm = Path("/dev/shm")
        self._dir = tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None)
        self.holding: dict[str, torch.Tensor] = {}
        self.moved = 0
        self.swap_seconds = 0.0

    def _context(self, text: str) -> str:
        if not self.chat:
            return text
        return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)

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

    def mcqa_accuracy(self, records: list[dict[str, Any]]) -> float:
        from vllm import SamplingParams

        prompts, params = [], []
        for r in records:
            ids = [self.tok.encode(L, add_special_tokens=False)[0] for L in r["options"]]
            prompts.append(self._context(mcqa_prompt(r)))
            params.append(SamplingParams(max_tokens=1, temperature=0, logprobs=len(ids),
                                         allowed_token_ids=ids))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        hits = 0
        for r, out, p in zip(records, outputs, params):
            logprobs = out.outputs[0].logprobs[0]
            letters = list(r["options"])
            ids = p.allowed_token_ids
            best = max(range(len(ids)), key=lambda i: logprobs[ids[i]].logprob
                       if ids[i] in logprobs else float("-inf"))
            hits += letters[best] == r["answer"]
        return hits / max(1, len(records))

    def qa_loglik(self, records: list[dict[str, Any]]) -> float:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, spans = [], []
        for r in records:
            ctx = self.tok.encode(self._context(qa_prompt(r)), add_special_tokens=False)
            ans = self.tok.encode(r["answer"], add_special_tokens=False)
            prompts.append(TokensPrompt(prompt_token_ids=ctx + ans))
            spans.append((len(ctx), ans))
        outputs = self.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0),
                                    use_tqdm=False)
        total, count = 0.0, 0
        for out, (start, ans) in zip(outputs, spans):
            for offset, token in enumerate(ans):
                total += out.prompt_logprobs[start + offset][token].logprob
            count += len(ans)
        return total / max(1, count)

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        finally:
            self._dir.cleanup()
