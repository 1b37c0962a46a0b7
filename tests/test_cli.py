import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.errors import HarnessError
from harness.plan import STAGES, build_plan
from harness.recipe import load_recipe, parse_recipe
from harness.stages import Context, run_stage
from harness.store import Store


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], **kw)


def test_validate_all_shipped_recipes(harness_bin, project):
    recipes = sorted(str(p) for p in (project / "recipes").glob("*.yaml"))
    proc = run(harness_bin + ["validate", *recipes])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok: ") == len(recipes) >= 5


def test_validate_misspelled_key_fails_naming_it(harness_bin, project, tmp_path):
    data = yaml.safe_load((project / "recipes" / "tiny_en_zh.yaml").read_text())
    data["eval"]["taks"] = data["eval"].pop("tasks")
    path = tmp_path / "tiny_en_zh.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run(harness_bin + ["validate", str(path)])
    assert proc.returncode == 1
    assert "eval.taks: unknown key 'taks'; did you mean 'tasks'?" in proc.stderr


def test_dry_run_prints_every_unit_with_its_key(harness_bin, project, runs_dir):
    proc = run(harness_bin + ["run", "--recipe", "tiny_en_zh", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    recipe = load_recipe("tiny_en_zh", project / "recipes")
    plan = build_plan(recipe, project / "requirements")
    units = [u for s in STAGES for u in plan[s]]
    assert len(units) > 20
    for unit in units:
        assert re.search(rf"^{unit.stage}\s+{unit.key}\s+to do\s.*\s{re.escape(unit.name)}$",
                         proc.stdout, re.M), unit
    assert f"{len(units)} units, 0 cached, {len(units)} to do" in proc.stdout
    assert not runs_dir.exists()  # a dry run writes nothing


def test_seeds_override_multiplies_seeded_units(harness_bin, runs_dir):
    one = run(harness_bin + ["specialists", "--recipe", "tiny_en_zh", "--dry-run"]).stdout
    three = run(harness_bin + ["specialists", "--recipe", "tiny_en_zh", "--dry-run",
                               "--seeds", "0,1,2"]).stdout
    assert one.count("specialist en_mcqa") == 1 and three.count("specialist en_mcqa") == 3
    assert three.count("base (tiny") == 1


@pytest.mark.parametrize("name", ["../tiny_en_zh", "recipes/tiny_en_zh", "/etc/passwd"])
def test_recipe_path_names_rejected(harness_bin, name):
    proc = run(harness_bin + ["run", "--recipe", name, "--dry-run"])
    assert proc.returncode == 2
    assert "is not allowed" in proc.stderr


def test_cached_units_are_skipped_and_reported(project, tmp_path, caplog, monkeypatch):
    """The runner with a stand-in builder (a unit test of our own skip logic, not a stage)."""
    import harness.data.stage

    recipe = load_recipe("tiny_en_zh", project / "recipes")
    ctx = Context(recipe, Store(tmp_path, recipe.name),
                  build_plan(recipe, project / "requirements"), project)
    built = []

    def builder(ctx, units):
        for unit in units:
            with ctx.store.build("data", unit.key, unit.inputs, unit.versions) as tmp:
                (tmp / "done").write_text(unit.name)
            built.append(unit.key)

    monkeypatch.setattr(harness.data.stage, "build", builder)
    first = run_stage(ctx, "data")
    assert [u.key for u in first] == built == [u.key for u in ctx.plan["data"]]
    with caplog.at_level(logging.INFO, logger="harness"):
        second = run_stage(ctx, "data")
    assert second == [] and len(built) == len(ctx.plan["data"])
    for unit in ctx.plan["data"]:
        assert f"skipped (cached) {unit.name} [{unit.key}]" in caplog.text


def test_fetch_offline_names_what_is_missing_in_one_line(harness_bin, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    proc = run(harness_bin + ["fetch", "--recipe", "qwen2_en_zh"], env=env)
    assert proc.returncode == 2
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert "base.model 'Qwen/Qwen2-7B-Instruct': not in the hub cache" in line
    assert "HF_HUB_OFFLINE is set; run `harness fetch" in line and "Traceback" not in proc.stderr
    proc = run(harness_bin + ["fetch", "--recipe", "tiny_en_zh"], env=env)
    assert proc.returncode == 0 and "nothing to fetch" in proc.stderr


def test_fetch_reports_a_cached_hub_model(harness_bin, hub_env, tmp_path, project):
    from harness import hub

    from conftest import TINY_TEST_REPOS

    data = yaml.safe_load((project / "recipes" / "mini_qwen2_en_zh.yaml").read_text())
    data["base"]["model"] = TINY_TEST_REPOS["qwen2"]
    checkout = tmp_path / "project"  # beside it ../shared, as in a real checkout
    (checkout / "recipes").mkdir(parents=True)
    for name in ("tasks", "requirements"):
        (checkout / name).symlink_to(project / name)
    (checkout / "recipes" / "mini_qwen2_en_zh.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "shared").symlink_to(project.parent / "shared")
    env = {**os.environ, "HARNESS_PROJECT": str(checkout)}
    proc = run(harness_bin + ["fetch", "--recipe", "mini_qwen2_en_zh"], env=env)
    assert proc.returncode == 0, proc.stderr
    commit = hub.resolve(TINY_TEST_REPOS["qwen2"]).revision
    assert proc.stdout.strip() == f"{TINY_TEST_REPOS['qwen2']}@{commit}"
    assert "cached" in proc.stderr


def test_reproduce_refuses_bad_input_in_one_line(harness_bin, tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("models: []\n")
    proc = run(harness_bin + ["reproduce", str(bad), str(tmp_path / "out")])
    assert proc.returncode == 2 and "not a mergekit config (no merge_method)" in proc.stderr
    config = tmp_path / "ties.yaml"
    config.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": "runs/r/specialists/k/model",
                                      "models": [{"model": "runs/r/specialists/j/model"}]}))
    proc = run(harness_bin + ["reproduce", str(config), str(tmp_path / "out")],
               env={**os.environ, "HARNESS_RUNS_DIR": str(tmp_path / "runs")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'runs'}/r/specialists/k/model: model folder not found" in proc.stderr


def test_check_names_each_failing_check_in_one_line(harness_bin, tmp_path):
    """On this host (no GPU, no hub) the paper recipe fails its checks, one line each with
    its fix, exit 1, no traceback; the tiny recipe passes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HARNESS_RUNS_DIR": str(tmp_path / "runs")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("RAY_ADDRESS", None)
    proc = run(harness_bin + ["check", "--recipe", "qwen2_en_zh"], env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert lines[-1] == f"check qwen2_en_zh: {len(failed)} check(s) failed"
    assert any(l.startswith("FAIL  gpu: the recipe asks for 1 GPU(s)") and "0 CUDA GPU(s)" in l
               for l in failed)
    hub_lines = [l for l in failed if l.startswith("FAIL  hub ")]
    assert {l.split(":")[0] for l in hub_lines} == {
        "FAIL  hub base.model", "FAIL  hub datasets.medqa.path", "FAIL  hub datasets.medmcqa.path",
        "FAIL  hub datasets.cmexam.path", "FAIL  hub datasets.cmb.path"}
    assert all("harness fetch" in l for l in hub_lines)
    assert all(l.startswith(("ok", "FAIL", "skip")) for l in lines[:-1])
    proc = run(harness_bin + ["check", "--recipe", "tiny_en_zh"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "check tiny_en_zh: every check passed"
    assert not any(l.startswith("FAIL") for l in proc.stdout.splitlines())


def test_dry_run_prints_disk_ram_and_gpu_per_unit(harness_bin, runs_dir):
    """The plan's needs: per unit, then the peaks; the paper recipe's base size comes from its
    name offline (7B in bfloat16), every grid point scored in memory, one model per method."""
    proc = run(harness_bin + ["run", "--recipe", "qwen2_en_zh", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "base: 7000000000 parameters (hub id name), 13.04 GiB in bfloat16" in out
    merges = [l for l in out.splitlines() if l.startswith("merge ")]
    assert len(merges) == 8 and all(l.split()[4] == "13.04" for l in merges)  # one model each
    peak = next(l for l in out.splitlines() if l.startswith("peak disk"))
    # base export + 3 fine-tunes + 8 merges, every unit kept: 11 models of 13.04 GiB
    assert peak.startswith("peak disk (run store, every unit kept): 143.42 GiB")
    assert "peak GPU memory per GPU: 17.95 GiB" in out and "/dev/shm for the vLLM scorer: 13.04" in out
    assert "GPU-hours from stated defaults" in out


def test_recipes_naming_one_run_store_share_its_units(project, tmp_path, monkeypatch):
    """A recipe with `run_store: tiny_en_zh` finds the units the default recipe built (same
    content keys, same folder) and builds only what it adds; its leaderboard stays its own."""
    import argparse

    import harness.data.stage
    from harness import cli

    checkout = tmp_path / "checkout"
    (checkout / "recipes").mkdir(parents=True)
    (checkout / "requirements").symlink_to(project / "requirements")
    (checkout / "tasks").symlink_to(project / "tasks")
    data = yaml.safe_load((project / "recipes" / "tiny_en_zh.yaml").read_text())
    (checkout / "recipes" / "tiny_en_zh.yaml").write_text(yaml.safe_dump(data))
    other = {**data, "name": "tiny_other", "run_store": "tiny_en_zh"}
    (checkout / "recipes" / "tiny_other.yaml").write_text(yaml.safe_dump(other))
    monkeypatch.setenv("HARNESS_PROJECT", str(checkout))
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path / "runs"))

    def builder(ctx, units):
        for unit in units:
            with ctx.store.build("data", unit.key, unit.inputs, unit.versions) as tmp:
                (tmp / "done").write_text(unit.name)

    monkeypatch.setattr(harness.data.stage, "build", builder)
    first = cli._context(argparse.Namespace(recipe="tiny_en_zh", seeds=None))
    assert len(run_stage(first, "data")) == len(first.plan["data"])
    second = cli._context(argparse.Namespace(recipe="tiny_other", seeds=None))
    assert second.store.stage_dir("data") == first.store.stage_dir("data")
    assert run_stage(second, "data") == []  # every unit found in the shared store
    with pytest.raises(HarnessError, match="run_store '../elsewhere' must be"):
        parse_recipe({**data, "run_store": "../elsewhere"})
