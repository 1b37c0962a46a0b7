import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.errors import HarnessError
from harness.merge import gains
from harness.merge.config import mergekit_config, validate
from harness.merge.memory import InMemoryMerger, layer_of, load_folder
from harness.merge_methods import METHODS
from harness.plan import build_plan, grid_points
from harness.recipe import parse_recipe
from harness.stages import Context, run_stage
from harness.store import Store

from conftest import PROJECT
from tiny_models import plant_family

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
VALUES = {"linear": {"weight": 0.5}, "task_arithmetic": {"weight": 0.7},
          "ties": {"density": 0.5, "weight": 1.0}, "dare_ties": {"density": 0.5},
          "dare_linear": {"density": 0.6}, "breadcrumbs": {"density": 0.7, "gamma": 0.01},
          "della": {"density": 0.5, "epsilon": 0.1}}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """The tiny recipe with every baseline method, on a planted base + two specialists."""
    tmp = tmp_path_factory.mktemp("merge")
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh_mcqa.yaml").read_text())
    data["multitask"]["enabled"] = False  # the merges read the two specialists only
    data["scorer"].update(limit=20, backend="hf")  # the vLLM scorer: tests/test_scoring.py
    data["merges"][-1]["options"] = {"prune_grid": [0.3, 0.7, 1.0], "scale_grid": [0.5, 1.0]}
    # a variant that exists only in the recipe: its own entry, name and options
    data["merges"].append({"method": "hi_merging", "name": "hm_model_wise_only",
                           "options": {"stages": "model_wise_only", "prune_grid": [0.5, 1.0],
                                       "scale_grid": [1.0]}})
    recipe = parse_recipe(data)
    ctx = Context(recipe, Store(tmp / "runs", recipe.name),
                  build_plan(recipe, PROJECT / "requirements"), PROJECT)
    run_stage(ctx, "data")
    base, *specialists = ctx.plan["specialists"]
    plant_family(ctx.store, base.key, [u.key for u in specialists])
    run_stage(ctx, "merge")
    return ctx


def _models(ctx):
    base, *specialists = ctx.plan["specialists"]
    return (ctx.store.path("specialists", base.key) / "model",
            {u.key: ctx.store.path("specialists", u.key) / "model" for u in specialists})


def test_every_baseline_is_built_with_its_mergekit_yaml(merged):
    ctx = merged
    baselines = [u for u in ctx.plan["merge"] if u.inputs["method"] != "hi_merging"]
    assert all(ctx.store.has("merge", u.key) for u in ctx.plan["merge"])
    # one unit per method and seed, holding its whole grid
    assert [u.inputs["grid"] for u in baselines] == [
        grid_points(m) for m in ctx.recipe.merges if m.method != "hi_merging"]
    base, models = _models(ctx)
    for unit in baselines:
        folder = ctx.store.path("merge", unit.key)
        assert ctx.store.has("merge", unit.key)
        config = yaml.safe_load((folder / "mergekit.yaml").read_text())
        validate(config)
        assert config["merge_method"] == METHODS[unit.inputs["method"]].mergekit_method
        assert [m["model"] for m in config["models"]] == [str(p) for p in models.values()]
        details = ctx.store.manifest("merge", unit.key)["details"]
        assert details["random_seed"] == 0 and set(details["model_keys"].values()) == set(models)
        assert set(details["dev_scores"]) == {"synth_mcqa_en", "synth_mcqa_zh"}
        assert details["mergekit_equals_in_memory"] is True
        assert details["scorer"]["backend"] == "hf"
        assert details["scorer"]["scored"] == 2 * len(unit.inputs["grid"])
        if METHODS[unit.inputs["method"]].uses_base:
            assert config["base_model"] == str(base) and config["parameters"]["normalize"] is False


