import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.plan import build_plan
from harness.recipe import load_recipe, parse_recipe
from harness.store import Store, content_key


def test_same_inputs_same_key_and_order_does_not_matter():
    a = {"method": "ties", "params": {"density": 0.5, "weight": 1.0}, "seed": 0}
    b = {"seed": 0, "params": {"weight": 1.0, "density": 0.5}, "method": "ties"}
    assert content_key(a) == content_key(b)
    assert len(content_key(a)) == 16


def test_changed_input_new_key():
    a = {"method": "ties", "params": {"density": 0.5}}
    assert content_key(a) != content_key({"method": "ties", "params": {"density": 0.7}})
    assert content_key(a) != content_key({"method": "dare_ties", "params": {"density": 0.5}})


def _plan(project, **changes):
    recipe = load_recipe("tiny_en_zh", project / "recipes")
    data = recipe.model_dump()
    for path, value in changes.items():
        node = data
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    recipe = parse_recipe(data)
    return {u.name: u.key for units in build_plan(recipe, project / "requirements").values()
            for u in units}


def test_plan_is_deterministic(project):
    assert _plan(project) == _plan(project)


def test_one_merge_parameter_changes_exactly_that_merge_and_its_eval(project):
    before = _plan(project)
    after = _plan(project, **{"merges.2.grid": {"density": [0.3, 0.5, 0.75], "weight": [1.0]}})
    changed = {n for n in before if before[n] != after.get(n)}
    # one unit holds a method's whole grid (scored in memory, the best point written)
    assert changed == {"ties [grid of 3] seed=0", "eval ties [grid of 3] seed=0",
                       "leaderboard tiny_en_zh"}


def test_specialist_data_change_retrains_only_it_and_downstream(project):
    before = _plan(project)
    after = _plan(project, **{"datasets.synth_mcqa_zh.train_size": 5000})
    changed = {n for n in before if before[n] != after.get(n)}
    assert "specialist en_mcqa seed=0" not in changed
    assert "specialist zh_mcqa seed=0" in changed and "dataset synth_mcqa_zh" in changed
    assert "dataset synth_mcqa_en" not in changed


def test_seeds_share_seed_independent_units(project):
    one = _plan(project)
    three = _plan(project, seeds=[0, 1, 2])
    assert three["dataset synth_mcqa_en"] == one["dataset synth_mcqa_en"]
    assert three["base (tiny, pre-trained here)"] == one["base (tiny, pre-trained here)"]
    assert three["specialist en_mcqa seed=0"] == one["specialist en_mcqa seed=0"]
    assert three["specialist en_mcqa seed=1"] != three["specialist en_mcqa seed=0"]


def test_pinned_versions_are_part_of_the_key(project):
    recipe = load_recipe("tiny_en_zh", project / "recipes")
    plan = build_plan(recipe, project / "requirements")
    spec = plan["specialists"][1]
    assert "llamafactory" in spec.versions and "transformers" in spec.versions
    assert "mergekit" in plan["merge"][0].versions


def test_build_publishes_complete_artifact_with_manifest(tmp_path):
    store = Store(tmp_path, "r")
    key = content_key({"x": 1})
    assert not store.has("merge", key)
    with store.build("merge", key, {"x": 1}, {"mergekit": "0.1.5"}) as tmp:
        (tmp / "model.safetensors").write_bytes(b"abc")
        assert not store.has("merge", key)  # not visible while being written
    assert store.has("merge", key)
    manifest = json.loads((store.path("merge", key) / "manifest.json").read_text())
    assert manifest["inputs"] == {"x": 1} and manifest["versions"] == {"mergekit": "0.1.5"}
    assert manifest["files"] == {
        "model.safetensors": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert store.stale_temps("merge") == []


def test_failure_mid_write_leaves_nothing(tmp_path):
    store = Store(tmp_path, "r")
    with pytest.raises(RuntimeError):
        with store.build("eval", "k1", {}) as tmp:
            (tmp / "half.json").write_text("{")
            raise RuntimeError("boom")
    assert not store.has("eval", "k1")
    assert not store.path("eval", "k1").exists()
    assert store.stale_temps("eval") == []


def test_existing_artifact_is_never_overwritten(tmp_path):
    store = Store(tmp_path, "r")
    with store.build("data", "k", {}) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(HarnessError, match="refusing to overwrite"):
        with store.build("data", "k", {}) as tmp:
            (tmp / "a").write_text("2")
    assert (store.path("data", "k") / "a").read_text() == "1"


def test_folder_without_valid_manifest_is_not_trusted(tmp_path):
    store = Store(tmp_path, "r")
    folder = store.path("merge", "k")
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half")
    assert not store.has("merge", "k")
    (folder / "manifest.json").write_text('{"stage": "merge", "key": "other"}')
    assert not store.has("merge", "k")
    with store.build("merge", "k", {}) as tmp:
        (tmp / "model.safetensors").write_bytes(b"full")
    assert store.has("merge", "k")
    assert (folder / "model.safetensors").read_bytes() == b"full"
    # the untrusted leftover is kept aside, not deleted
    assert len(list(folder.parent.glob(".broken-k-*"))) == 1


def test_killed_process_mid_write_leaves_no_visible_artifact(tmp_path):
    """A real crash: the writing process dies by SIGKILL halfway through its files."""
    script = textwrap.dedent(f"""
        import os, signal
        from harness.store import Store
        store = Store({str(tmp_path)!r}, "r")
        with store.build("specialists", "kk", {{}}) as tmp:
            (tmp / "model-00001.safetensors").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    assert proc.returncode == -9
    store = Store(tmp_path, "r")
    assert not store.has("specialists", "kk")
    assert not store.path("specialists", "kk").exists()
    leftovers = store.stale_temps("specialists")
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-kk-")
    assert store.clean_stale("specialists") == leftovers  # its writer is dead
    assert store.stale_temps("specialists") == []
    with store.build("specialists", "kk", {}) as tmp:
        (tmp / "model-00001.safetensors").write_bytes(b"y")
    assert store.has("specialists", "kk")


def test_live_writer_temp_is_left_alone(tmp_path):
    store = Store(tmp_path, "r")
    folder = store.stage_dir("merge")
    folder.mkdir(parents=True)
    live = folder / f".tmp-k-{os.getppid()}-abcd1234"  # our parent is alive
    live.mkdir()
    assert store.clean_stale("merge") == []
    assert live.exists()
