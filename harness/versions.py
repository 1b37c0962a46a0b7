"""Pinned package versions, read from the lock files (not from the running interpreter).

Stages run in two envs (train: LLaMA-Factory; eval: everything else), so the versions that
belong in a content key come from the lock the stage's env was built from.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from harness.errors import HarnessError

_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def eval_variant() -> str:
    variant = os.environ.get("HARNESS_EVAL_VARIANT", "cpu")
    if variant not in ("cpu", "gpu"):
        raise HarnessError(f"HARNESS_EVAL_VARIANT={variant!r}: use 'cpu' or 'gpu'")
    return variant


def lock_path(env: str, requirements_dir: Path) -> Path:
    name = "train.lock" if env == "train" else f"eval-{eval_variant()}.lock"
    return Path(requirements_dir) / name


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=None)
def read_lock(path: Path) -> dict[str, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        raise HarnessError(f"{path}: lock file missing; run `make lock` or restore it from git") from None
    pins = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def stage_versions(stage: str, requirements_dir: Path) -> dict[str, str]:
    """The pinned versions of the packages that shape a stage's output (harness/stagedefs.py)."""
    from harness.stagedefs import STAGES

    defn = STAGES[stage]
    pins = read_lock(lock_path(defn.env, requirements_dir))
    return {p: pins[normalize(p)] for p in defn.packages if normalize(p) in pins}
