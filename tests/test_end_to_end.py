"""A reduced tiny recipe through every stage with the real tools: LLaMA-Factory pre-trains the
base and fine-tunes two specialists, mergekit merges them (baselines and Hi-Merging, whose
candidates the resident vLLM engine scores), lm-eval evaluates every model, and the
leaderboard's numbers are checked against the eval JSONs. Few items and steps: the point is
the wiring, not the scores (those are in leaderboard/tiny_en_zh/)."""
import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
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
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh_mcqa.yaml").read_text())
    data["name"] = "tiny_e2e"
    data.pop("run_store")
    data["multitask"]["enabled"] = False  # the four-task run below trains one
    data["base"]["tiny"].update(corpus_statements=4000, pretrain_steps=40, pretrain_batch_size=16,
                                instruct_steps=10, instruct_items=320)
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


def four_task_recipe() -> dict:
    """The default recipe reduced, in its multilingual multi-task paradigm (M = 4): EN and ZH
    MCQA and open QA specialists, the multi-task fine-tune, a baseline and Hi-Merging; QA is
    evaluated by generation."""
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh.yaml").read_text())
    data["name"] = "tiny_e2e_four"
    data.pop("run_store")
    # smaller than the run above (the path, not the scores): no instruction stage (that run
    # covers it), fewer steps and items, one Hi-Merging candidate per model
    data["base"]["tiny"].update(corpus_statements=2000, pretrain_steps=20, pretrain_batch_size=16)
    for ds in data["datasets"].values():
        ds.update(train_size=200, dev_size=16, test_size=12 if ds["task_type"] == "qa" else 24)
    for sp in data["specialists"]:
        sp["finetuning"].update(max_steps=10, per_device_train_batch_size=16)
    data["multitask"]["finetuning"].update(max_steps=16, per_device_train_batch_size=16)
    data["merges"] = [{"method": "linear", "grid": {"weight": [1.0]}},
                      {"method": "hi_merging", "options": {
                          "prune_grid": [1.0], "scale_grid": [1.0], "max_iterations": 1}}]
    data["eval"].update(backend="hf", max_gen_toks=32)
    data["scorer"].update(backend="hf")
    return data


def read_board(ctx: Context) -> dict[str, dict[str, str]]:
    with open(ctx.project / "leaderboard" / ctx.recipe.name / "leaderboard.csv", newline="") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


def best_specialist(rows: dict[str, dict[str, str]]) -> str:
    """The specialist the leaderboard's reference row repeats: the best average."""
    return max((r for r in rows.values() if r["kind"] == "specialist"),
               key=lambda r: float(r["avg"]))["model"]


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
    assert set(rows) == {"base", "en_mcqa", "zh_mcqa", "linear", "ties", "hi_merging",
                         f"best single specialist ({best_specialist(rows)})"}
    # the paired comparisons with the best baseline, from the evals' samples.jsonl
    paired = list(csv.DictReader(open(folder / "paired.csv", newline="")))
    assert {p["model"] for p in paired} == {"hi_merging", "linear", "ties"} - {paired[0]["against"]}
    assert {p["task"] for p in paired} == {"synth_mcqa_en", "synth_mcqa_zh"}
    assert all(float(p["ci_low"]) <= float(p["diff"]) <= float(p["ci_high"]) for p in paired)
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
    # rebuilt in a fresh store on this machine: bit-identical weights, identical eval numbers
    assert_same_outputs(local_run, ctx)


def assert_same_outputs(one: Context, other: Context) -> None:
    """Every model's weights hash and every eval's numbers hash agree between two stores."""
    compared = 0
    for stage, field in (("specialists", "weights_sha256"), ("merge", "weights_sha256"),
                         ("eval", "numbers_sha256")):
        for unit in one.plan[stage]:
            ours = one.store.manifest(stage, unit.key)
            theirs = other.store.manifest(stage, unit.key)
            where = ours if stage != "eval" else ours["details"]
            again = theirs if stage != "eval" else theirs["details"]
            assert where[field] and where[field] == again[field], (stage, unit.name)
            compared += 1
    assert compared == sum(len(one.plan[s]) for s in ("specialists", "merge", "eval"))


