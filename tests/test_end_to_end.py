"""A reduced tiny recipe through every stage with the real tools: LLaMA-Factory pre-trains the
base and fine-tunes two specialists, mergekit merges them (baselines and Hi-Merging, whose
candidates the resident vLLM engine scores), lm-eval evaluates every model, and the
leaderboard's numbers are checked against the eval JSONs. Few items and steps: the point is
the wiring, not the scores (those are in leaderboard/tiny_en_zh/)."""
import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from harness.plan import STAGES
from harness.stages import Context, run_stage

from conftest import PROJECT, run_all

pytestmark = pytest.mark.skipif(
    not (Path(os.environ.get("HARNESS_TRAIN_ENV", "") or
              Path(__import__("sys").prefix).parent / "train") / "bin" / "llamafactory-cli").exists(),
    reason="train env not built")


def reduced_recipe() -> dict:
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh.yaml").read_text())
    data["name"] = "tiny_e2e"
    data["base"]["tiny"].update(corpus_statements=4000, pretrain_steps=40, pretrain_batch_size=16)
    for ds in data["datasets"].values():
        ds.update(train_size=400, dev_size=40, test_size=60)
    for sp in data["specialists"]:
        sp["finetuning"].update(max_steps=30, per_device_train_batch_size=16)
    data["merges"] = [
        {"method": "linear", "grid": {"weight": [0.5, 1.0]}},
        {"method": "ties", "grid": {"density": [0.5], "weight": [1.0]}},
        {"method": "hi_merging", "options": {"prune_grid": [0.5, 1.0], "scale_grid": [0.5, 1.0]}},
    ]
    data["eval"].update(backend="hf")
    data["scorer"].update(backend="vllm")  # the resident engine, weights swapped in place
    return data


def read_board(ctx: Context) -> dict[str, dict[str, str]]:
    with open(ctx.project / "leaderboard" / ctx.recipe.name / "leaderboard.csv", newline="") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("local"), reduced_recipe())


def test_reduced_tiny_recipe_end_to_end(local_run):
    ctx = local_run
    recipe, project = ctx.recipe, ctx.project
    hi = next(u for u in ctx.plan["merge"] if u.inputs["method"] == "hi_merging")
    assert (ctx.store.path("merge", hi.key) / "contributions.json").is_file()
    assert ctx.store.manifest("merge", hi.key)["details"]["scorer"]["backend"] == "vllm"

    folder = project / "leaderboard" / recipe.name
    rows = read_board(ctx)
    assert set(rows) == {"base", "en_mcqa", "zh_mcqa", "linear", "ties", "hi_merging"}
    # each single-seed cell is its eval's accuracy, read back from that eval's results.json
    board = json.loads((folder / "leaderboard.json").read_text())
    for row in board["rows"]:
        (key,) = row["_evals"]
        results = json.loads((ctx.store.path("eval", key) / "results.json").read_text())
        for task in ("synth_mcqa_en", "synth_mcqa_zh"):
            assert float(rows[row["model"]][task]) == pytest.approx(
                100 * results["results"][task]["acc,none"], abs=1e-9)
    assert (folder / "plots" / "hi_merging_contributions_seed0.png").is_file()

    # nothing changed: every stage is cached
    for stage in STAGES:
        assert run_stage(ctx, stage) == [], stage


def test_ray_executor_gives_the_same_leaderboard(local_run, tmp_path, monkeypatch):
    """The same recipe with `executor: ray` on a local Ray instance (2 CPUs; every unit a Ray
    task in a worker process), into its own run store: the same leaderboard numbers."""
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    data = reduced_recipe()
    # 2 CPUs a unit: the same torch thread count as the local run on this 2-core machine
    data["executor"] = {"kind": "ray", "cpus_per_unit": os.cpu_count() or 1}
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)
    try:
        ctx = run_all(tmp_path, data)
    finally:
        ray.shutdown()
    local, on_ray = read_board(local_run), read_board(ctx)
    assert on_ray == local  # every row and column: scores, ranks, selected grid points
