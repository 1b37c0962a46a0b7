"""The specialists stage: the tiny base (pre-trained here), each specialist, the multi-task
fine-tune; every model a Hugging Face folder (safetensors) plus the LLaMA-Factory YAMLs that
reproduce it with plain `llamafactory-cli`."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness import tiny
from harness.data import synthetic
from harness.data.records import read_jsonl
from harness.errors import HarnessError
from harness.executor import run_units
from harness.models import base_reference, resolve_base
from harness.plan import Unit
from harness.recipe import Finetuning, Recipe
from harness.stages import Context
from harness.train import llamafactory as lf

log = logging.getLogger("harness")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def weights_differ(model: Path, base: Path) -> bool:
    """Stream tensors pairwise until one differs (cheap at 7B: usually the first layer)."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        return {name: f for f in sorted(folder.glob("*.safetensors"))
                for name in safe_open(str(f), "pt").keys()}

    mine, theirs = index(model), index(base)
    for name in sorted(mine):
        if name not in theirs:
            return True
        with safe_open(str(mine[name]), "pt") as a, safe_open(str(theirs[name]), "pt") as b:
            if not torch.equal(a.get_tensor(name), b.get_tensor(name)):
                return True
    return False


def _final(ctx: Context, unit: Unit) -> Path:
    return ctx.store.path("specialists", unit.key)


def _reproducible(config: dict[str, Any], tmp: Path, final: Path, **fresh: str) -> dict[str, Any]:
    """The YAML a researcher re-runs: artifact paths as published, fresh output folders."""
    return {**json.loads(json.dumps(config).replace(str(tmp), str(final))), **fresh}


def build_tiny_base(ctx: Context, unit: Unit) -> None:
    spec = ctx.recipe.base.tiny
    corpus_dir = ctx.store.path("data", unit.inputs["corpus"]) / "llamafactory"
    details: dict[str, Any] = {}
    with ctx.store.build("specialists", unit.key, unit.inputs, unit.versions, details) as tmp:
        texts = [r["text"] for r in read_jsonl(corpus_dir / "corpus.jsonl")]
        extras = synthetic.tokenizer_extras() + [ctx.recipe.base.system_prompt] * 200
        init = tmp / "init"  # config + tokenizer, no weights: LLaMA-Factory initialises them
        tiny.prepare_init(spec, tiny.FORMATS[spec.architecture], texts + extras, init)
        config = lf.pretrain_config(str(init), corpus_dir, str(tmp / "lf_output"),
                                    spec.pretrain_steps, spec.pretrain_lr,
                                    spec.pretrain_batch_size, spec.cutoff_len, seed=0)
        _train(ctx, unit, tmp, config, "pretrain", details)
        # LLaMA-Factory's `default` template would be written into the saved tokenizer; the
        # model keeps ours (its architecture's chat template).
        pretrained = tmp / ("pretrained" if spec.instruct_steps else "model")
        lf.publish_model(tmp / "lf_output", pretrained, tokenizer_from=init)
        shutil.rmtree(tmp / "lf_output")
        if spec.instruct_steps:
            _instruct(ctx, unit, tmp, pretrained, corpus_dir, init, details)
        details["parameters"] = _parameters(tmp / "model")


def _instruct(ctx: Context, unit: Unit, tmp: Path, pretrained: Path, corpus_dir: Path,
              init: Path, details: dict[str, Any]) -> None:
    """The tiny base's instruction stage: full SFT of the pre-trained model on the corpus
    unit's instruction set, through the recipe's chat template and system prompt (as the
    specialists are trained), into tmp/model."""
    spec, base = ctx.recipe.base.tiny, ctx.recipe.base
    ft = Finetuning(type="full", learning_rate=spec.instruct_lr, max_steps=spec.instruct_steps,
                    per_device_train_batch_size=spec.pretrain_batch_size,
                    cutoff_len=spec.cutoff_len)
    config = lf.sft_config(str(pretrained), "instruct", corpus_dir, base.template, ft,
                           str(tmp / "lf_instruct"), 0, False, {}, base.system_prompt)
    _train(ctx, unit, tmp, config, "instruct", details)
    lf.publish_model(tmp / "lf_instruct", tmp / "model", tokenizer_from=init)
    shutil.rmtree(tmp / "lf_instruct")  # pretrained/ stays: instruct.yaml starts from it


