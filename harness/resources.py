"""What a plan will need: disk, host RAM and GPU memory per unit, and its time.

Sizes come from the base model's parameter count in the recipe's dtype (W = weights in bytes):
read from the model's safetensors headers where the folder is here (a built tiny base, a
local folder, a hub snapshot in the cache), from the tiny spec before it is built, else from
the hub id's name ("7B": 7e9 parameters, marked as such). The per-unit rules are stated
estimates (the constants below), not measurements:

| unit | disk kept | host RAM | GPU memory (per GPU) |
|---|---|---|---|
| tiny base / full fine-tune | W | 2 W | 16 bytes a parameter (weights, grads, Adam) |
| LoRA fine-tune + export | W | 2 W | 1.3 W + 1 GiB |
| merge (grid or search) | W (the chosen point only) | (M + 3) W: base, M specialists, candidate, write | scorer: 1.2 W + 1 GiB |
| eval | ~0 | W | 1.2 W + 1 GiB |

Time comes from what earlier runs recorded (each manifest's `cost`, see harness/cost.py):
the median seconds of the same kind of unit in this recipe's run store, scaled by the number
of items where that differs; without a record, from DEFAULT_SECONDS scaled by model size,
marked "default".
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness.cost import unit_kind
from harness.plan import Unit

GiB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Seconds a unit of each kind takes without any record, for a 7e9-parameter model on one
# H100-class GPU (the README's assumptions), scaled linearly by parameter count.
DEFAULT_SECONDS = {"base": 3600.0, "specialist": 9000.0, "multitask": 11500.0,
                   "grid": 300.0, "search": 10800.0, "eval": 600.0, "data": 5.0}
REFERENCE_PARAMS = 7e9
_NAME_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")


@dataclass
class Need:
    disk: int = 0      # bytes kept in the run store
    ram: int = 0       # host memory at the unit's peak
    gpu: int = 0       # memory on each of its GPUs at the peak (0: runs on the CPU)
    shm: int = 0       # /dev/shm the vLLM scorer stages swapped weights through


@dataclass
class ModelSize:
    params: Optional[int]
    how: str           # "weights", "tiny spec", "hub id name", "unknown: ..."

    def bytes(self, dtype: str) -> Optional[int]:
        return None if self.params is None else self.params * DTYPE_BYTES[dtype]


def count_params(folder: Path) -> int:
    """Parameters in a folder's safetensors (headers only, no tensor is read)."""
    from harness.models import check_weights_folder, safetensors_header

    total = 0
    for path in check_weights_folder(folder):
        for name, entry in safetensors_header(path).items():
            if name != "__metadata__":
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                total += n
    return total


