"""Bad input, through the CLI as a user types it: one line naming file, field and fix, no
traceback, a non-zero exit, and every artifact already in the run store left as it was.

Each case is (what, command, a change to a copy of tiny_en_zh or to the store, the words the
line must hold). The store cases plant real tiny models (random weights) where a stage's
output is needed, then break one thing."""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.plan import build_plan
from harness.recipe import parse_recipe
from harness.stages import Context
from harness.store import Store

from conftest import PROJECT
from tiny_models import plant_family

HARNESS = [str(Path(sys.executable).parent / "harness")]
RECIPE = "tiny_bad"


def tiny() -> dict:
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh_mcqa.yaml").read_text())
    data["name"] = RECIPE
    data.pop("run_store")  # its own store: runs/tiny_bad
    data["multitask"]["enabled"] = False
    return data


def merges(data, i, spec):
    data["merges"][i] = spec


def local_medqa(checkout: Path, rows: list) -> str:
    path = checkout / "data" / "medqa.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "./data/medqa.jsonl"


GOOD_MEDQA = {"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
              "answer_idx": "A", "answer": "a"}


def with_medqa(rows):
    """The tiny recipe with a MedQA release file as one more dataset (and its test)."""
    def change(data, checkout):
        data["datasets"]["medqa"] = {"source": "medqa", "language": "en", "task_type": "mcqa",
                                     "path": local_medqa(checkout, rows)}
    return change


def recipe_case(change):
    return lambda data, checkout: change(data)


CASES = [
    ("misspelled key", ["validate", "--recipe", RECIPE],
     recipe_case(lambda d: d["eval"].update(taks=d["eval"].pop("tasks"))),
     ["eval.taks", "did you mean 'tasks'"]),
    ("value out of range", ["validate", "--recipe", RECIPE],
     recipe_case(lambda d: merges(d, 2, {"method": "ties", "grid": {"density": [1.5]}})),
     ["merges.2: grid.density", "within [0, 1]", "1.5"]),
    ("duplicate grid value", ["validate", "--recipe", RECIPE],
     recipe_case(lambda d: merges(d, 2, {"method": "ties", "grid": {"density": [0.5, 0.5]}})),
     ["grid.density", "listed twice"]),
    ("option typo", ["validate", "--recipe", RECIPE],
     recipe_case(lambda d: d["merges"][-1]["options"].update(search="grdi")),
     ["options.search", "'coarse_to_fine' or 'grid'"]),
    ("unknown option", ["validate", "--recipe", RECIPE],
     recipe_case(lambda d: d["merges"][-1]["options"].update(epsilom=0.1)),
     ["unknown hi_merging option 'epsilom'", "did you mean 'epsilon'"]),
    ("specialist language differs from its dataset's", ["validate", "--recipe", RECIPE],
     recipe_case(lambda d: d["specialists"][0].update(language="zh")),
     ["specialist 'en_mcqa' says zh mcqa", "set language: en"]),
    ("test split in a search", ["validate", "--recipe", RECIPE],
     recipe_case(lambda d: d["scorer"].update(split="test")),
     ["scorer.split must be 'dev'"]),
    ("YAML syntax", ["validate", "--recipe", RECIPE],
     None, ["not valid YAML", "fix the syntax"]),
    ("seeds not integers", ["run", "--recipe", RECIPE, "--dry-run", "--seeds", "0,x"],
     recipe_case(lambda d: None), ["--seeds '0,x'", "comma-separated integers"]),
    ("synthetic set larger than its generator", ["data", "--recipe", RECIPE],
     recipe_case(lambda d: d["datasets"].update(synth_qa_en={
         "source": "synthetic", "language": "en", "task_type": "qa", "train_size": 5000})),
     ["datasets.synth_qa_en.train_size", "cannot make 5000 distinct train items", "lower it"]),
    ("missing data file", ["data", "--recipe", RECIPE],
     lambda d, c: d["datasets"].update(medqa={"source": "medqa", "language": "en",
                                              "task_type": "mcqa", "path": "./data/none.jsonl"}),
     ["datasets.medqa.path", "does not exist"]),
    ("record with a field of the wrong shape", ["data", "--recipe", RECIPE],
     with_medqa([GOOD_MEDQA, {**GOOD_MEDQA, "question": "Q2?", "options": 7}]),
     ["medqa: ./data/medqa.jsonl record 2", "field options"]),
    ("record without the answer", ["data", "--recipe", RECIPE],
     with_medqa([{k: v for k, v in GOOD_MEDQA.items() if k not in ("answer_idx", "answer")}]),
     ["record 1", "missing field"]),
    ("base with pickled weights only", ["specialists", "--recipe", RECIPE],
     "pickle_base", ["pytorch_model.bin", "convert the model to safetensors"]),
    ("vocabulary mismatch", ["merge", "--recipe", RECIPE],
     "vocab", ["merge pre-flight", "differ in vocab_size: 3064 vs 3000"]),
    ("missing specialist folder", ["merge", "--recipe", RECIPE],
     "no_specialist", ["merge pre-flight", "the specialist is missing or incomplete",
                       "harness specialists --recipe tiny_bad"]),
    ("corrupt manifest", ["merge", "--recipe", RECIPE],
     "corrupt_manifest", ["the specialist is missing or incomplete"]),
    ("unreadable eval results", ["leaderboard", "--recipe", RECIPE],
     "bad_results", ["results.json: unreadable eval results", "harness eval --recipe tiny_bad"]),
    ("not a mergekit config", ["reproduce", "RECIPE_FILE", "OUT"],
     recipe_case(lambda d: None), ["not a mergekit config (no merge_method)"]),
    ("recipe name with a path", ["run", "--recipe", "../tiny_en_zh", "--dry-run"],
     recipe_case(lambda d: None), ["is not allowed"]),
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def context(checkout: Path, runs: Path, data: dict) -> Context:
    recipe = parse_recipe(data)
    return Context(recipe, Store(runs, recipe.name), build_plan(recipe, PROJECT / "requirements"),
                   checkout)


def break_store(case: str, checkout: Path, runs: Path, data: dict) -> None:
    """Plant what the failing stage reads, then break one thing."""
    from harness import tiny
    from harness.recipe import TinyBase
    from tiny_models import tokenizer

    if case == "pickle_base":
        folder = checkout / "base"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "pytorch_model.bin").write_bytes(b"not loaded")
        data["base"] = {"model": "./base", "template": "qwen"}
        return
    ctx = context(checkout, runs, data)
    if case == "bad_results":
        sys.path.insert(0, str(Path(__file__).parent))
        from test_leaderboard import plant
        plant(ctx, random.Random(1))
        unit = ctx.plan["eval"][3]
        (ctx.store.path("eval", unit.key) / "results.json").write_text('{"results": {"synth')
        return
    base, *specialists = ctx.plan["specialists"]
    plant_family(ctx.store, base.key, [u.key for u in specialists])
    victim = ctx.store.path("specialists", specialists[1].key)
    if case == "vocab":
        config = json.loads((victim / "model" / "config.json").read_text())
        shutil.rmtree(victim / "model")
        model = tiny.init_model(TinyBase(), tokenizer(), seed=5)
        model.resize_token_embeddings(config["vocab_size"] + 64)
        tiny.save(model, tokenizer(), victim / "model")
    elif case == "no_specialist":
        shutil.rmtree(victim / "model")
    elif case == "corrupt_manifest":
        (victim / "manifest.json").write_text('{"stage": "specialists", "ke')


