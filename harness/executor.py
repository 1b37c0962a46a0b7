"""Where a stage's units of work run: here, a local process pool, or a Ray cluster.

A unit function is a module-level `fn(ctx, unit)` that builds one unit through
`ctx.store.build(...)`; the run store is the only state units share, so a unit can run in any
process on any node that mounts it. The recipe's `executor:` picks the place:
- `kind: local`, `workers: 1` (default): in this process, one unit after another, so a resident
  model or engine is reused from one unit to the next;
- `kind: local`, `workers: N > 1`: a pool of N spawned processes (each keeps its own resident
  model between the units it gets);
- `kind: ray`, or RAY_ADDRESS set: one Ray task per unit with `num_gpus` GPUs and
  `cpus_per_unit` CPUs, on the cluster at `address` / RAY_ADDRESS, or a local Ray instance.

Everywhere a unit that raises is run once more (`retries`), then reported with its error while
the other units still finish; the stage then fails, listing every failed unit. A HarnessError
(bad input) is not retried: it would fail the same way.
"""
from __future__ import annotations

import logging
import os
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Callable

from tqdm.auto import tqdm

from harness.errors import HarnessError

log = logging.getLogger("harness")

UnitFn = Callable[[Any, Any], None]
FORWARDED_ENV = ("HARNESS_", "HF_", "TRANSFORMERS_", "VLLM_")


@dataclass
class Failure:
    unit: Any
    error: str
    attempts: int


class UnitsFailed(HarnessError):
    """Some units failed after their retry; the others finished and are in the store."""

    def __init__(self, stage: str, failures: list[Failure], total: int):
        self.failures = failures
        rest = ("the others finished and are cached; a re-run does only the failed"
                if total > len(failures) else "nothing else was to do")
        if len(failures) == 1:  # the common case stays one line
            f = failures[0]
            super().__init__(f"{stage}: {f.unit.name} [{f.unit.key}] failed after "
                             f"{f.attempts} attempt(s) ({rest}): {f.error}")
            return
        lines = [f"{stage}: {len(failures)} of {total} unit(s) failed ({rest}):"]
        lines += [f"  {f.unit.name} [{f.unit.key}] after {f.attempts} attempt(s): {f.error}"
                  for f in failures]
        super().__init__("\n".join(lines))


def kind(spec) -> str:
    return "ray" if spec.kind == "ray" or os.environ.get("RAY_ADDRESS") else "local"


def run_units(ctx, stage: str, units: list, fn: UnitFn) -> None:
    """Run fn(ctx, unit) for every unit on the recipe's executor; raise UnitsFailed at the end
    if any unit still failed after its retry."""
    if not units:
        return
    spec = ctx.recipe.executor
    where = kind(spec)
    if where == "ray":
        failures = _run_ray(ctx, stage, units, fn, spec)
    elif spec.workers > 1:
        failures = _run_pool(ctx, stage, units, fn, spec)
    else:
        failures = _run_here(ctx, stage, units, fn, spec)
    if failures:
        raise UnitsFailed(stage, failures, len(units))


def _metered_call(fn: UnitFn, ctx, unit) -> None:
    """Run one unit with its cost metered (recorded in its manifest, harness/cost.py)."""
    from harness.cost import metered

    with metered():
        fn(ctx, unit)


