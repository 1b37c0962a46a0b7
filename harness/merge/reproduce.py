"""`harness reproduce CONFIG OUT`: a published mergekit YAML (leaderboard/<recipe>/models/)
run by mergekit, with its portable model names (`runs/...`, `org/name@commit`) read back as
this machine's folders. The tensors equal the merged model the leaderboard row evaluated."""
from __future__ import annotations

from pathlib import Path

import yaml

from harness.errors import HarnessError
from harness.merge.config import validate
from harness.portable import local_reference


def localise(config: dict, runs_root: Path) -> dict:
    config = dict(config)
    if "base_model" in config:
        config["base_model"] = local_reference(str(config["base_model"]), runs_root)
    config["models"] = [{**m, "model": local_reference(str(m["model"]), runs_root)}
                        for m in config.get("models") or []]
    tokenizer = config.get("tokenizer") or {}
    if tokenizer.get("source") not in (None, "base", "union"):  # the base's folder (linear)
        config["tokenizer"] = {**tokenizer, "source": local_reference(str(tokenizer["source"]),
                                                                      runs_root)}
    for ref in [config.get("base_model")] + [m["model"] for m in config["models"]]:
        if ref and not Path(ref).is_dir():
            raise HarnessError(f"{ref}: model folder not found; build the recipe's models into "
                               "this run store first (make recipe=NAME), or set HARNESS_RUNS_DIR "
                               "to the run store that holds them")
    return config


def reproduce(config_path: Path, out: Path, runs_root: Path, random_seed: int | None) -> Path:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    try:
        config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise HarnessError(f"{config_path}: cannot read the mergekit config ({exc})") from None
    if not isinstance(config, dict) or "merge_method" not in config:
        raise HarnessError(f"{config_path}: not a mergekit config (no merge_method)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HarnessError(f"{out}: exists and is not empty; give a new output folder")
    run_merge(validate(localise(config, runs_root)), str(out),
              MergeOptions(random_seed=random_seed, quiet=True, copy_tokenizer=True))
    return out
