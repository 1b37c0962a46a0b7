"""The envs `make setup` built: the right torch builds, and the smoke import catches traps."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
TRAIN_PYTHON = Path(sys.prefix).parent / "train" / "bin" / "python"
in_eval_env = Path(sys.prefix).name == "eval"


@pytest.mark.skipif(not in_eval_env, reason="run through `make test` (the eval env)")
def test_eval_env_has_cpu_torch_and_no_media_packages():
    import torch
    assert torch.__version__ == "2.13.0+cpu"
    for name in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None, name


@pytest.mark.skipif(not TRAIN_PYTHON.exists(), reason="train env not built")
def test_train_env_smoke_import_passes():
    proc = subprocess.run([str(TRAIN_PYTHON), "scripts/smoke_import.py", "train"],
                          capture_output=True, text=True, cwd=PROJECT)
    assert proc.returncode == 0, proc.stderr
    assert "torch 2.11.0" in proc.stdout and "transformers 5.6.0" in proc.stdout


def test_smoke_import_catches_a_broken_torchvision(tmp_path):
    """A stand-in torchvision that fails the way PyPI's does beside torch 2.13.0+cpu."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "scripts/smoke_import.py", "eval"],
                          capture_output=True, text=True, cwd=PROJECT, env=env)
    assert proc.returncode == 1
    assert "torchvision: RuntimeError: operator torchvision::nms does not exist" in proc.stderr