def _error(exc: BaseException) -> str:
    """One line: a HarnessError's own message (it names file, field and fix), else type: text."""
    if isinstance(exc, HarnessError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__


def _final(exc: BaseException, attempts: int, retries: int) -> bool:
    return isinstance(exc, HarnessError) or attempts > retries


def _run_here(ctx, stage: str, units: list, fn: UnitFn, spec) -> list[Failure]:
    failures = []
    for unit in tqdm(units, desc=stage, unit="unit"):
        attempts = 0
        while True:
            attempts += 1
            try:
                _metered_call(fn, ctx, unit)
                break
            except Exception as exc:  # noqa: BLE001 - reported below, never swallowed
                if _final(exc, attempts, spec.retries):
                    log.error("%s: %s [%s] failed: %s", stage, unit.name, unit.key, _error(exc))
                    failures.append(Failure(unit, _error(exc), attempts))
                    break
                log.warning("%s: %s [%s] failed (%s); retrying", stage, unit.name, unit.key,
                            _error(exc))
    return failures


def distributed(spec) -> bool:
    """Units run outside this process (so a unit must not wait on GPUs of its own units)."""
    return kind(spec) == "ray" or spec.workers > 1


def _init_worker(level: int, threads: int | None, gpus=None) -> None:
    logging.basicConfig(level=level, format="%(levelname)s [worker %(process)d] %(message)s")
    if gpus is not None:  # this worker's own GPUs, before anything touches CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get_nowait()
    if threads:
        import torch
        torch.set_num_threads(threads)


def gpu_slots(workers: int, num_gpus: float) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each pool worker: `num_gpus` (at least 1) GPUs each, in turn;
    none on a host without GPUs or when the recipe asks for none."""
    if not num_gpus:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d for d in visible.split(",") if d.strip()]
    else:
        import torch
        devices = [str(i) for i in range(torch.cuda.device_count())]
    if not devices:
        return []
    per = max(1, int(num_gpus))
    if workers * per > len(devices):
        log.warning("executor: %d workers x %d GPU(s) but %d GPU(s) visible: workers share GPUs",
                    workers, per, len(devices))
    return [",".join(devices[(w * per + i) % len(devices)] for i in range(per))
            for w in range(workers)]


def local_pool(spec) -> ProcessPoolExecutor:
    """`workers` spawned processes, each with its own GPUs (`num_gpus`) and torch threads."""
    # spawn, not fork: CUDA and vLLM cannot run in a forked child of a process that used them
    mp = get_context("spawn")
    gpus = None
    slots = gpu_slots(spec.workers, spec.num_gpus)
    if slots:
        gpus = mp.Queue()
        for slot in slots:
            gpus.put(slot)
    return ProcessPoolExecutor(spec.workers, mp_context=mp, initializer=_init_worker,
                               initargs=(log.getEffectiveLevel(), spec.cpus_per_unit, gpus))


def ray_init(spec) -> None:
    import ray

    if not ray.is_initialized():
        # The harness's own settings travel with the tasks (the train env, offline flags, the
        # hub cache), so a node started with `ray start` runs units as this process would.
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        # no address: a Ray instance on this machine, gone when the run ends
        ray.init(address=spec.address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=True, runtime_env={"env_vars": env})


def _run_pool(ctx, stage: str, units: list, fn: UnitFn, spec) -> list[Failure]:
    def pool() -> ProcessPoolExecutor:
        return local_pool(spec)

    failures: list[Failure] = []
    attempts = {u.key: 0 for u in units}
    executor = pool()
    pending: dict = {}  # future -> (unit, the pool it was sent to)

    def submit(unit) -> None:
        attempts[unit.key] += 1
        pending[executor.submit(_metered_call, fn, ctx, unit)] = (unit, executor)

    for unit in units:
        submit(unit)
    with tqdm(total=len(units), desc=stage, unit="unit") as bar:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                unit, sent_to = pending.pop(future)
                exc = future.exception()
                if exc is None:
                    bar.update()
                    continue
                if isinstance(exc, BrokenProcessPool) and sent_to is executor:
                    executor = pool()  # a worker died (OOM, signal): the pool is unusable
                if _final(exc, attempts[unit.key], spec.retries):
                    log.error("%s: %s [%s] failed: %s", stage, unit.name, unit.key, _error(exc))
                    failures.append(Failure(unit, _error(exc), attempts[unit.key]))
                    bar.update()
                else:
                    log.warning("%s: %s [%s] failed (%s); retrying", stage, unit.name,
                                unit.key, _error(exc))
                    submit(unit)
    executor.shutdown()
    return failures


def _ray_unit(fn: UnitFn, ctx, unit, level: int, threads: int | None) -> str | None:
    _init_worker(level, threads)
    try:
        _metered_call(fn, ctx, unit)
    except HarnessError as exc:  # bad input: returned, so Ray does not retry it
        return _error(exc)
    return None


def _run_ray(ctx, stage: str, units: list, fn: UnitFn, spec) -> list[Failure]:
    import ray

    ray_init(spec)
    # Ray retries a task that raised (retry_exceptions) or whose worker died, `retries` times
    task = ray.remote(num_gpus=spec.num_gpus, num_cpus=spec.cpus_per_unit or 1,
                      max_retries=spec.retries,
                      retry_exceptions=[Exception] if spec.retries else False)(_ray_unit)
    threads = spec.cpus_per_unit
    refs = {task.remote(fn, ctx, u, log.getEffectiveLevel(), threads): u for u in units}
    failures = []
    with tqdm(total=len(units), desc=f"{stage} (ray)", unit="unit") as bar:
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            unit = refs[done[0]]
            try:
                error, attempts = ray.get(done[0]), 1
            except Exception as exc:  # noqa: BLE001 - reported below
                log.debug("%s", "".join(traceback.format_exception(exc)))
                error, attempts = _error(getattr(exc, "cause", None) or exc), 1 + spec.retries
            if error:
                log.error("%s: %s [%s] failed: %s", stage, unit.name, unit.key, error)
                failures.append(Failure(unit, error, attempts))
            bar.update()
    return failures