def _train(ctx: Context, unit: Unit, tmp: Path, config: dict[str, Any], name: str,
           details: dict[str, Any]) -> None:
    """Run one LLaMA-Factory training; keep its reproducible YAML, log and losses."""
    final = _final(ctx, unit)
    saves = f"saves/{ctx.recipe.name}/{unit.key}"
    if "deepspeed" in config:  # LLaMA-Factory runs elsewhere: the config path must be absolute
        config = {**config, "deepspeed": str(deepspeed_path(ctx, config["deepspeed"]))}
    lf.write_yaml(tmp / "llamafactory" / f"{name}.yaml",
                  _reproducible(config, tmp, final, output_dir=saves))
    with tempfile.TemporaryDirectory() as run_dir:
        run_yaml = lf.write_yaml(Path(run_dir) / f"{name}.yaml", config)
        # offline always: the resolver already put every hub file LLaMA-Factory reads in the
        # cache, and nothing else may be fetched behind its back
        lf.run("train", run_yaml, tmp / "llamafactory" / f"{name}.log", offline=True,
               env=_launch_env(ctx))
    losses = lf.train_losses(Path(config["output_dir"]))
    details[name] = {"losses": losses[:1] + losses[-1:], "logged_steps": len(losses)}
    samples = lf.train_samples(Path(config["output_dir"]))
    if samples is not None:
        details["items"] = samples


def check_cutoff(base: Path, dataset_dir: Path, dataset: str, cutoff: int, system_prompt: str,
                 template_note: str) -> None:
    """LLaMA-Factory cuts a prompt longer than cutoff_len from the END: the options and the
    answer cue would be lost and the model would learn nothing. Measure before training."""
    from transformers import AutoTokenizer

    from harness.scoring.requests import Requests

    requests = Requests(AutoTokenizer.from_pretrained(str(base)), True, system_prompt)
    info = json.loads((dataset_dir / "dataset_info.json").read_text())
    for name in dataset.split(","):
        rows = json.loads((dataset_dir / info[name]["file_name"]).read_text())[:200]
        lengths = [len(requests.context(f"{r['instruction']}\n{r['input']}")) + 2 for r in rows]
        over = sum(n > cutoff for n in lengths)
        if over > len(lengths) // 100:
            raise HarnessError(f"specialists: {name}: {over} of the first {len(lengths)} training "
                               f"prompts are longer than cutoff_len {cutoff} tokens (longest "
                               f"{max(lengths)}){template_note}; raise finetuning.cutoff_len")


def build_finetune(ctx: Context, unit: Unit, ft: Finetuning, dataset: str, dataset_dir: Path,
                   overrides: dict[str, Any]) -> None:
    recipe: Recipe = ctx.recipe
    base = resolve_base(ctx.store, unit.inputs["base"])
    # LLaMA-Factory reads a hub base by its id at the resolved commit, offline (the published
    # YAML names the id, not this machine's cache); the tiny or a local base by its folder
    model, revision = (base.ref, base.revision) if base.kind == "hub" else (str(base.path), None)
    details: dict[str, Any] = {"base": base.describe(), "dataset": dataset}
    with ctx.store.build("specialists", unit.key, unit.inputs, unit.versions, details) as tmp:
        if dataset_dir is None:  # multi-task: one dataset_info naming every specialist's file
            dataset_dir = _mixed_dataset_dir(ctx, tmp / "mixed_data")
        check_cutoff(base.path, dataset_dir, dataset, overrides.get("cutoff_len", ft.cutoff_len),
                     recipe.base.system_prompt, " with the chat template")
        output = tmp / ("adapter" if ft.type == "lora" else "lf_output")
        config = lf.sft_config(model, dataset, dataset_dir, recipe.base.template, ft, str(output),
                               unit.inputs["seed"], recipe.base.trust_remote_code, overrides,
                               recipe.base.system_prompt, revision)
        _train(ctx, unit, tmp, config, "train", details)
        if ft.type == "lora":
            export = lf.export_config(model, str(output), recipe.base.template,
                                      str(tmp / "exported"), recipe.base.trust_remote_code,
                                      revision)
            saves = f"saves/{recipe.name}/{unit.key}"  # where train.yaml puts the adapter
            lf.write_yaml(tmp / "llamafactory" / "export.yaml",
                          _reproducible(export, tmp, _final(ctx, unit), adapter_name_or_path=saves,
                                        export_dir=f"{saves}-merged"))
            with tempfile.TemporaryDirectory() as run_dir:
                lf.run("export", lf.write_yaml(Path(run_dir) / "export.yaml", export),
                       tmp / "llamafactory" / "export.log", offline=True)
            lf.publish_model(tmp / "exported", tmp / "model")
            shutil.rmtree(tmp / "exported")
            for pickled in output.glob("*.bin"):  # training_args.bin: a pickle, never loaded
                pickled.unlink()
        else:
            lf.publish_model(output, tmp / "model")
            shutil.rmtree(output)
        if not weights_differ(tmp / "model", base.path):
            raise HarnessError(f"specialists: {unit.name}: the exported weights equal the base "
                               f"({base.pinned}); LLaMA-Factory exported the unmerged base or "
                               "trained nothing. Check learning_rate/max_steps and the export log.")
        details["differs_from_base"] = True  # checked against the resolved base just above
        details["parameters"] = _parameters(tmp / "model")