@pytest.mark.parametrize("what,command,change,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(what, command, change, expected, tmp_path):
    checkout = tmp_path / "project"
    (checkout / "recipes").mkdir(parents=True)
    for name in ("tasks", "requirements"):
        (checkout / name).symlink_to(PROJECT / name)
    (tmp_path / "shared").symlink_to(PROJECT.parent / "shared")
    runs = tmp_path / "runs"
    data = tiny()
    recipe_file = checkout / "recipes" / f"{RECIPE}.yaml"
    if isinstance(change, str):
        break_store(change, checkout, runs, data)
    elif change is not None:
        change(data, checkout)
    recipe_file.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
                           if change is not None else "name: tiny_bad\nseeds: [0\n")
    (runs / "elsewhere" / "data" / "kept").mkdir(parents=True)  # an artifact of another recipe
    (runs / "elsewhere" / "data" / "kept" / "manifest.json").write_text('{"key": "kept"}')
    before = snapshot(runs)
    command = [str(recipe_file) if c == "RECIPE_FILE" else str(tmp_path / "out") if c == "OUT"
               else c for c in command]
    env = {**os.environ, "HARNESS_PROJECT": str(checkout), "HARNESS_RUNS_DIR": str(runs),
           "HARNESS_LEADERBOARD_DIR": str(tmp_path / "leaderboard"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(HARNESS + command, capture_output=True, text=True, env=env,
                          cwd=checkout, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert len(errors) == 1, proc.stderr[-2000:]
    for words in expected:
        assert words in errors[0], (words, errors[0])
    after = snapshot(runs)  # nothing already computed was lost or overwritten (a stage may
    assert {k: after.get(k) for k in before} == before  # keep the units it finished)
