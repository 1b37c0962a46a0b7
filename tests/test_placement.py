"""Where models go: the GPU whenever this process sees one. The availability check is patched
(this host has no GPU) and the device a model is sent to is recorded; nothing is computed."""
from types import SimpleNamespace

import pytest
import torch

from harness.devices import torch_device

from tiny_models import make_model


@pytest.fixture
def on_cuda(monkeypatch):
    """CUDA 'available', and Module.to records its device instead of moving anything."""
    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(
        (a[0] if a else k.get("device"))) or self)
    return moved


def test_the_device_is_cuda_when_cuda_is_available(on_cuda, monkeypatch):
    assert torch_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device() == "cpu"


def test_the_scorer_loads_its_model_onto_cuda(on_cuda, tmp_path):
    from harness.scoring.hf import ResidentHFModel, load_model

    folder = make_model(tmp_path / "m", seed=0)
    load_model(folder)
    assert on_cuda == ["cuda"]
    ResidentHFModel(folder)  # the resident candidate scorer (transformers backend)
    assert on_cuda == ["cuda", "cuda"]


def test_the_eval_backend_puts_the_model_on_cuda(on_cuda, tmp_path, monkeypatch):
    import lm_eval.models.huggingface as hf

    from harness.evaluation.stage import HFBackend
    from harness.recipe import BaseModelSpec, EvalSpec

    made = {}
    monkeypatch.setattr(hf, "HFLM", lambda **kw: made.update(kw) or kw)
    recipe = SimpleNamespace(base=BaseModelSpec(model="x/y"), eval=EvalSpec(tasks=["t"]))
    backend = HFBackend(SimpleNamespace(recipe=recipe))
    backend.lm_for(str(make_model(tmp_path / "m", seed=0)))
    assert made["device"] == "cuda" and on_cuda == ["cuda"]
