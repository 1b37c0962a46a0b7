"""The eval stage: every model of a recipe on its lm-eval tasks; one model is one unit.

Import and task set-up are paid once per process. On the vLLM backend a process starts one
engine and swaps every further model of the same architecture into it in place. lm-eval's request cache is
never used: it is not keyed by model, so a shared cache would hand one model's answers to another.
"""
from __future__ import annotations

import abc
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.executor import run_units
from harness.models import check_weights_folder, resolve_base
from harness.plan import Unit
from harness.stages import Context
from harness.store import content_key

log = logging.getLogger("harness")


def model_location(ctx: Context, unit: Unit) -> tuple[str, dict[str, Any]]:
    """The folder of the model to evaluate (a run-store artifact, or the base through the
    resolver) and its portable description for the results."""
    model = unit.inputs["model"]
    if model["stage"] == "external":
        base = resolve_base(ctx.store, model["ref"])
        return str(base.path), base.describe()
    if not ctx.store.has(model["stage"], model["key"]):
        raise HarnessError(f"eval: {unit.name}: model {model['stage']}/{model['key']} is not "
                           f"built; run `harness {model['stage']} --recipe {ctx.recipe.name}` first")
    folder = ctx.store.path(model["stage"], model["key"]) / "model"
    check_weights_folder(folder)
    return str(folder), {"kind": "store", "stage": model["stage"], "key": model["key"]}


def serve_data(ctx: Context, data: dict[str, str], root: Path) -> Path:
    """HARNESS_DATA_DIR for the tasks: one link per data key to its data-stage folder."""
    for name, key in data.items():
        if not ctx.store.has("data", key):
            raise HarnessError(f"eval: data {name} [{key}] is missing; run `harness data "
                               f"--recipe {ctx.recipe.name}` first")
        (root / name).symlink_to(ctx.store.path("data", key), target_is_directory=True)
    return root


class Backend(abc.ABC):
    """Hands out an lm-eval LM per model; subclasses keep what can be reused between models."""

    def __init__(self, ctx: Context):
        self.spec = ctx.recipe.eval
        self.base = ctx.recipe.base

    @abc.abstractmethod
    def lm_for(self, location: str):
        """The lm-eval LM that scores the model at `location`."""


class HFBackend(Backend):
    name = "hf"

    def lm_for(self, location: str):
        import torch
        from lm_eval.models.huggingface import HFLM

        from harness.devices import torch_device
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = getattr(torch, self.base.dtype)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, use_safetensors=True,
            trust_remote_code=self.base.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(
            location, trust_remote_code=self.base.trust_remote_code)
        device = torch_device()
        return HFLM(pretrained=model.to(device), tokenizer=tokenizer, device=device,
                    batch_size=self.spec.batch_size, max_length=self.spec.max_model_len)


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.lm = None
        self.engine_starts = 0
        self.swaps = 0

    def lm_for(self, location: str):
        from harness.evaluation.vllm_lm import SwappableVLLM

        if self.lm is not None and Path(location).is_dir() and self.lm.can_swap(location):
            self.lm.swap(location)
            self.swaps += 1
            return self.lm
        if self.lm is not None:
            log.info("eval: %s has another architecture; starting a new engine", location)
            self.lm.model.llm_engine.engine_core.shutdown()
        self.lm = SwappableVLLM(
            pretrained=location, dtype=self.base.dtype, batch_size=self.spec.batch_size,
            max_model_len=self.spec.max_model_len, seed=self.spec.seed,
            tensor_parallel_size=self.spec.tensor_parallel_size,
            trust_remote_code=self.base.trust_remote_code)
        self.engine_starts += 1
        return self.lm


BACKENDS = {"hf": HFBackend, "vllm": VLLMBackend}


def option_counts(data_dir: Path) -> dict[str, int]:
    """Options per MCQA item of each served dataset's test split (the most any item has), so
    the leaderboard can correct accuracy for chance from the eval files alone."""
    from harness.data.records import read_jsonl

    counts = {}
    for folder in sorted(data_dir.iterdir()):
        rows = read_jsonl(folder / "test.jsonl") if (folder / "test.jsonl").is_file() else []
        if rows and "options" in rows[0]:
            counts[folder.name] = max(len(r["options"]) for r in rows)
    return counts


def evaluate(lm, ctx: Context, task_manager) -> dict[str, Any]:
    from lm_eval import simple_evaluate

    spec = ctx.recipe.eval
    gen_kwargs = {"max_gen_toks": spec.max_gen_toks} if spec.max_gen_toks else None
    return simple_evaluate(
        model=lm, tasks=list(spec.tasks), task_manager=task_manager, limit=spec.limit,
        num_fewshot=0, apply_chat_template=spec.apply_chat_template,
        system_instruction=ctx.recipe.base.system_prompt if spec.apply_chat_template else None,
        gen_kwargs=gen_kwargs, log_samples=True, use_cache=None, bootstrap_iters=1000,
        random_seed=spec.seed, numpy_random_seed=spec.seed, torch_random_seed=spec.seed,
        fewshot_random_seed=spec.seed, verbosity="WARNING")


