"""Wall time of `make recipe=tiny_en_zh` from an empty run store (envs installed), then of
a second run with nothing changed: the tiny recipe's budgets are 20 minutes and 30 seconds.

Runs in a scratch run store and publishes the leaderboard to a scratch folder, so neither
runs/ nor the committed leaderboard/ is touched.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record

PROJECT = Path(__file__).resolve().parents[1]


def timed_make(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(["make", "-s", "all", "recipe=tiny_en_zh"], cwd=PROJECT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as tmp:
        env = {**os.environ, "HARNESS_RUNS_DIR": f"{tmp}/runs",
               "HARNESS_LEADERBOARD_DIR": f"{tmp}/leaderboard"}
        cold = timed_make(env)
        print(f"tiny recipe, empty run store: {cold:.0f} s (budget 1200 s)", flush=True)
        noop = timed_make(env)
        print(f"tiny recipe, nothing changed: {noop:.1f} s (budget 30 s)", flush=True)
    record(tiny_recipe_cold_s=round(cold, 1), tiny_recipe_noop_s=round(noop, 1))


if __name__ == "__main__":
    sys.exit(main())
