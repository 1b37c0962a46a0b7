"""The GPU recipes' code path, reduced, on CPU: recipes/mini_qwen2_en_zh.yaml and
mini_llama3_en_zh.yaml with a hub-cache tiny base (resolved offline from HF_HOME, as
Qwen/Qwen2-7B-Instruct would be), LoRA specialists exported by LLaMA-Factory, the multi-task
fine-tune, real lettered MCQA and open-QA release samples, Hi-Merging on the resident vLLM
engine, lm-eval on the vLLM backend, the leaderboard, and one published mergekit YAML
reproduced by `harness reproduce`. Few steps and items: the path, not the scores."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness import hub
from harness.merge.memory import load_folder
from harness.stages import Context
from harness.train.stage import weights_differ

from conftest import PROJECT, TINY_TEST_REPOS, needs_train_env, run_all

pytestmark = needs_train_env
MCQA = ("medqa", "medmcqa", "cmexam")
QA = {"chatdoctor": "rougeL_word", "cmb_clin": "rougeL_char"}


def reduced(recipe: str, repo: str) -> dict:
    data = yaml.safe_load((PROJECT / "recipes" / f"{recipe}.yaml").read_text())
    data["name"] = f"{recipe}_e2e"
    data["base"]["model"] = repo
    for sp in data["specialists"]:
        sp["finetuning"].update(max_steps=4, per_device_train_batch_size=4)
    data["multitask"]["finetuning"].update(max_steps=4, per_device_train_batch_size=4)
    data["merges"] = [
        {"method": "ties", "grid": {"density": [0.3, 0.7], "weight": [1.0]}},
        {"method": "hi_merging", "options": {"prune_grid": [0.5, 1.0], "scale_grid": [1.0]}},
    ]
    data["eval"].update(limit=6, max_gen_toks=8)
    data["scorer"].update(limit=6)
    return data


@pytest.fixture(scope="module", params=[("mini_qwen2_en_zh", "qwen2"), ("mini_llama3_en_zh", "llama")],
                ids=["qwen2", "llama3"])
def mini_run(request, tiny_hub, tmp_path_factory):
    recipe, arch = request.param
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tiny_hub))
        mp.delenv("HF_HUB_CACHE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp(arch)
        mp.setenv("HARNESS_LEADERBOARD_DIR", str(root / "leaderboard"))
        ctx = run_all(root, reduced(recipe, TINY_TEST_REPOS[arch]))
        yield ctx, hub.resolve(TINY_TEST_REPOS[arch]), root


def board(ctx: Context, root: Path) -> dict[str, dict[str, str]]:
    with open(root / "leaderboard" / ctx.recipe.name / "leaderboard.csv", newline="") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


def test_every_stage_resolves_the_base_through_the_hub_cache(mini_run):
    ctx, base, _ = mini_run
    expected = {"kind": "hub", "id": base.ref, "revision": base.revision, "via": "hub-cache"}
    assert str(base.path).startswith(str(hub.cache_dir()))  # a snapshot in the hub cache
    trained = [u for u in ctx.plan["specialists"]]
    assert len(trained) == 4  # three LoRA specialists and the multi-task fine-tune
    for unit in trained:
        folder = ctx.store.path("specialists", unit.key)
        assert ctx.store.manifest("specialists", unit.key)["details"]["base"] == expected
        config = yaml.safe_load((folder / "llamafactory" / "train.yaml").read_text())
        assert (config["model_name_or_path"], config["model_revision"]) == (base.ref, base.revision)
        assert config["default_system"] == ctx.recipe.base.system_prompt
        export = yaml.safe_load((folder / "llamafactory" / "export.yaml").read_text())
        assert export["model_name_or_path"] == base.ref
    for unit in ctx.plan["merge"]:
        details = ctx.store.manifest("merge", unit.key)["details"]
        assert details["base"] == expected and details["preflight"]["base"] == expected
    base_eval = next(u for u in ctx.plan["eval"] if u.inputs["model"]["stage"] == "external")
    results = json.loads((ctx.store.path("eval", base_eval.key) / "results.json").read_text())
    assert results["harness"]["model_location"] == expected


def test_each_lora_export_differs_from_the_base(mini_run):
    ctx, base, _ = mini_run
    for unit in ctx.plan["specialists"]:
        folder = ctx.store.path("specialists", unit.key)
        assert (folder / "adapter" / "adapter_model.safetensors").is_file()  # LoRA, then export
        assert ctx.store.manifest("specialists", unit.key)["details"]["differs_from_base"]
        assert weights_differ(folder / "model", base.path)


def test_leaderboard_rows_come_from_the_eval_files(mini_run):
    ctx, _, root = mini_run
    rows = board(ctx, root)
    assert set(rows) - {n for n in rows if n.startswith("best single specialist (")} == {
        "base", "medqa_en", "cmexam_zh", "chatdoctor_en", "multitask", "ties", "hi_merging"}
    assert all(r["status"] == "measured" for r in rows.values())
    published = json.loads((root / "leaderboard" / ctx.recipe.name / "leaderboard.json").read_text())
    for row in published["rows"]:
        (key,) = row["_evals"]
        results = json.loads((ctx.store.path("eval", key) / "results.json").read_text())["results"]
        for task in MCQA:  # lettered MCQA: accuracy in %
            assert float(rows[row["model"]][task]) == pytest.approx(
                100 * results[task]["acc,none"], abs=1e-9)
        for task, metric in QA.items():  # generated answers: ROUGE-L
            assert float(rows[row["model"]][task]) == pytest.approx(
                results[task][f"{metric},none"], abs=1e-9)
            assert f"bleu4_{'13a' if task == 'chatdoctor' else 'zh'},none" in results[task]


def test_baseline_grid_is_dev_scored_on_the_vllm_scorer_and_only_its_choice_written(mini_run):
    ctx, _, _ = mini_run
    (ties,) = [u for u in ctx.plan["merge"] if u.inputs["method"] == "ties"]
    details = ctx.store.manifest("merge", ties.key)["details"]
    assert details["scorer"]["backend"] == "vllm"
    assert details["scorer"]["scored"] == 2 * 3  # two grid points x three dev sets
    assert [p["params"]["density"] for p in details["grid"]] == [0.3, 0.7]
    assert sum(p["selected"] for p in details["grid"]) == 1
    assert details["mergekit_equals_in_memory"] is True
    merge_dir = ctx.store.stage_dir("merge")
    written = {p.relative_to(merge_dir).parts[0] for p in merge_dir.rglob("*.safetensors")}
    assert written == {u.key for u in ctx.plan["merge"]}  # the chosen point and Hi-Merging only


def test_hi_merging_ran_on_the_vllm_scorer(mini_run):
    ctx, _, _ = mini_run
    hi = next(u for u in ctx.plan["merge"] if u.inputs["method"] == "hi_merging")
    details = ctx.store.manifest("merge", hi.key)["details"]
    assert details["scorer"]["backend"] == "vllm" and details["scorer"]["scored"] > 0
    assert set(details["dev_scores"]) == {"medqa_en", "cmexam_zh", "chatdoctor_en"}
    assert details["mergekit_equals_in_memory"] is True
    evals = [json.loads((ctx.store.path("eval", u.key) / "results.json").read_text())
             for u in ctx.plan["eval"]]
    assert {e["harness"]["backend"] for e in evals} == {"vllm"}


ABSOLUTE = re.compile(r"(?<![\w.~])/(?:root|home|tmp|work|Users|private|var|mnt|opt|srv)/")


def test_published_files_hold_no_machine_path(mini_run):
    ctx, _, root = mini_run
    folder = root / "leaderboard" / ctx.recipe.name
    machine = [str(root), str(PROJECT), str(Path.home()), str(hub.cache_dir())]
    checked = 0
    for path in folder.rglob("*"):
        if path.suffix in (".png",) or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        checked += 1
        for root_path in machine:
            assert root_path not in text, (path, root_path)
        assert not ABSOLUTE.search(text), (path, ABSOLUTE.search(text).group(0))
    assert checked > 10


def test_a_published_mergekit_yaml_reproduces_its_model(mini_run, tmp_path):
    """The documented command, run on the published (portable) YAML from a checkout: the
    tensors equal the merged model the leaderboard row evaluated."""
    ctx, _, root = mini_run
    folder = root / "leaderboard" / ctx.recipe.name / "models"
    for method in ("ties", "hi_merging"):
        (published,) = sorted((folder / method).glob("*mergekit.yaml"))
        header = published.read_text().splitlines()[:3]
        command = next(line for line in header if "harness reproduce" in line).split("#", 1)[1]
        args = command.split()[2:]  # after `harness reproduce`
        assert args[0].startswith(f"leaderboard/{ctx.recipe.name}/models/{method}/")
        out = tmp_path / method
        env = {**os.environ, "HARNESS_RUNS_DIR": str(root / "runs")}
        script = Path(sys.executable).parent / "harness"
        proc = subprocess.run([str(script), "reproduce", str(published), str(out), *args[2:]],
                              cwd=root, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        unit = next(u for u in ctx.plan["merge"] if u.inputs["method"] == method)
        ours = load_folder(ctx.store.path("merge", unit.key) / "model", torch.float32)
        again = load_folder(out, torch.float32)
        assert again.keys() == ours.keys()
        for name in ours:
            assert torch.equal(again[name], ours[name]), name


def test_merges_keep_the_bases_embedding_rows(mini_run):
    """The Qwen2 stand-in pads its embeddings past its tokenizer, as Qwen2-7B does (152064
    rows, 151646 tokens); every merged model keeps the base's row count (mergekit is given no
    tokenizer option that would cut them) and equals its in-memory candidate."""
    from harness.merge.vocab import embedding_rows, token_ids

    ctx, base, _ = mini_run
    rows, tokens = embedding_rows(base.path), len(token_ids(base.path)[1])
    assert (rows > tokens) == ("qwen2" in base.ref)  # Llama-3-8B's rows are its tokens
    for unit in ctx.plan["merge"]:
        folder = ctx.store.path("merge", unit.key)
        assert embedding_rows(folder / "model") == rows
        assert "tokenizer" not in yaml.safe_load((folder / "mergekit.yaml").read_text())
        assert ctx.store.manifest("merge", unit.key)["details"]["mergekit_equals_in_memory"]
