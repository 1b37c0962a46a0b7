"""The specialists stage with the real LLaMA-Factory (tiny sizes: a few optimiser steps)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from harness.errors import HarnessError
from harness.plan import build_plan
from harness.recipe import parse_recipe
from harness.stages import Context, run_stage
from harness.store import Store
from harness.train import llamafactory as lf
from harness.train.stage import weights_differ

from conftest import PROJECT
from tiny_models import make_model

pytestmark = pytest.mark.skipif(
    not (Path(os.environ.get("HARNESS_TRAIN_ENV", "") or
              Path(__import__("sys").prefix).parent / "train") / "bin" / "llamafactory-cli").exists(),
    reason="train env not built")


def tiny_recipe(**changes) -> dict:
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh_mcqa.yaml").read_text())
    data["multitask"]["enabled"] = False
    data["base"]["tiny"].update(pretrain_steps=12, pretrain_batch_size=16, instruct_steps=4,
                                instruct_items=64)
    for sp in data["specialists"]:
        sp["finetuning"].update(max_steps=6, per_device_train_batch_size=8)
    data["specialists"][0]["finetuning"].update(type="full", learning_rate=5e-4)
    data["specialists"][1]["finetuning"].update(type="lora", learning_rate=1e-3)
    for ds in data["datasets"].values():
        ds.update(train_size=200, dev_size=20, test_size=40)
    data["base"]["tiny"]["corpus_statements"] = 2000
    data["merges"] = [{"method": "linear", "grid": {"weight": [1.0]}}]
    data.update(changes)
    return data


def context(data: dict, root: Path) -> Context:
    recipe = parse_recipe(data)
    return Context(recipe, Store(root, recipe.name),
                   build_plan(recipe, PROJECT / "requirements"), PROJECT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec") / "runs"
    ctx = context(tiny_recipe(), root)
    run_stage(ctx, "data")
    built = run_stage(ctx, "specialists")
    return ctx, built


def test_stage_builds_base_and_specialists(trained):
    ctx, built = trained
    assert [u.name for u in built] == [u.name for u in ctx.plan["specialists"]]
    base_unit, full_unit, lora_unit = ctx.plan["specialists"]
    base = ctx.store.path("specialists", base_unit.key) / "model"
    for unit in (full_unit, lora_unit):
        folder = ctx.store.path("specialists", unit.key)
        model = folder / "model"
        assert (model / "model.safetensors").exists() and (model / "tokenizer.json").exists()
        assert not list(folder.rglob("*.bin"))  # no pickles in an artifact
        assert weights_differ(model, base)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["details"]["train"]["logged_steps"] >= 0
        config = yaml.safe_load((folder / "llamafactory" / "train.yaml").read_text())
        assert config["model_name_or_path"] == str(base)  # published path, not the temp one
        assert config["template"] == "qwen" and config["seed"] == 0
        assert ".tmp-" not in json.dumps(config)
    assert (ctx.store.path("specialists", lora_unit.key) / "llamafactory" / "export.yaml").exists()
    lora_cfg = yaml.safe_load((ctx.store.path("specialists", lora_unit.key) / "llamafactory"
                               / "train.yaml").read_text())
    assert lora_cfg["finetuning_type"] == "lora" and lora_cfg["lora_rank"] == 8
    assert lora_cfg["lora_alpha"] == 16 and lora_cfg["lora_dropout"] == 0.01
    # the tiny base: pre-trained, then instruction-tuned through the chat template from the
    # pre-trained folder its published instruct.yaml names
    base_folder = ctx.store.path("specialists", base_unit.key)
    instruct = yaml.safe_load((base_folder / "llamafactory" / "instruct.yaml").read_text())
    assert instruct["stage"] == "sft" and instruct["template"] == "qwen"
    assert instruct["model_name_or_path"] == str(base_folder / "pretrained")
    assert (base_folder / "pretrained" / "model.safetensors").is_file()
    assert weights_differ(base, base_folder / "pretrained")  # the instruction stage trained
    assert json.loads((base_folder / "manifest.json").read_text())["details"]["instruct"]
    # the base keeps the qwen chat template the specialists are trained and scored with
    tok = json.loads((base / "tokenizer_config.json").read_text())
    assert "You are Qwen" in (tok.get("chat_template") or (base / "chat_template.jinja").read_text())


def test_rerun_trains_nothing(trained):
    ctx, _ = trained
    assert run_stage(ctx, "specialists") == []


def test_changing_one_specialist_retrains_only_it(trained, tmp_path):
    ctx, _ = trained
    data = tiny_recipe()
    data["specialists"][0]["finetuning"]["learning_rate"] = 7e-4
    other = context(data, ctx.store.root)
    todo = [u.name for u in other.plan["specialists"] if not other.store.has("specialists", u.key)]
    assert todo == ["specialist en_mcqa seed=0"]


def test_emitted_yaml_reproduces_the_specialist(trained, tmp_path):
    ctx, _ = trained
    unit = ctx.plan["specialists"][2]  # the LoRA specialist
    folder = ctx.store.path("specialists", unit.key)
    train_yaml = folder / "llamafactory" / "train.yaml"
    proc = subprocess.run([str(lf.train_env() / "bin" / "llamafactory-cli"), "train", str(train_yaml)],
                          cwd=tmp_path, env=lf.lf_env(offline=True), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    output = tmp_path / yaml.safe_load(train_yaml.read_text())["output_dir"]
    again = load_file(str(output / "adapter_model.safetensors"))
    ours = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    assert again.keys() == ours.keys()
    for name in ours:
        assert torch.allclose(again[name], ours[name], atol=1e-6), name


def test_unknown_template_fails_before_training(tmp_path):
    data = tiny_recipe()
    data["base"]["template"] = "qwen9"
    ctx = context(data, tmp_path)
    run_stage(ctx, "data")
    with pytest.raises(HarnessError, match="base.template 'qwen9' is not a LLaMA-Factory template"):
        run_stage(ctx, "specialists")
    folder = ctx.store.stage_dir("specialists")
    assert not folder.exists() or not any(folder.iterdir())


def test_missing_dataset_fails_before_training(tmp_path):
    ctx = context(tiny_recipe(), tmp_path)
    run_stage(ctx, "data")
    unit = next(u for u in ctx.plan["data"] if u.inputs.get("name") == "synth_mcqa_zh")
    info = ctx.store.path("data", unit.key) / "llamafactory" / "dataset_info.json"
    info.write_text(json.dumps({"other_train": {}}))
    with pytest.raises(HarnessError, match="has no dataset synth_mcqa_zh_train"):
        run_stage(ctx, "specialists")


def test_base_folder_without_tokenizer_fails_before_training(tmp_path):
    base = make_model(tmp_path / "base", seed=0)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (base / name).unlink(missing_ok=True)
    data = tiny_recipe()
    data["base"] = {"model": str(base), "template": "qwen"}
    ctx = context(data, tmp_path / "runs")
    run_stage(ctx, "data")
    with pytest.raises(HarnessError, match=r"has no tokenizer"):
        run_stage(ctx, "specialists")


def test_weights_differ_detects_an_unchanged_export(tmp_path):
    a = make_model(tmp_path / "a", seed=0)
    b = shutil.copytree(a, tmp_path / "b")
    assert not weights_differ(b, a)
    c = make_model(tmp_path / "c", seed=1)
    assert weights_differ(c, a)


def test_prompts_longer_than_cutoff_fail_before_training(trained, tmp_path):
    ctx, _ = trained
    data = tiny_recipe()
    data["specialists"][0]["finetuning"]["cutoff_len"] = 64  # the options would be cut off
    other = context(data, ctx.store.root)
    with pytest.raises(HarnessError, match=r"synth_mcqa_en_train: \d+ of the first 200 training "
                                           r"prompts are longer than cutoff_len 64"):
        run_stage(other, "specialists")
    unit = next(u for u in other.plan["specialists"] if u.name.startswith("specialist en_mcqa"))
    assert not other.store.has("specialists", unit.key)


def test_deepspeed_override_is_checked_before_training(tmp_path):
    data = tiny_recipe()
    data["specialists"][0]["llamafactory"] = {"deepspeed": "missing/ds_z3.json"}
    ctx = context(data, tmp_path)
    run_stage(ctx, "data")
    with pytest.raises(HarnessError, match=r"llamafactory.deepspeed: .*missing/ds_z3.json does not exist"):
        run_stage(ctx, "specialists")
    config = tmp_path / "ds_z3.json"
    config.write_text("{}")
    data["specialists"][0]["llamafactory"] = {"deepspeed": str(config)}
    ctx = context(data, tmp_path)
    # the train env here has no deepspeed (it is installed on GPU hosts, see README)
    with pytest.raises(HarnessError, match=r"llamafactory.deepspeed is set but the train env .* has no deepspeed"):
        run_stage(ctx, "specialists")
    assert not ctx.store.stage_dir("specialists").exists() or not any(
        p for p in ctx.store.stage_dir("specialists").iterdir() if not p.name.startswith("."))