@pytest.mark.parametrize("method", ["ties", "dare_ties", "della"])
def test_mergekit_yaml_reproduces_the_model(merged, method, tmp_path):
    ctx = merged
    unit = next(u for u in ctx.plan["merge"] if u.inputs["method"] == method)
    folder = ctx.store.path("merge", unit.key)
    proc = subprocess.run([str(MERGEKIT_YAML), str(folder / "mergekit.yaml"), str(tmp_path / "out"),
                           "--random-seed", str(unit.inputs["seed"])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, again = load_folder(folder / "model", torch.float32), load_folder(tmp_path / "out", torch.float32)
    assert ours.keys() == again.keys()
    assert all(torch.equal(ours[k], again[k]) for k in ours)


@pytest.mark.parametrize("method", sorted(VALUES))
def test_in_memory_equals_mergekit(merged, method, tmp_path):
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    base, models = _models(merged)
    config = mergekit_config(method, VALUES[method], str(base), [str(p) for p in models.values()],
                             "float32")
    run_merge(validate(config), str(tmp_path / "out"), MergeOptions(random_seed=3, quiet=True))
    written = load_folder(tmp_path / "out", torch.float32)
    memory = InMemoryMerger(base, models).merge(method, VALUES[method], seed=3)
    assert written.keys() == memory.keys()
    for name in written:  # bit-exact: the same mergekit code on the same inputs and RNG draws
        assert torch.equal(written[name], memory[name]), name
    delta = sum((memory[n] - load_folder(base, torch.float32)[n]).abs().sum() for n in memory)
    assert delta > 0  # the merge really moved the weights


def test_one_layer_candidate_equals_that_layer_of_the_full_merge(merged):
    base, models = _models(merged)
    engine = InMemoryMerger(base, models)
    full = engine.merge("ties", VALUES["ties"])
    layer = engine.layer_tensors(1)
    part = engine.merge("ties", VALUES["ties"], tensors=layer)
    assert set(part) == set(layer) and all(layer_of(n) == 1 for n in part)
    assert all(torch.equal(part[n], full[n]) for n in part)
    assert layer_of("model.embed_tokens.weight") is None and layer_of("lm_head.weight") is None


def test_best_grid_point_is_chosen_on_dev_and_only_it_is_written(merged, tmp_path):
    """Every point is dev-scored in memory; the chosen one (best mean dev gain) is the only
    model in the store; a point that was not written scores, once written by mergekit and
    loaded from disk, what the in-memory scorer recorded for it."""
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from harness.merge.stage import _dev_sets
    from harness.scoring.hf import HFScorer, load_model

    ctx = merged
    units = ctx.plan["merge"]
    weights = list(ctx.store.stage_dir("merge").rglob("*.safetensors"))
    assert sorted(p.relative_to(ctx.store.stage_dir("merge")).parts[0] for p in weights) == sorted(
        u.key for u in units)  # one model per unit (one weights file each): no other grid point
    ties = next(u for u in units if u.inputs["method"] == "ties")
    details = ctx.store.manifest("merge", ties.key)["details"]
    grid = details["grid"]
    assert [p["params"] for p in grid] == ties.inputs["grid"] and len(grid) == 3
    # chosen by the mean normalised dev gain against the base and the specialists, whose dev
    # scores the manifest keeps (and which the base, scored from disk below, reproduces)
    reference = gains.Reference(*({t: v[k] for t, v in details["dev_reference"].items()}
                                  for k in ("base", "specialist")))
    for point in grid:
        assert point["dev_gain"] == pytest.approx(reference.mean_gain(point["dev_scores"]))
    chosen = grid[gains.best_point(grid)]
    assert [p["selected"] for p in grid] == [p is chosen for p in grid]
    assert details["params"] == chosen["params"] and details["dev_scores"] == chosen["dev_scores"]
    other = next(p for p in grid if not p["selected"])
    base, models = _models(ctx)
    config = mergekit_config("ties", other["params"], str(base), [str(p) for p in models.values()],
                             "float32")
    run_merge(validate(config), str(tmp_path / "other"),
              MergeOptions(random_seed=0, quiet=True, copy_tokenizer=True))
    scorer = HFScorer(base, batch_size=ctx.recipe.scorer.batch_size, limit=ctx.recipe.scorer.limit,
                      apply_chat_template=ctx.recipe.eval.apply_chat_template,
                      system_prompt=ctx.recipe.base.system_prompt)
    model = load_model(tmp_path / "other")
    for task, (path, kind) in _dev_sets(ctx).items():
        assert scorer.score(model, path, kind) == pytest.approx(other["dev_scores"][task], abs=1e-6)
        assert scorer.score(load_model(base), path, kind) == pytest.approx(
            reference.base[task], abs=1e-6)


def test_different_vocabulary_fails_preflight(merged, tmp_path):
    ctx = merged
    root = tmp_path / "runs"
    shutil.copytree(ctx.store.root, root, ignore=shutil.ignore_patterns("merge"))
    other = Context(ctx.recipe, Store(root, ctx.recipe.name), ctx.plan, PROJECT)
    victim = other.store.path("specialists", ctx.plan["specialists"][2].key) / "model"
    config = json.loads((victim / "config.json").read_text())
    shutil.rmtree(victim)
    from harness import tiny
    from harness.recipe import TinyBase
    from tiny_models import tokenizer
    model = tiny.init_model(TinyBase(), tokenizer(), seed=5)
    model.resize_token_embeddings(config["vocab_size"] + 64)
    tiny.save(model, tokenizer(), victim)
    with pytest.raises(HarnessError, match=r"merge pre-flight: zh_mcqa \(.*\) and the base .* "
                                           r"differ in vocab_size: 3064 vs 3000"):
        run_stage(other, "merge")
    assert not (root / ctx.recipe.name / "merge").exists() or not any(
        (root / ctx.recipe.name / "merge").iterdir())


def test_config_validation_is_strict():
    good = mergekit_config("ties", {"density": 0.5}, "/b", ["/m1", "/m2"], "float32")
    validate(good)
    with pytest.raises(HarnessError, match="ties has no parameter 'densty'"):
        validate({**good, "parameters": {"densty": 0.5}})
    with pytest.raises(HarnessError, match="unknown key"):
        validate({**good, "merge_methd": "ties"})
    with pytest.raises(HarnessError, match="must be absolute"):
        validate({**good, "models": [{"model": "rel/path", "parameters": {}}]})


def test_hi_merging_artifact(merged):
    ctx = merged
    unit = next(u for u in ctx.plan["merge"] if u.inputs["method"] == "hi_merging")
    folder = ctx.store.path("merge", unit.key)
    details = ctx.store.manifest("merge", unit.key)["details"]
    assert details["mergekit_equals_in_memory"] is True
    for name in ("mergekit.yaml", "contributions.json", "contributions.csv", "decisions.jsonl",
                 "heatmap.png", "plan.json", "model/model.safetensors"):
        assert (folder / name).exists(), name
    config = yaml.safe_load((folder / "mergekit.yaml").read_text())
    filters = [w.get("filter") for w in config["models"][0]["parameters"]["weight"]]
    assert filters == ["layers.0.", "layers.1.", "layers.2.", "layers.3.", None]
    assert config["merge_method"] == "ties" and config["parameters"]["normalize"] is False
    table = json.loads((folder / "contributions.json").read_text())["before"]
    assert set(table["Gamma"]) == {"0", "1", "2", "3"}
    assert details["candidates_scored"] > 0
    assert not list(folder.parent.glob(f".cache-{unit.key}"))  # the resume cache is cleared


def test_killed_hi_merging_search_resumes(merged, tmp_path, monkeypatch):
    from harness.scoring import candidates as scoring

    ctx = merged
    root = tmp_path / "runs"
    shutil.copytree(ctx.store.root, root)  # the baselines stay built: only the search runs
    other = Context(ctx.recipe, Store(root, ctx.recipe.name), ctx.plan, PROJECT)
    unit = next(u for u in ctx.plan["merge"] if u.inputs["method"] == "hi_merging")
    shutil.rmtree(other.store.path("merge", unit.key))
    real = scoring.CandidateScorer.score
    calls = {"n": 0}

    def dying(self, tensors, task):
        calls["n"] += 1
        if calls["n"] > 6:
            raise KeyboardInterrupt("killed mid-search")
        return real(self, tensors, task)

    monkeypatch.setattr(scoring.CandidateScorer, "score", dying)
    with pytest.raises(KeyboardInterrupt):
        run_stage(other, "merge")
    assert not other.store.has("merge", unit.key)
    cache = other.store.stage_dir("merge") / f".cache-{unit.key}" / "scores.jsonl"
    assert len(cache.read_text().splitlines()) == 6
    monkeypatch.setattr(scoring.CandidateScorer, "score", real)
    run_stage(other, "merge")
    details = other.store.manifest("merge", unit.key)["details"]
    first = ctx.store.manifest("merge", unit.key)["details"]
    assert details["candidates_scored"] == first["candidates_scored"] - 6  # resumed, not redone
    assert details["dev_scores"] == first["dev_scores"]
    assert run_stage(other, "merge") == []  # and a further re-run is a no-op


def test_a_variant_added_only_in_the_recipe_is_planned_built_and_tabulated(merged, tmp_path,
                                                                           monkeypatch):
    """The recipe's second hi_merging entry is a unit of its own (planned and keyed), built by
    the merge stage with its options, and a leaderboard row and an ablations.md line (eval
    results planted: evaluation is not what this checks)."""
    import random

    from harness.leaderboard.collect import collect

    ctx = merged
    unit = next(u for u in ctx.plan["merge"] if u.label == "hm_model_wise_only")
    plain = next(u for u in ctx.plan["merge"] if u.label == "hi_merging")
    assert unit.key != plain.key and unit.name.startswith("hm_model_wise_only [search]")
    details = ctx.store.manifest("merge", unit.key)["details"]
    assert details["options"]["stages"] == "model_wise_only"
    assert details["mergekit_equals_in_memory"] is True
    folder = ctx.store.path("merge", unit.key)
    assert (folder / "decisions.jsonl").read_text() == ""  # no layer-wise step
    assert not (folder / "contributions.json").exists()
    root = tmp_path / "runs"
    shutil.copytree(ctx.store.root, root)
    other = Context(ctx.recipe, Store(root, ctx.recipe.name), ctx.plan, PROJECT)
    rng = random.Random(3)
    for ev in other.plan["eval"]:
        items = {t: [float(rng.random() < 0.6) for _ in range(40)]
                 for t in ("synth_mcqa_en", "synth_mcqa_zh")}
        results = {t: {"acc,none": sum(v) / len(v), "alias": t} for t, v in items.items()}
        with other.store.build("eval", ev.key, ev.inputs, ev.versions) as out:
            (out / "results.json").write_text(json.dumps({"harness": {}, "results": results}))
            (out / "samples.jsonl").write_text("".join(
                json.dumps({"task": t, "doc_id": i, "acc": x}) + "\n"
                for t, v in items.items() for i, x in enumerate(v)))
    monkeypatch.setenv("HARNESS_LEADERBOARD_DIR", str(tmp_path / "lb"))
    run_stage(other, "leaderboard")
    board = tmp_path / "lb" / ctx.recipe.name
    rows = {r["model"] for r in csv_rows(board / "leaderboard.csv")}
    assert {"hi_merging", "hm_model_wise_only"} <= rows
    ablations = (board / "ablations.md").read_text()
    assert "| hm_model_wise_only " in ablations and "stages=model_wise_only" in ablations
    variants = {r["variant"]: r for r in csv_rows(board / "ablations.csv")}
    assert set(variants) == {"hi_merging", "hm_model_wise_only"}
    gain = {m.row: m.grid[0]["dev_gain"] for m in collect(other) if m.options is not None}
    assert float(variants["hm_model_wise_only"]["dev_gain"]) == pytest.approx(
        gain["hm_model_wise_only"])


def csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
