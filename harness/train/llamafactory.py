"""LLaMA-Factory configs and runs: the YAML we write is the YAML a researcher can re-run.

LLaMA-Factory lives in the train env (it pins transformers <= 5.6.0), so it runs as a
subprocess: `llamafactory-cli train|export CONFIG.yaml`, with the recipe's overrides merged into
the YAML verbatim. No shell is involved; arguments are a list.
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from harness.envs import lf_env, train_env  # noqa: F401 - used here and by callers
from harness.errors import HarnessError
from harness.recipe import Finetuning

log = logging.getLogger("harness")


@functools.lru_cache(maxsize=1)
def known_templates() -> frozenset[str]:
    """LLaMA-Factory's chat template names, asked of the train env once per process."""
    code = "from llamafactory.data.template import TEMPLATES; print('\\n'.join(TEMPLATES))"
    proc = subprocess.run([str(train_env() / "bin" / "python"), "-c", code],
                          capture_output=True, text=True, env=lf_env(offline=True))
    if proc.returncode != 0:
        raise HarnessError(f"cannot list LLaMA-Factory templates: {proc.stderr.strip()[-300:]}")
    return frozenset(proc.stdout.split())


def common(model: str, template: str, seed: int, trust_remote_code: bool) -> dict[str, Any]:
    return {"model_name_or_path": model, "trust_remote_code": trust_remote_code,
            "template": template, "seed": seed, "data_seed": seed, "report_to": "none",
            "overwrite_output_dir": True, "save_strategy": "no", "logging_steps": 10,
            "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
            "overwrite_cache": True, "plot_loss": False}


def pretrain_config(model: str, dataset_dir: Path, output_dir: str, steps: int, lr: float,
                    batch: int, cutoff: int, seed: int) -> dict[str, Any]:
    """Pre-training from scratch (`train_from_scratch`: random init from the config)."""
    return {**common(model, "default", seed, False), "stage": "pt", "do_train": True,
            "train_from_scratch": True, "finetuning_type": "full", "dataset": "corpus",
            "dataset_dir": str(dataset_dir), "cutoff_len": cutoff, "packing": True,
            "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
            "learning_rate": lr, "max_steps": steps, "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.05, "output_dir": output_dir}


def model_source(model: str, revision: str | None) -> dict[str, Any]:
    """Where LLaMA-Factory loads the base from: a folder, or a hub id pinned to the commit the
    harness's resolver found in the hub cache (LLaMA-Factory runs offline, so it reads exactly
    that snapshot)."""
    return {"model_name_or_path": model, **({"model_revision": revision} if revision else {})}


def sft_config(model: str, dataset: str, dataset_dir: Path, template: str, ft: Finetuning,
               output_dir: str, seed: int, trust_remote_code: bool,
               overrides: dict[str, Any], system_prompt: str,
               revision: str | None = None) -> dict[str, Any]:
    # default_system: the recipe's system prompt replaces the template's own default, so the
    # specialists are trained on the text the scorer and the eval send
    config = {**common(model, template, seed, trust_remote_code), **model_source(model, revision),
              "default_system": system_prompt, "stage": "sft",
              "do_train": True, "finetuning_type": ft.type, "dataset": dataset,
              "dataset_dir": str(dataset_dir), "cutoff_len": ft.cutoff_len,
              "per_device_train_batch_size": ft.per_device_train_batch_size,
              "gradient_accumulation_steps": ft.gradient_accumulation_steps,
              "learning_rate": ft.learning_rate, "num_train_epochs": ft.num_train_epochs,
              "lr_scheduler_type": "cosine", "warmup_ratio": 0.03, "output_dir": output_dir}
    if ft.max_steps:
        config["max_steps"] = ft.max_steps
    if ft.type == "lora":
        config.update(lora_rank=ft.lora_rank, lora_alpha=ft.lora_alpha,
                      lora_dropout=ft.lora_dropout, lora_target="all")
    config.update(overrides)  # the recipe's LLaMA-Factory overrides, verbatim
    return config


def export_config(model: str, adapter: str, template: str, export_dir: str,
                  trust_remote_code: bool, revision: str | None = None) -> dict[str, Any]:
    # export_size (GB per shard) far above the model size: a shard limit near it has been seen
    # to export the unmerged base silently; the stage also checks the weights moved.
    return {**model_source(model, revision), "adapter_name_or_path": adapter, "template": template,
            "finetuning_type": "lora", "trust_remote_code": trust_remote_code,
            "export_dir": export_dir, "export_size": 50, "export_device": "cpu",
            "export_legacy_format": False}


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run(command: str, config_path: Path, log_path: Path, offline: bool,
        env: dict[str, str] | None = None) -> None:
    """`llamafactory-cli train|export CONFIG`, output teed to a log file in the artifact."""
    cli = train_env() / "bin" / "llamafactory-cli"
    log.info("llamafactory-cli %s %s", command, config_path)
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([str(cli), command, str(config_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=lf_env(offline, env))
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            out.write(line)
            tail = (tail + [line])[-30:]
            if "'loss'" in line or "train_runtime" in line:
                log.info("  %s", line.strip()[:200])
        code = proc.wait()
    if code != 0:
        raise HarnessError(f"llamafactory-cli {command} {config_path} failed (exit {code}); "
                           f"see {log_path}:\n{''.join(tail)[-2000:]}")


def train_losses(output_dir: Path) -> list[float]:
    path = Path(output_dir) / "trainer_log.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "loss" in r]


def train_samples(output_dir: Path) -> int | None:
    """Training examples processed (epochs x samples), from the trainer's all_results.json."""
    path = Path(output_dir) / "all_results.json"
    try:
        results = json.loads(path.read_text())
        return round(results["train_samples_per_second"] * results["train_runtime"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# What a published model folder holds: weights (safetensors only), config, tokenizer.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt",
               "added_tokens.json", "tokenizer.model")


def publish_model(src: Path, dst: Path, tokenizer_from: Path | None = None) -> Path:
    """A LLaMA-Factory output folder as a model folder: its safetensors and config, the
    tokenizer from `tokenizer_from` where given (LLaMA-Factory writes its own template into
    the tokenizer it saves; a model keeps the one it was built with)."""
    dst.mkdir(parents=True)
    weights = sorted(src.glob("*.safetensors")) + sorted(src.glob("*.safetensors.index.json"))
    if not any(p.suffix == ".safetensors" for p in weights):
        raise HarnessError(f"{src}: LLaMA-Factory wrote no safetensors weights")
    for path in weights:
        shutil.copy2(path, dst / path.name)
    for name in MODEL_FILES:
        own = name in ("config.json", "generation_config.json")  # always the trained model's
        source = (src if own or tokenizer_from is None else tokenizer_from) / name
        if source.exists():
            shutil.copy2(source, dst / name)
    return dst
