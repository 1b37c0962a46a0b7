"""The GPU Dockerfile: hadolint-clean, and its envs come from the Makefile's lock files (the
image runs the Makefile's env target; it installs no Python package of its own)."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import PROJECT

DOCKERFILE = PROJECT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_hadolint_clean():
    hadolint = Path(os.environ.get("HARNESS_LINT_ENV", PROJECT / ".venv" / "lint")) / "bin" / "hadolint"
    if not hadolint.exists():
        pytest.skip(f"{hadolint} not installed: `make lint-env` (make test does it)")
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def make_dry_run(target: str, **variables: str) -> str:
    args = ["make", "-n", "-B", target] + [f"{k}={v}" for k, v in variables.items()]
    return subprocess.run(args, cwd=PROJECT, capture_output=True, text=True, check=True).stdout


def test_dockerfile_installs_from_the_makefiles_lock_files():
    ins = instructions()
    env = " ".join(args for word, args in ins if word == "ENV")
    settings = dict(re.findall(r"(\w+)=(\S+)", env))
    runs = [args for word, args in ins if word == "RUN"]
    # the envs are built by the Makefile's target, with the GPU variant, and nothing else
    # installs Python packages (a second list of packages would drift from the locks)
    assert any(re.search(r"\bmake envs\b", r) for r in runs), runs
    assert not any(re.search(r"\bpip3? install\b|\buv pip\b|\bconda install\b", r) for r in runs)
    assert settings["EVAL_VARIANT"] == "gpu"
    copied = " ".join(args for word, args in ins if word == "COPY")
    for path in ("Makefile", "requirements/", "scripts/"):
        assert path in copied
    # what `make envs` runs in the image: the lock files the Makefile names for a GPU host
    plan = make_dry_run("envs", HARNESS_ENV_DIR=settings["HARNESS_ENV_DIR"],
                        EVAL_VARIANT=settings["EVAL_VARIANT"])
    builds = re.findall(r"build_env\.sh (\w+) (\S+) (\S+)", plan)
    assert builds == [("train", "/opt/envs/train", "requirements/train.lock"),
                      ("eval", "/opt/envs/eval", "requirements/eval-gpu.lock")], plan
    for _, _, lock in builds:
        assert (PROJECT / lock).is_file()
    # and on a CPU host `make setup` builds the same train lock and the CPU eval lock
    host = re.findall(r"build_env\.sh (\w+) \S+ (\S+)", make_dry_run("envs"))
    assert host == [("train", "requirements/train.lock"), ("eval", "requirements/eval-cpu.lock")]


def test_image_runs_make_with_the_data_volume():
    ins = instructions()
    settings = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for w, a in ins if w == "ENV")))
    assert ins[-1] == ("CMD", '["make"]')
    assert settings["HF_HOME"].startswith("/data") and settings["HARNESS_RUNS_DIR"].startswith("/data")
    assert any(w == "VOLUME" and "/data" in a for w, a in ins)
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_documented_docker_run_lines_give_the_scorer_shared_memory():
    """The vLLM scorer stages swapped weights in /dev/shm, 64 MB in a default `docker run`:
    every documented run line gives it the host's (--ipc=host) or a size (--shm-size)."""
    lines = [line for path in (PROJECT / "README.md", DOCKERFILE)
             for line in path.read_text().splitlines() if "docker run" in line and "--gpus" in line]
    assert lines
    for line in lines:
        assert "--ipc=host" in line or "--shm-size" in line, line


def test_check_catches_a_small_dev_shm(monkeypatch):
    """`harness check` fails the shm line, naming the docker flag, when /dev/shm is Docker's
    default 64 MB and the vLLM scorer swaps a 7B model's weights."""
    from harness import check
    from harness.recipe import load_recipe
    from harness.plan import build_plan
    from harness.stages import Context
    from harness.store import Store

    recipe = load_recipe("qwen2_en_zh", PROJECT / "recipes")
    ctx = Context(recipe, Store(PROJECT / "runs", recipe.name),
                  build_plan(recipe, PROJECT / "requirements"), PROJECT)
    needs = check.resources.plan_needs(ctx)
    assert needs["shm"] > 10 * 2 ** 30  # a whole 7B candidate in bf16
    monkeypatch.setattr(check, "shm_free", lambda: 64 * 2 ** 20)
    line = check.check_shm(ctx, needs)
    assert line.status == check.FAIL and "--ipc=host" in line.text and "/dev/shm" in line.text
    monkeypatch.setattr(check, "shm_free", lambda: 64 * 2 ** 30)
    assert check.check_shm(ctx, needs).status == check.OK
