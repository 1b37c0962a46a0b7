"""Stage keys follow the code: a change to what a stage runs re-keys that stage (and, through
the key chain, what reads its outputs), and leaves every other stage's keys alone. No revision
number to bump by hand (harness/stagedefs.py)."""
import shutil

import pytest

from harness import plan as plan_module
from harness.plan import STAGES, build_plan
from harness.recipe import load_recipe
from harness.stagedefs import PACKAGE_ROOT, code_hash, modules_of

from conftest import PROJECT


@pytest.fixture
def copy(tmp_path):
    root = tmp_path / "harness"
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def keys(monkeypatch, root) -> dict[str, list[str]]:
    monkeypatch.setattr(plan_module, "stage_code", lambda stage: code_hash(stage, root))
    recipe = load_recipe("tiny_en_zh", PROJECT / "recipes")
    built = build_plan(recipe, PROJECT / "requirements")
    return {s: [u.key for u in built[s]] for s in STAGES}, built


def test_editing_the_merge_module_rekeys_merges_only(copy, monkeypatch):
    before, plan = keys(monkeypatch, PACKAGE_ROOT)
    source = copy / "merge" / "stage.py"
    source.write_text(source.read_text() + "\n# a comment changes no key\n")
    assert keys(monkeypatch, copy)[0] == before
    source.write_text(source.read_text() + "\nEDITED = True\n")
    after, _ = keys(monkeypatch, copy)
    assert after["data"] == before["data"] and after["specialists"] == before["specialists"]
    assert not set(after["merge"]) & set(before["merge"])  # every merge unit re-keyed
    for unit, old, new in zip(plan["eval"], before["eval"], after["eval"]):
        # an eval reads its model's key: evals of merges change, the others stay
        assert (old != new) == (unit.inputs["model"]["stage"] == "merge"), unit.name
    assert after["leaderboard"] != before["leaderboard"]


def test_a_helper_rekeys_every_stage_that_runs_it(copy, monkeypatch):
    assert "harness.merge.memory" in modules_of("merge")
    assert "harness.merge.memory" not in modules_of("data") + modules_of("specialists")
    before = {s: code_hash(s, PACKAGE_ROOT) for s in STAGES}
    helper = copy / "merge" / "memory.py"
    helper.write_text(helper.read_text() + "\nEDITED = True\n")
    after = {s: code_hash(s, copy) for s in STAGES}
    changed = {s for s in STAGES if after[s] != before[s]}
    assert changed == {s for s in STAGES if "harness.merge.memory" in modules_of(s)}
    assert "merge" in changed and "data" not in changed


def test_imports_inside_functions_are_followed():
    # the merge stage imports the scorers only inside functions (heavy imports, paid on use)
    assert {"harness.scoring.vllm_scorer", "harness.scoring.hf",
            "harness.merge.hi_merging"} <= set(modules_of("merge"))
    assert "harness.executor" not in modules_of("merge")  # orchestration: not followed
