"""mergekit YAML for one merge, validated strictly before mergekit sees it.

mergekit ignores keys it does not know, so a misspelled parameter would silently merge with
the default. Every config is checked against our registry (method names, parameter names)
and then parsed by mergekit's own pydantic schema.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.merge_methods import METHODS, SEARCH_OPTIONS

TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "tokenizer_source",
            "tokenizer"}
MODEL_KEYS = {"model", "parameters"}


def mergekit_config(method: str, values: dict[str, Any], base: str, models: list[str],
                    dtype: str, reconcile_vocabulary: bool = False) -> dict[str, Any]:
    """The YAML mapping `mergekit-yaml` runs. Paths must be absolute: mergekit takes a bare
    relative name for a hub id even when the folder exists. No tokenizer option unless a
    fine-tune's vocabulary is mapped onto the base's (merge/vocab.py): with one, mergekit
    resizes the vocabulary to the tokenizer's length, which would cut a padded base's rows
    (Qwen2-7B: 152064 rows, 151646 tokens)."""
    spec = METHODS[method]
    per_model, shared = spec.split(values)
    config: dict[str, Any] = {"merge_method": spec.mergekit_method}
    if spec.uses_base:
        config["base_model"] = base
    config["models"] = [{"model": m, "parameters": dict(per_model)} for m in models]
    config["parameters"] = shared
    config["dtype"] = dtype
    if reconcile_vocabulary:
        from harness.merge.vocab import mergekit_tokenizer

        config["tokenizer"] = mergekit_tokenizer(Path(base), spec.uses_base)
    validate(config)
    return config


def validate(config: dict[str, Any]) -> Any:
    """Our strict check, then mergekit's schema; returns mergekit's MergeConfiguration."""
    from mergekit.config import MergeConfiguration

    unknown = set(config) - TOP_KEYS
    if unknown:
        raise HarnessError(f"mergekit config: unknown key(s) {sorted(unknown)}")
    method = next((m for m in METHODS.values() if m.mergekit_method == config["merge_method"]
                   and m.name not in SEARCH_OPTIONS), None)
    if method is None:
        raise HarnessError(f"mergekit config: unknown merge_method {config['merge_method']!r}")
    allowed = set(method.parameters)
    for key in config.get("parameters") or {}:
        if key not in allowed:
            raise HarnessError(f"mergekit config: {method.name} has no parameter {key!r}")
    for entry in config.get("models") or []:
        if set(entry) - MODEL_KEYS:
            raise HarnessError(f"mergekit config: unknown model key(s) {sorted(set(entry) - MODEL_KEYS)}")
        for key in entry.get("parameters") or {}:
            if key not in allowed:
                raise HarnessError(f"mergekit config: {method.name} has no parameter {key!r}")
        if not str(entry["model"]).startswith("/"):
            raise HarnessError(f"mergekit config: model path {entry['model']!r} must be absolute")
    return MergeConfiguration.model_validate(config)
