"""The in-memory merge engine: base and specialists held once, any candidate built without disk.

It runs mergekit's own merge code (`mergekit.merge_methods.api.merge_state_dicts`), so an
in-memory candidate equals what `mergekit-yaml` writes for the same config. A candidate that
differs from another in one layer only needs that layer's tensors rebuilt: `tensors=` limits
the work to them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from harness.merge_methods import METHODS

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(name: str) -> Optional[int]:
    """The layer index of a tensor name; None for embeddings, final norm, lm_head."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def load_folder(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    for f in files:
        tensors.update({k: v.to(dtype) for k, v in load_file(str(f)).items()})
    return tensors


def set_seed(seed: int) -> None:
    """Seed exactly as `mergekit-yaml --random-seed` does, so DARE/DELLA draws can agree."""
    import transformers

    transformers.trainer_utils.set_seed(seed)


class InMemoryMerger:
    def __init__(self, base: Path, models: dict[str, Path], dtype: torch.dtype = torch.float32,
                 reconcile_vocabulary: bool = False):
        self.dtype = dtype
        self.base = load_folder(base, dtype)
        self.models = {name: load_folder(path, dtype) for name, path in models.items()}
        # fine-tunes' vocabularies mapped onto the base's ids as mergekit does (merge/vocab.py):
        # one view for the methods with a base model, one (made when asked) for those without
        self._paths = (Path(base), {n: Path(p) for n, p in models.items()})
        self._base_free: Optional[dict[str, dict[str, torch.Tensor]]] = None
        self._raw: dict[str, dict[str, torch.Tensor]] = {}
        if reconcile_vocabulary:
            from harness.merge.vocab import BASE, EMBEDDINGS, align

            self._raw = {m: {n: sd[n] for n in EMBEDDINGS if n in sd}
                         for m, sd in self.models.items()}
            aligned = align(base, models, {BASE: {n: self.base[n] for n in EMBEDDINGS
                                                  if n in self.base}, **self._raw})
            self.base.update(aligned.pop(BASE))
            for m, sd in aligned.items():
                self.models[m] = {**self.models[m], **sd}
        self.names = list(self.base)
        self.layers = sorted({l for n in self.names if (l := layer_of(n)) is not None})

    def _sources(self, uses_base: bool) -> dict[str, dict[str, torch.Tensor]]:
        """The specialists' tensors as the method's mergekit config aligns them."""
        if uses_base or not self._raw:
            return self.models
        if self._base_free is None:
            from harness.merge.vocab import align

            aligned = align(self._paths[0], self._paths[1], self._raw)
            self._base_free = {m: {**sd, **aligned[m]} for m, sd in self.models.items()}
        return self._base_free

    def layer_tensors(self, layer: int) -> list[str]:
        return [n for n in self.names if layer_of(n) == layer]

    def task_vector(self, model: str, name: str) -> torch.Tensor:
        return self.models[model][name] - self.base[name]

    def merge(self, method: str, values: dict[str, Any], tensors: Optional[Iterable[str]] = None,
              seed: Optional[int] = None,
              per_model: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, torch.Tensor]:
        """Merge `tensors` (default: all) with a registry method and one grid point's values.
        `per_model` overrides per-model values by model name (e.g. Hi-Merging's own p, s)."""
        from mergekit.merge_methods.api import merge_state_dicts

        spec = METHODS[method]
        names = list(tensors) if tensors is not None else self.names
        model_values, shared = spec.split(values)
        params: dict[str, Any] = dict(shared)
        for key, value in model_values.items():
            params[key] = {m: (per_model or {}).get(m, {}).get(key, value) for m in self.models}
        inputs = {m: {n: sd[n] for n in names} for m, sd in self._sources(spec.uses_base).items()}
        if spec.uses_base:
            inputs = {"__base__": {n: self.base[n] for n in names}, **inputs}
        if seed is not None:
            set_seed(seed)
        with torch.no_grad():
            return merge_state_dicts(inputs, spec.mergekit_method, parameters=params,
                                     base="__base__" if spec.uses_base else None,
                                     dtype=self.dtype)
