import os
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


@pytest.fixture
def project() -> Path:
    return PROJECT


@pytest.fixture
def harness_bin() -> list[str]:
    """The console script of the env the tests run in (installed by `make setup`)."""
    script = Path(sys.executable).parent / "harness"
    return [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    runs = tmp_path / "runs"
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(runs))
    # a test's leaderboard never replaces the published leaderboard/<recipe>/
    monkeypatch.setenv("HARNESS_LEADERBOARD_DIR", str(tmp_path / "leaderboard"))
    return runs


def env_with(**extra) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env