def config_params(c: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen2-style decoder from its config fields."""
    hidden, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or hidden // heads
    attn = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    mlp = 3 * hidden * c["intermediate_size"]
    embed = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
    return embed + layers * (attn + mlp + 2 * hidden) + hidden


def _tiny_params(t) -> int:
    return config_params({
        "hidden_size": t.hidden_size, "num_hidden_layers": t.num_layers,
        "vocab_size": t.vocab_size, "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads, "intermediate_size": t.intermediate_size,
        "tie_word_embeddings": True})


def base_size(ctx) -> ModelSize:
    """The base model's parameter count, from the best source available offline."""
    from harness import hub

    spec = ctx.recipe.base
    if spec.kind == "tiny":
        unit = next(u for u in ctx.plan["specialists"] if "corpus" in u.inputs)
        folder = ctx.store.path("specialists", unit.key) / "model"
        if ctx.store.has("specialists", unit.key):
            return ModelSize(count_params(folder), "weights")
        return ModelSize(_tiny_params(spec.tiny), "tiny spec")
    if spec.kind == "local":
        return ModelSize(count_params(Path(spec.model).expanduser()), "weights")
    commit = hub.cached_revision(spec.model, spec.revision)
    if commit is not None:
        folder = hub.repo_folder(spec.model) / "snapshots" / commit
        if list(folder.glob("*.safetensors")):
            return ModelSize(count_params(folder), "weights")
        if (folder / "config.json").is_file():
            return ModelSize(config_params(json.loads((folder / "config.json").read_text())),
                             "config")
    from harness import tiny_hub

    if spec.model in tiny_hub.TINY_REPOS:  # built here by `harness fetch`, from its spec
        return ModelSize(_tiny_params(tiny_hub.TINY_REPOS[spec.model].spec), "tiny spec")
    match = _NAME_SIZE.search(spec.model.split("/")[-1])
    if match:
        return ModelSize(int(float(match.group(1)) * 1e9), "hub id name")
    return ModelSize(None, "unknown: the base is not in the hub cache (run `harness fetch`)")


def kind_of(unit: Unit) -> str:
    return unit_kind(unit.stage, unit.inputs)


def _finetuning(unit: Unit) -> Optional[dict]:
    part = unit.inputs.get("specialist") or unit.inputs.get("multitask") or {}
    return part.get("finetuning")


def unit_need(ctx, unit: Unit, weights: Optional[int]) -> Optional[Need]:
    if weights is None:
        return None
    gpus = ctx.recipe.executor.num_gpus > 0
    kind = kind_of(unit)
    models = len(ctx.recipe.specialists)
    vllm_scorer = unit.stage == "merge" and unit.inputs["scorer"]["backend"] == "vllm"
    if kind in ("base", "specialist", "multitask"):
        lora = kind != "base" and (_finetuning(unit) or {}).get("type") == "lora"
        params = weights // DTYPE_BYTES[ctx.recipe.base.dtype]
        gpu = int(1.3 * weights + GiB) if lora else 16 * params
        return Need(disk=weights, ram=2 * weights, gpu=gpu if gpus else 0)
    if unit.stage == "merge":
        return Need(disk=weights, ram=(models + 3) * weights,
                    gpu=int(1.2 * weights + GiB) if gpus else 0,
                    shm=weights if vllm_scorer else 0)
    if unit.stage == "eval":
        return Need(ram=weights, gpu=int(1.2 * weights + GiB) if gpus else 0)
    return Need()


def records(store) -> dict[str, list[dict[str, Any]]]:
    """Every cost an earlier run left in this recipe's run store, by unit kind."""
    out: dict[str, list[dict[str, Any]]] = {}
    root = store.root / store.recipe
    for path in sorted(root.glob("*/*/manifest.json")) if root.is_dir() else []:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        cost = manifest.get("cost") or {}
        kind = cost.get("kind")
        if kind and isinstance(cost.get("seconds"), (int, float)):
            out.setdefault(kind, []).append(cost)
    return out


def estimate_seconds(unit: Unit, ctx, recorded: dict[str, list[dict]],
                     size: ModelSize) -> tuple[Optional[float], str]:
    """(seconds, source): the median of recorded units of the same kind (a grid unit scaled by
    its point count), else the stated default scaled by model size."""
    kind = kind_of(unit)
    past = recorded.get(kind) or []
    if past:
        if kind == "grid":
            per_point = [c["seconds"] / max(1, c.get("points") or 1) for c in past]
            return statistics.median(per_point) * len(unit.inputs["grid"]), "measured"
        return statistics.median(c["seconds"] for c in past), "measured"
    if size.params is None:
        return None, "unknown"
    seconds = DEFAULT_SECONDS.get(kind, 0.0) * size.params / REFERENCE_PARAMS
    if kind == "grid":
        seconds *= len(unit.inputs["grid"])
    return seconds, "default"


def gib(value: Optional[int]) -> str:
    return "?" if value is None else f"{value / GiB:.2f}"


def _with_records(need: Need, past: list[dict[str, Any]]) -> Need:
    """The rule's memory figures, raised to what earlier units of the same kind really peaked
    at (a small model's process overhead outweighs its weights)."""
    def peak(key: str) -> int:
        values = [c[key] for c in past if isinstance(c.get(key), (int, float))]
        return int(statistics.median(values) * 2 ** 20) if values else 0
    return Need(disk=need.disk, ram=max(need.ram, peak("peak_rss_mib")),
                gpu=max(need.gpu, peak("peak_gpu_mib")) if need.gpu else 0, shm=need.shm)


def _hours(seconds: Optional[float]) -> str:
    return "?" if seconds is None else f"{seconds / 3600:.3f}"


def report(ctx, stages) -> list[str]:
    """The dry run: every unit with its key, whether it is cached, its disk, RAM, GPU memory
    and time; then the plan's peaks and the time still to do."""
    size = base_size(ctx)
    weights = size.bytes(ctx.recipe.base.dtype)
    recorded = records(ctx.store)
    gpus = max(ctx.recipe.executor.num_gpus or 0, 0)
    lines = [f"{'stage':<12} {'key':<16}  {'status':<6}  {'disk GiB':>8} {'RAM GiB':>8} "
             f"{'GPU GiB':>8} {'hours':>7}  {'from':<8}  unit"]
    peak = Need()
    todo_disk = 0
    hours = {"measured": 0.0, "default": 0.0}
    unknown = cached_count = 0
    for stage in stages:
        for unit in ctx.plan[stage]:
            need = _with_records(unit_need(ctx, unit, weights) or Need(),
                                 recorded.get(kind_of(unit)) or [])
            cached = ctx.store.has(stage, unit.key)
            cached_count += cached
            seconds, source = (None, "") if cached else estimate_seconds(
                unit, ctx, recorded, size)
            peak.disk += need.disk
            todo_disk += 0 if cached else need.disk
            peak.ram, peak.gpu = max(peak.ram, need.ram), max(peak.gpu, need.gpu)
            peak.shm = max(peak.shm, need.shm)
            if source in hours:
                hours[source] += seconds / 3600
            elif not cached:
                unknown += 1
            status = "cached" if cached else "to do"
            lines.append(f"{stage:<12} {unit.key:<16}  {status:<6}  {gib(need.disk):>8} "
                         f"{gib(need.ram):>8} {gib(need.gpu):>8} "
                         f"{'' if cached else _hours(seconds):>7}  {source:<8}  {unit.name}")
    total = len(lines) - 1
    per = "GPU-hours" if gpus else "hours (CPU)"
    scale = gpus if gpus else 1
    known = weights is not None
    lines += [
        f"{total} units, {cached_count} cached, {total - cached_count} to do",
        f"base: {size.params if known else '?'} parameters ({size.how}), {gib(weights)} GiB in "
        f"{ctx.recipe.base.dtype}",
        f"peak disk (run store, every unit kept): {gib(peak.disk if known else None)} GiB; "
        f"still to write: {gib(todo_disk if known else None)} GiB",
        f"peak host RAM (largest unit): {gib(peak.ram if known else None)} GiB; peak GPU memory "
        f"per GPU: {gib(peak.gpu if known else None)} GiB; /dev/shm for the vLLM scorer: "
        f"{gib(peak.shm if known else None)} GiB",
        f"time still to do: {hours['measured'] * scale:.2f} {per} measured (earlier runs' "
        f"records) + {hours['default'] * scale:.2f} {per} from stated defaults "
        f"(harness/resources.py)" + (f" + {unknown} unit(s) of unknown size" if unknown else "")]
    return lines


def plan_needs(ctx) -> dict[str, int]:
    """The plan's peaks, for `harness check`: disk still to write, RAM, GPU, shm (bytes; -1 when
    the base's size is unknown)."""
    size = base_size(ctx)
    weights = size.bytes(ctx.recipe.base.dtype)
    if weights is None:
        return {"disk": -1, "ram": -1, "gpu": -1, "shm": -1}
    out = {"disk": 0, "ram": 0, "gpu": 0, "shm": 0}
    for stage, units in ctx.plan.items():
        for unit in units:
            need = unit_need(ctx, unit, weights) or Need()
            if not ctx.store.has(stage, unit.key):
                out["disk"] += need.disk
            out["ram"] = max(out["ram"], need.ram)
            out["gpu"] = max(out["gpu"], need.gpu)
            out["shm"] = max(out["shm"], need.shm)
    return out