def _mixed_dataset_dir(ctx: Context, folder: Path) -> Path:
    folder.mkdir(parents=True)
    info = {}
    for sp in ctx.recipe.specialists:
        data = ctx.store.path("data", _data_key(ctx, sp.dataset)) / "llamafactory"
        entry = json.loads((data / "dataset_info.json").read_text())[f"{sp.dataset}_train"]
        info[f"{sp.dataset}_train"] = {**entry, "file_name": str(data / entry["file_name"])}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return folder


def _data_key(ctx: Context, dataset: str) -> str:
    return next(u.key for u in ctx.plan["data"] if u.inputs.get("name") == dataset)


def _parameters(model: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in model.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for name in fh.keys():
                n = 1
                for d in fh.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def _launch_env(ctx: Context) -> dict[str, str]:
    """torchrun through LLaMA-Factory's CLI when the recipe asks for several GPUs or nodes."""
    ex = ctx.recipe.executor
    if ex.nproc_per_node == 1 and ex.nnodes == 1:
        return {}
    return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(ex.nproc_per_node),
            "NNODES": str(ex.nnodes)}


def deepspeed_path(ctx: Context, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else ctx.project / path


def check_deepspeed(ctx: Context) -> None:
    """A `deepspeed:` config in LLaMA-Factory overrides needs the file and the package."""
    recipe = ctx.recipe
    overrides = {f"specialists.{sp.name}.llamafactory": sp.llamafactory for sp in recipe.specialists}
    if recipe.multitask is not None:
        overrides["multitask.llamafactory"] = recipe.multitask.llamafactory
    for field, values in overrides.items():
        if "deepspeed" not in values:
            continue
        config = deepspeed_path(ctx, values["deepspeed"])
        if not config.is_file():
            raise HarnessError(f"recipe {recipe.name}: {field}.deepspeed: {config} does not "
                               "exist; give a DeepSpeed JSON (e.g. LLaMA-Factory's "
                               "examples/deepspeed/ds_z3_config.json) relative to the project")
        if not list(lf.train_env().glob("lib/python*/site-packages/deepspeed")):
            raise HarnessError(f"recipe {recipe.name}: {field}.deepspeed is set but the train "
                               f"env {lf.train_env()} has no deepspeed; on the GPU host run "
                               f"`{lf.train_env()}/bin/pip install deepspeed==0.19.8` (it "
                               "compiles against CUDA, so it is not in requirements/train.lock)")


def preflight(ctx: Context, units: list[Unit]) -> None:
    """Every check that needs no training, before any training starts."""
    recipe = ctx.recipe
    if recipe.base.template not in lf.known_templates():
        raise HarnessError(f"recipe {recipe.name}: base.template {recipe.base.template!r} is not "
                           "a LLaMA-Factory template; use e.g. qwen (Qwen2) or llama3 (Llama-3)")
    if recipe.base.kind != "tiny":  # a hub base resolves here, before any training
        base = resolve_base(ctx.store, base_reference(recipe.base))
        if not any((base.path / f).exists() for f in TOKENIZER_FILES):
            raise HarnessError(f"recipe {recipe.name}: base.model {base.pinned} has no tokenizer "
                               f"({' / '.join(TOKENIZER_FILES)}); save the tokenizer beside the weights")
    check_deepspeed(ctx)
    for sp in recipe.specialists:
        info_path = ctx.store.path("data", _data_key(ctx, sp.dataset)) / "llamafactory" / "dataset_info.json"
        if not info_path.exists():
            raise HarnessError(f"specialists: {sp.name}: dataset {sp.dataset} has no LLaMA-Factory "
                               f"files ({info_path}); run `harness data --recipe {recipe.name}` first")
        if f"{sp.dataset}_train" not in json.loads(info_path.read_text()):
            raise HarnessError(f"specialists: {sp.name}: {info_path} has no dataset "
                               f"{sp.dataset}_train; re-run the data stage")


def build_one(ctx: Context, unit: Unit) -> None:
    """One model: the tiny base, a specialist or the multi-task model (the executor's unit)."""
    if "corpus" in unit.inputs:
        build_tiny_base(ctx, unit)
    elif "specialist" in unit.inputs:
        sp = next(s for s in ctx.recipe.specialists if s.name == unit.inputs["specialist"]["name"])
        data_dir = ctx.store.path("data", unit.inputs["data"]) / "llamafactory"
        build_finetune(ctx, unit, sp.finetuning, f"{sp.dataset}_train", data_dir, sp.llamafactory)
    else:
        mt = ctx.recipe.multitask
        names = ",".join(f"{sp.dataset}_train" for sp in ctx.recipe.specialists)
        build_finetune(ctx, unit, mt.finetuning, names, None, mt.llamafactory)
    log.info("specialists: built %s [%s]", unit.name, unit.key)


def build(ctx: Context, units: list[Unit]) -> None:
    preflight(ctx, units)
    base = [u for u in units if u.name.startswith("base")]
    run_units(ctx, "specialists", base, build_one)  # the fine-tunes start from it
    run_units(ctx, "specialists", [u for u in units if u not in base], build_one)
