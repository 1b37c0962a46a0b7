"""Specialists that already exist (`model:` a hub id or a local folder): merged without any
training, keyed by what they resolve to, checked against the base before any tensor work.

The fine-tunes are tiny random-weight Qwen2 models ('fine-tuned' as base + noise) that this
test publishes into its own hub cache under hub ids, as a user's hub cache holds downloaded
fine-tunes; every stage then runs for real on them, offline.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from harness import hub
from harness.errors import HarnessError
from harness.plan import build_plan
from harness.recipe import parse_recipe
from harness.stages import Context, run_stage
from harness.store import Store

from conftest import PROJECT, env_with, run_all
from tiny_models import make_model

# the shipped CPU recipe's hub ids (recipes/tiny_existing_en_zh.yaml)
SHIPPED = yaml.safe_load((PROJECT / "recipes" / "tiny_existing_en_zh.yaml").read_text())
BASE = SHIPPED["base"]["model"]
EN, ZH = (sp["model"] for sp in SHIPPED["specialists"])


def finetune(base: Path, folder: Path, seed: int, noise: float = 0.01) -> Path:
    """A 'fine-tune' of base: the same files, every tensor moved by a little noise."""
    shutil.copytree(base, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + noise * torch.randn(v.shape, generator=g) for k, v in tensors.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory):
    """A hub cache holding the base and two fine-tunes of it, published by this test."""
    root = tmp_path_factory.mktemp("existing")
    home = root / "hf_home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.delenv("HF_HUB_CACHE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        base = make_model(root / "models" / "base", seed=0)
        hub.publish(base, BASE)
        hub.publish(finetune(base, root / "models" / "en", 101), EN)
        hub.publish(finetune(base, root / "models" / "zh", 102), ZH)
    return home


@pytest.fixture
def hub_cache(hub_home, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(hub_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_home


def recipe_data(en: str = EN, zh: str = ZH) -> dict:
    """The shipped CPU recipe, reduced: fewer items, three methods."""
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_existing_en_zh.yaml").read_text())
    for ds in data["datasets"].values():
        ds.update(train_size=40, dev_size=20, test_size=30)
    data["specialists"][0]["model"], data["specialists"][1]["model"] = en, zh
    data["merges"] = [{"method": "linear", "grid": {"weight": [1.0]}},
                      {"method": "ties", "grid": {"density": [0.5], "weight": [1.0]}},
                      {"method": "hi_merging", "options": {"prune_grid": [1.0],
                                                           "scale_grid": [1.0]}}]
    # the random-weight stand-ins carry no chat template
    data["eval"].update(backend="hf", apply_chat_template=False, batch_size=16)
    data["scorer"] = {"backend": "hf", "mode": "loglikelihood", "split": "dev"}
    return data


def plan_of(data: dict):
    recipe = parse_recipe(data)
    return recipe, build_plan(recipe, PROJECT / "requirements")


def test_no_training_unit_is_planned(hub_cache, tmp_path, harness_bin):
    """The plan (and `harness run --dry-run`) holds no specialists unit: nothing is trained."""
    _, plan = plan_of(recipe_data())
    assert plan["specialists"] == []
    assert len(plan["merge"]) == 3 and len(plan["eval"]) == 1 + 2 + 3
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "tasks").symlink_to(PROJECT / "tasks", target_is_directory=True)
    (project / "requirements").symlink_to(PROJECT / "requirements", target_is_directory=True)
    (project / "recipes" / "tiny_existing_en_zh.yaml").write_text(yaml.safe_dump(recipe_data()))
    env = env_with(HARNESS_PROJECT=project, HARNESS_RUNS_DIR=tmp_path / "runs")
    out = subprocess.run(harness_bin + ["run", "--recipe", "tiny_existing_en_zh",
                                          "--dry-run"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert not [l for l in lines if l.startswith("specialists ")]
    assert [l for l in lines if l.startswith("merge ")]


def test_merged_without_training_through_every_stage(hub_cache, tmp_path):
    ctx = run_all(tmp_path, recipe_data())
    assert ctx.plan["specialists"] == []
    unit = next(u for u in ctx.plan["merge"] if u.inputs["method"] == "ties")
    details = ctx.store.manifest("merge", unit.key)["details"]
    assert details["mergekit_equals_in_memory"] is True
    commits = {ref["id"]: ref["commit"] for ref in unit.inputs["existing"].values()}
    assert commits == {EN: hub.cached_revision(EN), ZH: hub.cached_revision(ZH)}
    config = yaml.safe_load((ctx.store.path("merge", unit.key) / "mergekit.yaml").read_text())
    assert [m["model"] for m in config["models"]] == [
        str(hub.resolve(EN).path), str(hub.resolve(ZH).path)]  # the hub-cache snapshots
    with open(ctx.project / "leaderboard" / ctx.recipe.name / "leaderboard.csv") as fh:
        import csv
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert {"base", "en_mcqa", "zh_mcqa", "linear", "ties", "hi_merging"} <= set(rows)
    assert rows["en_mcqa"]["kind"] == "specialist" and rows["en_mcqa"]["status"] == "measured"
    published = (ctx.project / "leaderboard" / ctx.recipe.name / "models" / "ties.json").read_text()
    assert f"{EN}@{hub.cached_revision(EN)}" in published and str(hub_cache) not in published


def test_a_new_upstream_revision_rekeys_the_merges(hub_cache, tmp_path):
    """Publishing new weights under the same hub id (refs/main moves) changes the key of
    every merge built from it and of their evals; the base's eval keeps its key."""
    _, before = plan_of(recipe_data())
    snapshot = hub.resolve(EN).path
    changed = finetune(snapshot, tmp_path / "en_v2", seed=7)
    hub.publish(changed, EN)
    try:
        _, after = plan_of(recipe_data())
        assert {u.key for u in before["merge"]}.isdisjoint(u.key for u in after["merge"])
        assert before["eval"][0].key == after["eval"][0].key  # the base
        first = before["merge"][0].inputs["existing"][before["merge"][0].inputs["models"][0]]
        pinned = recipe_data()
        pinned["specialists"][0]["revision"] = first["commit"]
        _, old = plan_of(pinned)  # pinned to the first commit: main's move does not reach it
        ref = old["merge"][0].inputs["existing"][old["merge"][0].inputs["models"][0]]
        assert ref["commit"] == first["commit"] != hub.cached_revision(EN)
    finally:
        hub.publish(snapshot_copy(tmp_path, snapshot), EN)  # leave the module's cache as it was