def _checkout(root: Path, data: dict) -> tuple[Path, dict]:
    """A checkout holding the recipe (tasks/ and requirements/ linked, ../shared beside it)
    and the environment that points the CLI at it, a fresh run store and leaderboard."""
    checkout = root / "project"
    (checkout / "recipes").mkdir(parents=True)
    for name in ("tasks", "requirements"):
        (checkout / name).symlink_to(PROJECT / name)
    (root / "shared").symlink_to(PROJECT.parent / "shared")
    (checkout / "recipes" / f"{data['name']}.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "HARNESS_PROJECT": str(checkout), "HARNESS_RUNS_DIR": str(root / "runs"),
           "HARNESS_LEADERBOARD_DIR": str(checkout / "leaderboard")}
    env.pop("RAY_ADDRESS", None)
    return checkout, env


def _kill_during(command: list[str], env: dict, stage: str, seconds: float) -> None:
    """Start the CLI, and kill -9 its whole process group (LLaMA-Factory, vLLM's engine) a
    while after it logs the start of `stage`."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stderr], daemon=True).start()
    deadline = time.time() + 900
    while time.time() < deadline:
        try:
            if f"stage {stage}: recipe" in lines.get(timeout=5):
                break
        except queue.Empty:
            assert proc.poll() is None, f"the run ended before stage {stage}"
    time.sleep(seconds)
    assert proc.poll() is None, f"the run ended within {seconds} s of stage {stage}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_at_any_stage_the_rerun_gives_the_same_leaderboard(local_run, tmp_path):
    """kill -9 during training, during the merges (Hi-Merging's search) and during the
    evaluation, then one more run: it finishes, and its leaderboard is the uninterrupted one."""
    data = reduced_recipe()
    checkout, env = _checkout(tmp_path, data)
    command = [str(Path(sys.executable).parent / "harness"), "run", "--recipe", data["name"]]
    for stage, seconds in (("specialists", 25), ("merge", 40), ("eval", 8)):
        _kill_during(command, env, stage, seconds)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(checkout / "leaderboard" / data["name"] / "leaderboard.csv", newline="") as fh:
        rerun = {r["model"]: r for r in csv.DictReader(fh)}
    assert rerun == read_board(local_run)


def test_reduced_four_task_run_generates_and_scores_qa(tmp_path):
    """Four specialists (MCQA and QA, EN and ZH) through every stage: the merges choose on
    normalised dev gains (a QA log-likelihood beside MCQA accuracies), QA is generated and
    scored by ROUGE-L and by LLaMA-Factory's ComputeSimilarity, and the leaderboard's QA cells
    are the eval files' numbers."""
    ctx = run_all(tmp_path, four_task_recipe())
    rows = read_board(ctx)
    assert set(rows) == {"base", "en_mcqa", "zh_mcqa", "en_qa", "zh_qa", "multitask", "linear",
                         "hi_merging", f"best single specialist ({best_specialist(rows)})"}
    board = json.loads((ctx.project / "leaderboard" / ctx.recipe.name / "leaderboard.json")
                       .read_text())
    for row in board["rows"]:
        (key,) = row["_evals"]
        folder = ctx.store.path("eval", key)
        results = json.loads((folder / "results.json").read_text())["results"]
        for task, metric in (("synth_qa_en", "rougeL_word"), ("synth_qa_zh", "rougeL_char")):
            assert float(rows[row["model"]][task]) == pytest.approx(
                results[task][f"{metric},none"], abs=1e-9)
            assert float(rows[row["model"]][f"{task}_lf_rougeL"]) == pytest.approx(
                results[task]["lf_rougeL,none"], abs=1e-9)
        samples = [json.loads(l) for l in (folder / "samples.jsonl").read_text().splitlines()]
        qa = [s for s in samples if s["task"].startswith("synth_qa")]
        assert len(qa) == 24 and all("lf_bleu4" in s and "filtered_resps" in s for s in qa)
    for unit in ctx.plan["merge"]:
        details = ctx.store.manifest("merge", unit.key)["details"]
        reference = details["dev_reference"]
        assert set(reference) == {"synth_mcqa_en", "synth_mcqa_zh", "synth_qa_en",
                                  "synth_qa_zh"} or set(reference) == {
            "en_mcqa", "zh_mcqa", "en_qa", "zh_qa"}
        assert reference["synth_qa_en" if "synth_qa_en" in reference else "en_qa"]["base"] < 0
        assert -1 < details["dev_gain"] < 2  # one scale: not dominated by a log-likelihood
