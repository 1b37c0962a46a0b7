"""What a unit really cost: seconds, peak host memory, peak GPU memory, items processed.

The executor meters every unit it runs (`metered`); the store writes the meter's reading into
the unit's manifest as `cost` when the unit's artifact is published, so the dry run's time
estimates (harness/resources.py) come from records of real runs. Host memory is the resident
set of this process and its children (LLaMA-Factory and vLLM run as child processes), sampled
twice a second; GPU memory is what NVML reports used on the visible GPUs (nvidia-ml-py, in the
GPU eval env), sampled the same way.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

SAMPLE_SECONDS = 0.5


def unit_kind(stage: str, inputs: dict[str, Any]) -> str:
    """base | specialist | multitask | grid | search | eval | data | leaderboard."""
    if stage == "specialists":
        if "corpus" in inputs:
            return "base"
        return "multitask" if "multitask" in inputs else "specialist"
    if stage == "merge":
        return "search" if "options" in inputs else "grid"
    return stage


def _host_rss() -> int:
    import psutil

    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass  # a child that just ended
    return total


def _gpu_handles() -> list:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        count = pynvml.nvmlDeviceGetCount()
        ids = ([int(i) for i in visible.split(",") if i.strip().isdigit()] if visible
               else range(count))
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in ids if i < count]
    except Exception:  # noqa: BLE001 - no driver, no GPU: nothing to sample
        return []


def _gpu_used(handles: list) -> int:
    import pynvml

    return max(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles)


class Meter:
    def __init__(self) -> None:
        self.started = time.time()
        self.peak_rss = _host_rss()
        self._gpus = _gpu_handles()
        self.peak_gpu: Optional[int] = _gpu_used(self._gpus) if self._gpus else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self.peak_rss = max(self.peak_rss, _host_rss())
                if self._gpus:
                    self.peak_gpu = max(self.peak_gpu or 0, _gpu_used(self._gpus))
            except Exception:  # noqa: BLE001 - a failed sample is skipped, never fatal
                pass

    def reading(self) -> dict[str, Any]:
        return {"seconds": round(time.time() - self.started, 3),
                "peak_rss_mib": round(self.peak_rss / 2 ** 20, 1),
                "peak_gpu_mib": (None if self.peak_gpu is None
                                 else round(self.peak_gpu / 2 ** 20, 1))}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


_ACTIVE: list[Meter] = []


@contextmanager
def metered() -> Iterator[Meter]:
    """Meter one unit of work (the executor wraps every unit in this)."""
    meter = Meter()
    _ACTIVE.append(meter)
    try:
        yield meter
    finally:
        _ACTIVE.remove(meter)
        meter.stop()


def reading(stage: str, inputs: dict[str, Any], details: dict[str, Any],
            started: float) -> dict[str, Any]:
    """The manifest's `cost`: the active unit's meter (or, outside the executor, the time since
    the artifact's build began) plus the items the builder counted."""
    if _ACTIVE:
        cost = _ACTIVE[-1].reading()
    else:
        cost = {"seconds": round(time.time() - started, 3), "peak_rss_mib": None,
                "peak_gpu_mib": None}
    cost["kind"] = unit_kind(stage, inputs)
    for key in ("items", "tokens", "points"):
        if isinstance(details.get(key), (int, float)):
            cost[key] = details[key]
    return cost