def snapshot_copy(tmp_path: Path, snapshot: Path) -> Path:
    out = tmp_path / "restore"
    if not out.exists():
        shutil.copytree(snapshot, out, symlinks=False)
    return out


def test_a_local_folder_is_keyed_by_its_weights(hub_cache, tmp_path):
    folder = finetune(hub.resolve(BASE).path, tmp_path / "local_en", seed=11)
    _, before = plan_of(recipe_data(en=str(folder)))
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3  # the same shapes, other values
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _, after = plan_of(recipe_data(en=str(folder)))
    assert {u.key for u in before["merge"]}.isdisjoint(u.key for u in after["merge"])


@pytest.mark.parametrize("change,field", [("layers", "num_hidden_layers: 2 vs 4"),
                                          ("vocab", "vocab_size: 3064 vs 3000")])
def test_an_incompatible_fine_tune_is_refused_before_any_tensor_work(hub_cache, tmp_path,
                                                                     change, field):
    from harness import tiny
    from harness.recipe import TinyBase
    from tiny_models import tokenizer

    spec = TinyBase(num_layers=2) if change == "layers" else TinyBase()
    model = tiny.init_model(spec, tokenizer(), seed=5)
    if change == "vocab":
        model.resize_token_embeddings(3000 + 64)
    other = tiny.save(model, tokenizer(), tmp_path / "odd")
    recipe, plan = plan_of(recipe_data(zh=str(other)))
    ctx = Context(recipe, Store(tmp_path / "runs", recipe.name), plan, tmp_path)
    run_stage(ctx, "data")
    with pytest.raises(HarnessError) as err:
        run_stage(ctx, "merge")
    message = str(err.value)
    assert "\n" not in message and f"differ in {field}" in message
    assert "zh_mcqa" in message and str(other) in message and BASE in message
    assert not (ctx.store.root / recipe.name / "merge").exists() or not any(
        p.name != ".lock" for p in (ctx.store.root / recipe.name / "merge").iterdir())


