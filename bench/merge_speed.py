"""Merge time and peak memory per method, and the in-memory engine's one-layer candidate
against a full-model merge (make bench). Tiny recipe shape; medians over repeats.

Each method runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record  # noqa: E402

REPEATS = 3
VALUES = {"linear": {"weight": 0.5}, "task_arithmetic": {"weight": 0.7},
          "ties": {"density": 0.5}, "dare_ties": {"density": 0.5}, "dare_linear": {"density": 0.5},
          "breadcrumbs": {"density": 0.7}, "della": {"density": 0.5}}


def family(root: Path) -> tuple[Path, list[Path]]:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from harness import tiny

    base = tiny.build_untrained(root / "base", seed=0)
    models = []
    for i in range(2):
        folder = shutil.copytree(base, root / f"m{i}")
        t = load_file(str(folder / "model.safetensors"))
        g = torch.Generator().manual_seed(i)
        save_file({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in t.items()},
                  str(folder / "model.safetensors"), metadata={"format": "pt"})
        models.append(folder)
    return base, models


def one_method(method: str, base: str, models: list[str], out: str) -> None:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from harness.merge.config import mergekit_config, validate

    config = validate(mergekit_config(method, VALUES[method], base, models, "float32"))
    times = []
    for r in range(REPEATS):
        t = time.perf_counter()
        run_merge(config, f"{out}/{r}", MergeOptions(random_seed=0, quiet=True))
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "median_s": statistics.median(times), "peak_mib": peak}))


def main() -> None:
    from harness.merge.memory import InMemoryMerger

    with tempfile.TemporaryDirectory() as tmp:
        base, models = family(Path(tmp))
        print(f"{'method':16s} {'mergekit s':>10s} {'peak RSS MiB':>12s}")
        for method in VALUES:
            proc = subprocess.run([sys.executable, __file__, "one", method, str(base),
                                   *map(str, models), f"{tmp}/out-{method}"],
                                  capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{method:16s} {row['median_s']:10.3f} {row['peak_mib']:12.0f}")
            record(**{f"merge_{method}_s": row["median_s"], f"merge_{method}_peak_mib": row["peak_mib"]})
        engine = InMemoryMerger(base, {f"m{i}": m for i, m in enumerate(models)})
        layer = engine.layer_tensors(0)
        for method in ("ties", "dare_ties"):
            full = statistics.median(_timed(lambda: engine.merge(method, VALUES[method], seed=0)))
            one = statistics.median(_timed(lambda: engine.merge(method, VALUES[method],
                                                                tensors=layer, seed=0)))
            record(**{f"in_memory_{method}_full_s": full, f"in_memory_{method}_one_layer_s": one})
            print(f"in-memory {method}: full model {full:.3f} s, one-layer candidate {one:.3f} s "
                  f"({full / one:.1f}x faster; {len(layer)} of {len(engine.names)} tensors)")


def _timed(fn) -> list[float]:
    out = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one_method(sys.argv[2], sys.argv[3], sys.argv[4:-1], sys.argv[-1])
    else:
        main()
