"""`score(candidate tensors, task) -> float` behind one small interface, on either backend.

Both keep ONE model resident and overwrite only the tensors that changed since the last
candidate; both score the same dev records with the same prompts.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch


class CandidateScorer:
    def __init__(self, backend: str, base: str | Path, dev: dict[str, tuple[list[dict], str]],
                 dtype: str, apply_chat_template: bool, batch_size: int = 32,
                 max_model_len: int = 2048, tensor_parallel_size: int = 1,
                 system_prompt: str | None = None, mode: str = "loglikelihood",
                 max_gen_toks: int = 256):
        self.backend = backend
        self.dev = dev
        self.mode, self.max_gen_toks = mode, max_gen_toks
        self.forward_seconds = 0.0
        self.calls = 0
        if backend == "vllm":
            from harness.scoring.vllm_scorer import VLLMScorer
            self.engine = VLLMScorer(base, dtype, max_model_len, apply_chat_template,
                                     tensor_parallel_size, system_prompt=system_prompt)
        else:
            from harness.scoring.hf import HFScorer, ResidentHFModel
            self.hf = HFScorer(base, batch_size=batch_size, apply_chat_template=apply_chat_template,
                               system_prompt=system_prompt)
            self.engine = ResidentHFModel(base, dtype)

    def score(self, tensors: dict[str, torch.Tensor], task: str) -> float:
        records, kind = self.dev[task]
        self.engine.load(tensors)
        start = time.perf_counter()
        if kind == "qa" and self.mode == "generate":
            value = (self.engine.qa_rouge(records, self.max_gen_toks) if self.backend == "vllm"
                     else self.hf.qa_rouge(self.engine.model, records, self.max_gen_toks,
                                           on_batch=self.engine.set_batch))
        elif self.backend == "vllm":
            value = (self.engine.mcqa_accuracy if kind == "mcqa" else self.engine.qa_loglik)(records)
        else:
            fn = self.hf.mcqa_accuracy if kind == "mcqa" else self.hf.qa_loglik
            value = fn(self.engine.model, records, on_batch=self.engine.set_batch)
        self.forward_seconds += time.perf_counter() - start
        self.calls += 1
        return value

    def stats(self) -> dict[str, Any]:
        moved = getattr(self.engine, "moved", getattr(self.engine, "copied", 0))
        stats = {"backend": self.backend, "scored": self.calls, "tensors_moved": moved,
                 "forward_seconds": round(self.forward_seconds, 3)}
        if self.backend == "hf":
            stats.update(layers_reused=self.engine.reused, layers_computed=self.engine.computed)
        return stats

    def close(self) -> None:
        if hasattr(self.engine, "close"):
            self.engine.close()