def test_publish_puts_a_recipes_models_under_the_ids_the_cpu_recipe_names(tmp_path, monkeypatch):
    """`harness publish --recipe tiny_en_zh_mcqa` writes its base and seed-0 specialists into
    the hub cache under exactly the ids tiny_existing_en_zh names."""
    from harness.publish import publish_models
    from harness.recipe import load_recipe
    from tiny_models import plant_family

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    recipe = load_recipe("tiny_en_zh_mcqa", PROJECT / "recipes")
    ctx = Context(recipe, Store(tmp_path / "runs", recipe.store_name),
                  build_plan(recipe, PROJECT / "requirements"), PROJECT)
    base, *trained = [u for u in ctx.plan["specialists"] if "multitask" not in u.inputs]
    plant_family(ctx.store, base.key, [u.key for u in trained])
    published = {r.ref: r for r in publish_models(ctx, seed=0)}
    assert set(published) == {BASE, EN, ZH}
    for ref, unit in ((BASE, base), (EN, trained[0]), (ZH, trained[1])):
        folder = ctx.store.path("specialists", unit.key) / "model"
        assert (hub.resolve(ref).path / "model.safetensors").read_bytes() == (
            folder / "model.safetensors").read_bytes()
    with pytest.raises(HarnessError, match="has no seed 5"):
        publish_models(ctx, seed=5)


def test_a_fine_tune_with_another_vocabulary_is_mapped_onto_the_bases(hub_cache, tmp_path):
    """`tokenizer_source: base` on a fine-tune published with its own numbering of the
    vocabulary and tokens of its own: the merge stage maps its rows onto the base's ids
    (recorded in the manifest, keyed in the plan), and every merged model, Hi-Merging's
    included, equals the one built from the fine-tune with the base's numbering."""
    from tiny_models import renumbered

    original = hub.resolve(ZH).path
    other = renumbered(original, tmp_path / "zh_renumbered", seed=3)
    plain = recipe_data()
    mapped = recipe_data(zh=str(other))
    mapped["specialists"][1]["tokenizer_source"] = "base"
    built = {}
    for name, data in (("plain", plain), ("mapped", mapped)):
        recipe, plan = plan_of(data)
        ctx = Context(recipe, Store(tmp_path / name, recipe.name), plan, tmp_path)
        run_stage(ctx, "data")
        run_stage(ctx, "merge")
        built[name] = {u.inputs["method"]: (u, ctx.store) for u in plan["merge"]}
    for method, (unit, store) in built["mapped"].items():
        assert unit.inputs["tokenizer_source"] == {"zh_mcqa": "base"}
        details = store.manifest("merge", unit.key)["details"]
        assert details["mergekit_equals_in_memory"] is True
        record = details["preflight"]["tokenizer_source"]
        assert record["mapped"]["zh_mcqa"]["dropped"] == 4 and record["mergekit"] == {"source": "base"}
        config = yaml.safe_load((store.path("merge", unit.key) / "mergekit.yaml").read_text())
        assert config["tokenizer"]["source"] == ("base" if method != "linear"
                                                 else str(hub.resolve(BASE).path))
        plain_unit, plain_store = built["plain"][method]
        assert "tokenizer_source" not in plain_unit.inputs and plain_unit.key != unit.key
        ours = load_file(str(store.path("merge", unit.key) / "model" / "model.safetensors"))
        theirs = load_file(str(plain_store.path("merge", plain_unit.key) / "model" /
                               "model.safetensors"))
        assert ours.keys() == theirs.keys()
        assert [n for n in ours if not torch.equal(ours[n], theirs[n])] == [], method