def add_lf_similarity(samples: dict[str, list[dict]], results: dict[str, Any]) -> None:
    """LLaMA-Factory's BLEU-4 / ROUGE-1/2/L of every open-QA generation (tasks scored by
    ROUGE-L), per sample and as the task's mean, beside lm-eval's own metrics."""
    from harness.evaluation import lf_similarity as lf

    for task, rows in samples.items():
        if not rows or not any(k in rows[0] for k in ("rougeL_char", "rougeL_word")):
            continue
        scores = lf.per_item([(lf.response(r), str(r.get("target") or "")) for r in rows])
        for row, item in zip(rows, scores):
            row.update({lf.column(k): v for k, v in item.items()})
        for name in lf.METRICS:
            col = lf.column(name)
            results.setdefault(task, {})[f"{col},none"] = sum(r[col] for r in rows) / len(rows)


SAMPLE_METRICS = ("acc", "rougeL_char", "rougeL_word", "lf_bleu4", "lf_rouge1", "lf_rouge2",
                  "lf_rougeL")


def write_results(folder: Path, out: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    samples = out.pop("samples", {}) or {}
    add_lf_similarity(samples, out.setdefault("results", {}))
    with open(folder / "samples.jsonl", "w", encoding="utf-8") as fh:
        for task, rows in sorted(samples.items()):
            for row in rows:
                fh.write(json.dumps({"task": task, "doc_id": row.get("doc_id"),
                                     "target": row.get("target"),
                                     "filtered_resps": row.get("filtered_resps"),
                                     **{k: row[k] for k in SAMPLE_METRICS if k in row}},
                                    ensure_ascii=False, default=str) + "\n")
    result = {"harness": meta, "results": out.get("results", {}), "groups": out.get("groups", {}),
              "n-samples": out.get("n-samples", {}), "versions": out.get("versions", {}),
              "higher_is_better": out.get("higher_is_better", {}),
              "lm_eval_config": {k: v for k, v in (out.get("config") or {}).items()
                                 if k not in ("model_args",)}}
    (folder / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False,
                                                    default=str), encoding="utf-8")
    return result


# Per process: the backend (a resident engine), the served data folder and the task manager,
# reused by every unit this process evaluates; released when the stage ends.
_RESOURCES: dict[str, tuple] = {}


def _resources(ctx: Context, unit: Unit) -> tuple:
    from lm_eval.tasks import TaskManager

    key = json.dumps([unit.inputs["backend"], unit.inputs["data"], str(ctx.project),
                      ctx.recipe.eval.model_dump(), ctx.recipe.base.model_dump()],
                     sort_keys=True, default=str)
    if key not in _RESOURCES:
        tmp = Path(tempfile.mkdtemp(prefix="harness-data-"))
        data_dir = serve_data(ctx, unit.inputs["data"], tmp)
        tasks = TaskManager(include_path=str(ctx.project / "tasks"), include_defaults=False)
        _RESOURCES[key] = (BACKENDS[unit.inputs["backend"]](ctx), data_dir,
                           option_counts(data_dir), tasks, tmp)
    return _RESOURCES[key]


def release() -> None:
    while _RESOURCES:
        backend, _, _, _, tmp = _RESOURCES.popitem()[1]
        if isinstance(backend, VLLMBackend):
            log.info("eval: vLLM engine starts %d, in-place swaps %d", backend.engine_starts,
                     backend.swaps)
            if backend.lm is not None:
                backend.lm.model.llm_engine.engine_core.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def evaluate_one(ctx: Context, unit: Unit) -> None:
    """One model on every task of the recipe: the executor's unit of work."""
    backend, data_dir, n_options, task_manager, _ = _resources(ctx, unit)
    os.environ["HARNESS_DATA_DIR"] = str(data_dir)
    spec = ctx.recipe.eval
    location, described = model_location(ctx, unit)
    out = evaluate(backend.lm_for(location), ctx, task_manager)
    meta = {"model": unit.inputs["model"], "model_location": described,
            "system_prompt": ctx.recipe.base.system_prompt,
            "unit": unit.name, "backend": backend.name, "tasks": list(spec.tasks),
            "split": spec.split, "limit": spec.limit, "num_fewshot": 0,
            "data": unit.inputs["data"], "n_options": n_options,
            "apply_chat_template": spec.apply_chat_template, "seed": spec.seed,
            "versions": unit.versions, "request_cache": None}
    details: dict[str, Any] = {}
    with ctx.store.build("eval", unit.key, unit.inputs, unit.versions, details) as folder:
        result = write_results(folder, out, meta)
        details["results"] = {t: {k: v for k, v in m.items() if isinstance(v, (int, float))}
                              for t, m in result["results"].items()}
        details["items"] = sum(int(n.get("effective", 0)) for n in result["n-samples"].values())
        # the numbers alone (no timings, no paths): equal hashes mean an identical evaluation
        details["numbers_sha256"] = content_key(details["results"])
    log.info("eval: %s [%s] %s", unit.name, unit.key, details["results"])


def build(ctx: Context, units: list[Unit]) -> None:
    try:
        run_units(ctx, "eval", units, evaluate_one)
    finally:
        release()
