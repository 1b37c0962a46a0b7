"""Hi-Merging candidates scored by several processes at once, each with ONE resident scorer.

The search hands over every candidate a step will ask for (HiMerging.prefetch); the batch is
split across `executor.workers` scoring processes: a local process pool, or Ray actors with
`num_gpus` each. A process builds candidates from their specs itself (the specialists are read
from the run store), pushes them into its resident engine in place, and returns the scores.
A chunk that fails is sent once more (to a fresh process); failing again ends the search.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.executor import _error, _init_worker, kind, local_pool, ray_init

log = logging.getLogger("harness")


@dataclass(frozen=True)
class ScorerSetup:
    """What a scoring process needs to rebuild the search's candidates and score them."""
    backend: str
    base: str
    models: dict[str, str]             # name -> specialist folder
    dev: dict[str, tuple[str, str]]    # task -> (dev jsonl, kind)
    limit: int | None
    dtype: str
    apply_chat_template: bool
    batch_size: int
    max_model_len: int
    tensor_parallel_size: int
    system_prompt: str | None = None
    mode: str = "loglikelihood"        # QA dev score: reference log-likelihood or ROUGE-L
    max_gen_toks: int = 256
    reconcile_vocabulary: bool = False  # fine-tunes' vocabularies put onto the base's ids

    def scorer(self):
        """The resident scorer (its engine holds the base until candidates are pushed in)."""
        from harness.data.records import read_jsonl
        from harness.scoring.candidates import CandidateScorer

        dev = {t: (read_jsonl(Path(p))[: self.limit] if self.limit else read_jsonl(Path(p)), k)
               for t, (p, k) in self.dev.items()}
        return CandidateScorer(self.backend, self.base, dev, self.dtype,
                               self.apply_chat_template, self.batch_size, self.max_model_len,
                               self.tensor_parallel_size, self.system_prompt, self.mode,
                               self.max_gen_toks)


def _key(value: dict) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# Per process: ONE resident scorer (its engine keeps the base's architecture whatever the
# specialists are, so every merge unit and search of a stage shares it: one engine start) and
# the in-memory merge engine of the specialists last asked for. A scorer for another setup
# replaces the old one, which is closed first: two vLLM engines never hold one GPU at once.
_SCORER: dict[str, Any] = {}
_MERGER: dict[str, Any] = {}


def resident_scorer(setup: ScorerSetup):
    key = _key({k: v for k, v in setup.__dict__.items()
                if k not in ("models", "reconcile_vocabulary")})  # the base's engine either way
    if key not in _SCORER:
        close_residents()
        _SCORER[key] = setup.scorer()
    return _SCORER[key]


def resident_candidates(setup: ScorerSetup):
    """Candidates over the in-memory merge engine (base + this setup's specialists)."""
    import torch

    from harness.merge.hi_merging import Candidates
    from harness.merge.memory import InMemoryMerger

    key = _key({"base": setup.base, "models": setup.models, "dtype": setup.dtype,
                "reconcile_vocabulary": setup.reconcile_vocabulary})
    if key not in _MERGER:
        _MERGER.clear()  # free the last specialists' tensors before loading the next
        _MERGER[key] = Candidates(InMemoryMerger(
            Path(setup.base), {n: Path(p) for n, p in setup.models.items()},
            getattr(torch, setup.dtype), setup.reconcile_vocabulary))
    return _MERGER[key]


def close_residents() -> None:
    """Close the resident scorer and drop the merge engine (the end of a stage)."""
    _MERGER.clear()
    while _SCORER:
        _SCORER.popitem()[1].close()


class _Resident:
    def __init__(self, setup: ScorerSetup):
        self.scorer = resident_scorer(setup)  # first: a new scorer drops the old merge engine
        self.candidates = resident_candidates(setup)

    def score(self, items: list[tuple[dict, str]]) -> list[float]:
        return [self.scorer.score(self.candidates.build(spec), task) for spec, task in items]


def score_chunk(setup: ScorerSetup, items: list[tuple[dict, str]]) -> list[float]:
    return _Resident(setup).score(items)


class ScorerActor:
    """Ray actor: one resident scorer on its own GPU(s)."""

    def __init__(self, setup: ScorerSetup, level: int, threads: int | None):
        _init_worker(level, threads)
        self.resident = _Resident(setup)

    def score(self, items: list[tuple[dict, str]]) -> list[float]:
        return self.resident.score(items)


class ScorerPool:
    """`pool(items) -> scores`, the batch scorer HiMerging.score_batch takes."""

    def __init__(self, spec, setup: ScorerSetup):
        self.spec, self.setup = spec, setup
        self.n = spec.workers
        self.on_ray = kind(spec) == "ray"
        self.batches = self.scored = 0
        if self.on_ray:
            ray_init(spec)
            self._actors = [self._actor() for _ in range(self.n)]
        else:
            self._pool = local_pool(spec)

    def _actor(self):
        import ray

        actor = ray.remote(num_gpus=self.spec.num_gpus, num_cpus=self.spec.cpus_per_unit or 1)(
            ScorerActor)
        return actor.remote(self.setup, log.getEffectiveLevel(), self.spec.cpus_per_unit)

    def _submit(self, i: int, chunk: list) -> Any:
        if self.on_ray:
            return self._actors[i].score.remote(chunk)
        return self._pool.submit(score_chunk, self.setup, chunk)

    def _result(self, handle: Any) -> list[float]:
        if isinstance(handle, Future):
            return handle.result()
        import ray
        return ray.get(handle)

    def _replace(self, i: int) -> None:
        """A fresh process for slot i after a failure (a dead actor, a broken pool)."""
        if self.on_ray:
            import ray
            ray.kill(self._actors[i])
            self._actors[i] = self._actor()
        else:
            self._pool.shutdown(cancel_futures=True)
            self._pool = local_pool(self.spec)

    def __call__(self, items: list[tuple[dict, str]]) -> list[float]:
        chunks = [items[i::self.n] for i in range(self.n)]  # interleaved: similar costs
        handles = {i: self._submit(i, c) for i, c in enumerate(chunks) if c}
        scores: dict[int, list[float]] = {}
        for i, handle in handles.items():
            try:
                scores[i] = self._result(handle)
            except Exception as exc:  # noqa: BLE001 - retried once, then raised
                log.warning("hi_merging: scoring chunk %d failed (%s); retrying", i, _error(exc))
                self._replace(i)
                try:
                    scores[i] = self._result(self._submit(i, chunks[i]))
                except Exception as again:  # noqa: BLE001
                    raise HarnessError(f"hi_merging: a batch of {len(chunks[i])} candidates "
                                       f"failed twice: {_error(again)}") from again
        out: list[float] = [0.0] * len(items)
        for i, values in scores.items():
            out[i::self.n] = values
        self.batches += 1
        self.scored += len(items)
        return out

    def stats(self) -> dict[str, Any]:
        return {"backend": self.setup.backend, "processes": self.n,
                "executor": "ray" if self.on_ray else "local", "batches": self.batches,
                "scored": self.scored}

    def close(self) -> None:
        if self.on_ray:
            import ray
            for actor in self._actors:
                ray.kill(actor)
        else:
            self._pool.shutdown()
