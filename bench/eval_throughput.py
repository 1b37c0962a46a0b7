"""Eval throughput per backend on the tiny recipe's tasks (make bench).

Four tiny models (the tiny recipe's shape; random weights until the specialists stage lands)
are evaluated by the eval stage's own backends, in one process per backend as the stage does.
Prints items/s per backend (median over models), and for vLLM the engine start against an
in-place swap: the saving that one resident engine brings.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record  # noqa: E402


def main(backend_name: str, limit: int) -> None:
    import os

    from lm_eval.tasks import TaskManager

    from harness import tiny
    from harness.evaluation.stage import BACKENDS, evaluate, serve_data
    from harness.plan import build_plan
    from harness.recipe import parse_recipe
    from harness.stages import Context, run_stage
    from harness.store import Store

    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh.yaml").read_text())
    data["eval"].update(limit=limit, backend=backend_name)
    recipe = parse_recipe(data)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(recipe, Store(Path(tmp) / "runs", recipe.name),
                      build_plan(recipe, PROJECT / "requirements"), PROJECT)
        run_stage(ctx, "data")
        models = [tiny.build_untrained(Path(tmp) / f"m{i}", seed=i) for i in range(4)]
        served = Path(tmp) / "served"
        served.mkdir()
        os.environ["HARNESS_DATA_DIR"] = str(serve_data(ctx, ctx.plan["eval"][0].inputs["data"], served))
        tm = TaskManager(include_path=str(PROJECT / "tasks"), include_defaults=False)
        backend = BACKENDS[backend_name](ctx)
        load_s, eval_s, items = [], [], 0
        for model in models:
            t0 = time.perf_counter()
            lm = backend.lm_for(str(model))
            t1 = time.perf_counter()
            out = evaluate(lm, ctx, tm)
            t2 = time.perf_counter()
            items = sum(n["effective"] for n in out["n-samples"].values())
            load_s.append(t1 - t0)
            eval_s.append(t2 - t1)
        rate = [items / s for s in eval_s]
        print(f"eval[{backend_name}]: {items} items per model, {statistics.median(rate):.1f} items/s "
              f"(median of {len(models)} models; min {min(rate):.1f}, max {max(rate):.1f})")
        record(**{f"eval_items_per_s_{backend_name}": statistics.median(rate)})
        if backend_name == "vllm":
            swap = statistics.median(load_s[1:])
            record(eval_vllm_engine_start_s=load_s[0], eval_vllm_swap_s=swap)
            print(f"eval[vllm]: engine start {load_s[0]:.1f} s, in-place swap {swap:.3f} s "
                  f"(median of {len(load_s) - 1}); start/swap = {load_s[0] / swap:.0f}x")
        else:
            print(f"eval[hf]: model load {statistics.median(load_s):.2f} s (median)")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100)
