"""What the task folder holds: which data each task reads, and a hash of the task config."""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import yaml

from harness.data import prompts
from harness.errors import HarnessError


class _TaskLoader(yaml.SafeLoader):
    """SafeLoader that reads lm-eval's `!function module.name` tags as plain strings."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@lru_cache(maxsize=None)
def task_configs(tasks_dir: Path) -> dict[str, dict]:
    configs = {}
    for path in sorted(Path(tasks_dir).glob("*.yaml")):
        loader = _TaskLoader(path.read_text(encoding="utf-8"))
        try:
            config = loader.get_single_data()
        finally:
            loader.dispose()
        name = config["group"] if "group" in config else config["task"]
        configs[name] = config
    return configs


def resolve_backend(backend: str) -> str:
    """`auto`: vLLM where a GPU is visible, the hf backend on CPU hosts."""
    if backend != "auto":
        return backend
    return "vllm" if Path("/dev/nvidia0").exists() or os.environ.get("CUDA_VISIBLE_DEVICES") else "hf"


def data_key(source: str, language: str, task_type: str) -> str:
    """The folder name under HARNESS_DATA_DIR that a dataset is served as."""
    return f"synthetic_{task_type}_{language}" if source == "synthetic" else source


def task_data(tasks_dir: Path, task: str) -> list[str]:
    """The data keys a task (or group) reads."""
    configs = task_configs(Path(tasks_dir))
    if task not in configs:
        raise HarnessError(f"eval.tasks: unknown task {task!r}; tasks in {tasks_dir}: "
                           f"{', '.join(sorted(configs))}")
    config = configs[task]
    if "group" in config:
        return sorted({d for t in config["task"] for d in task_data(tasks_dir, t)})
    return [config["dataset_kwargs"]["data"]]


def tasks_hash(tasks_dir: Path) -> str:
    """Every file of the task folder, and the prompt module its helpers import: a changed
    prompt or metric re-runs the evaluations."""
    digest = hashlib.sha256()
    files = [p for p in sorted(Path(tasks_dir).iterdir()) if p.is_file() and p.suffix != ".md"]
    for path in files + [Path(prompts.__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
