"""The train env (LLaMA-Factory's, beside the eval env this package runs in): where it is and
the environment its subprocesses get. Shared by the stages that start it (training, the eval
stage's LLaMA-Factory metrics), so neither reaches into the other."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from harness.errors import HarnessError


def train_env() -> Path:
    """The train env: HARNESS_TRAIN_ENV, else the sibling of the eval env we run in."""
    env = Path(os.environ.get("HARNESS_TRAIN_ENV") or Path(sys.prefix).parent / "train")
    if not (env / "bin" / "llamafactory-cli").exists():
        raise HarnessError(f"{env}: no llamafactory-cli in the train env; run `make setup` "
                           "(or set HARNESS_TRAIN_ENV to the env that has LLaMA-Factory)")
    return env


def lf_env(offline: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ for a train-env subprocess: no version check, no telemetry, unbuffered."""
    env = dict(os.environ)
    env.update({"DISABLE_VERSION_CHECK": "1", "TOKENIZERS_PARALLELISM": "false",
                "WANDB_DISABLED": "true", "PYTHONUNBUFFERED": "1"})
    if offline:
        env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra or {})
    return env
