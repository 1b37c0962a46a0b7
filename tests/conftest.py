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


TRAIN_ENV = Path(os.environ.get("HARNESS_TRAIN_ENV", "") or Path(sys.prefix).parent / "train")
needs_train_env = pytest.mark.skipif(not (TRAIN_ENV / "bin" / "llamafactory-cli").exists(),
                                     reason="train env not built")
# The hub-cache tiny models the tests build (few pre-training steps), by architecture.
TINY_TEST_REPOS = {"qwen2": "harness-tiny/qwen2-med-test", "llama": "harness-tiny/llama3-med-test"}


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory):
    """A hub cache holding a reduced harness-tiny model per architecture, built through
    harness/tiny_hub.py exactly as `harness fetch` builds the real ones (LLaMA-Factory
    pre-training, the real model's chat template), 20 pre-training steps. Yields the HF_HOME."""
    from harness import tiny_hub

    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.delenv("HF_HUB_CACHE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        for arch, repo in TINY_TEST_REPOS.items():
            base = next(r for r in tiny_hub.TINY_REPOS.values() if r.spec.architecture == arch)
            tiny_hub.build(repo, PROJECT, base.spec.model_copy(update={"pretrain_steps": 20}))
    return home


@pytest.fixture
def hub_env(tiny_hub, monkeypatch):
    """This test resolves hub ids from the tiny hub cache, offline."""
    monkeypatch.setenv("HF_HOME", str(tiny_hub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tiny_hub


def run_all(root: Path, data: dict):
    """Every stage of a recipe into a fresh run store under root, in a project folder that
    sees the checkout's tasks/ (and ../shared, for recipes that read the release samples);
    asserts nothing was cached before. Returns the stage context."""
    from harness.plan import STAGES, build_plan
    from harness.recipe import parse_recipe
    from harness.stages import Context, run_stage
    from harness.store import Store

    project = root / "project"
    project.mkdir(parents=True)
    (project / "tasks").symlink_to(PROJECT / "tasks", target_is_directory=True)
    (root / "shared").symlink_to(PROJECT.parent / "shared", target_is_directory=True)
    recipe = parse_recipe(data)
    ctx = Context(recipe, Store(root / "runs", recipe.name),
                  build_plan(recipe, PROJECT / "requirements"), project)
    for stage in STAGES:
        built = run_stage(ctx, stage)
        assert len(built) == len(ctx.plan[stage]), stage  # nothing was cached before
    return ctx
