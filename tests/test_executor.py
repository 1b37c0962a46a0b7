"""The executor runs units here, in a process pool, or on Ray (a real local Ray instance with 2
CPUs): a unit that raises is retried once, then reported with its error, and the other units
still finish. The units below are this test's own functions (the executor's logic is under
test, not a stage's); they leave files in a shared folder as the run store would."""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.errors import HarnessError
from harness.executor import UnitsFailed, run_units
from harness.recipe import ExecutorSpec


def unit_fn(ctx, unit):
    root = Path(ctx.root)
    attempt = len(list(root.glob(f"{unit.key}.attempt*"))) + 1
    (root / f"{unit.key}.attempt{attempt}").touch()
    if unit.key == "flaky" and attempt == 1:
        raise RuntimeError("flaky: first attempt fails")
    if unit.key == "broken":
        raise ValueError(f"broken on attempt {attempt}")
    if unit.key == "bad_input":
        raise HarnessError("recipe x.yaml: field y is wrong; set it to z")
    (root / f"{unit.key}.done").write_text(str(os.getpid()))


def units(*keys):
    return [SimpleNamespace(name=f"unit-{k}", key=k) for k in keys]


def ctx_for(tmp_path, **spec):
    return SimpleNamespace(root=str(tmp_path), recipe=SimpleNamespace(executor=ExecutorSpec(**spec)))


def attempts(tmp_path, key):
    return len(list(Path(tmp_path).glob(f"{key}.attempt*")))


def ran_here(tmp_path, key):
    return (Path(tmp_path) / f"{key}.done").read_text() == str(os.getpid())


def check_outcome(tmp_path, excinfo):
    failed = {f.unit.key: f for f in excinfo.value.failures}
    assert set(failed) == {"broken", "bad_input"}
    assert "broken on attempt 2" in failed["broken"].error           # retried once, then reported
    assert attempts(tmp_path, "broken") == 2
    assert attempts(tmp_path, "bad_input") == 1                     # bad input is not retried
    assert "field y is wrong" in failed["bad_input"].error
    assert attempts(tmp_path, "flaky") == 2                         # the retry succeeded
    for key in ("a", "flaky", "b"):                                 # the others all finished
        assert (Path(tmp_path) / f"{key}.done").exists()
    message = str(excinfo.value)
    assert "2 of 5 unit(s) failed" in message and "unit-broken [broken]" in message


@pytest.mark.parametrize("workers", [1, 2])
def test_local_executor_retries_once_then_reports(tmp_path, workers, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ctx = ctx_for(tmp_path, workers=workers)
    with pytest.raises(UnitsFailed) as excinfo:
        run_units(ctx, "test", units("a", "broken", "flaky", "bad_input", "b"), unit_fn)
    check_outcome(tmp_path, excinfo)
    assert ran_here(tmp_path, "a") == (workers == 1)  # workers: 1 runs in this process


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    # the workers import this module by value: tests/ is not on their path
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_executor_retries_once_then_reports(tmp_path, local_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ctx = ctx_for(tmp_path, kind="ray", cpus_per_unit=1)
    with pytest.raises(UnitsFailed) as excinfo:
        run_units(ctx, "test", units("a", "broken", "flaky", "bad_input", "b"), unit_fn)
    check_outcome(tmp_path, excinfo)
    assert not ran_here(tmp_path, "a")


def test_ray_address_selects_ray(tmp_path, local_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # the instance the fixture started
    ctx = ctx_for(tmp_path)                      # recipe says local
    run_units(ctx, "test", units("a"), unit_fn)
    assert not ran_here(tmp_path, "a")


def test_pool_workers_get_their_own_gpus(monkeypatch):
    from harness.executor import gpu_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert gpu_slots(4, 1) == ["0", "1", "2", "3"]
    assert gpu_slots(2, 2) == ["0,1", "2,3"]
    assert gpu_slots(2, 0) == []                        # the recipe asks for none
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slots(2, 1) == []                        # no GPU visible
