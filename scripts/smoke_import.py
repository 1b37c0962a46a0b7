"""Post-install smoke import: fail the env build now, not three stages later.

torch 2.13.0+cpu cannot load PyPI's torchvision/torchaudio/torchcodec, and transformers imports
them whenever they are installed, so a stray one breaks `import transformers`. LLaMA-Factory,
on the other hand, imports torchaudio unconditionally. Each env is checked for what it runs.
usage: python scripts/smoke_import.py {train|eval}
"""
import importlib
import importlib.util
import sys

CHECKS = {
    "eval": [
        "torch", "transformers", "safetensors", "vllm", "lm_eval", "lm_eval.models.huggingface",
        "mergekit", "mergekit.merge_methods", "pandas", "tabulate", "matplotlib", "ray",
        "pydantic", "yaml", "tqdm", "rich", "pytest",
    ],
    "train": [
        "torch", "torchaudio", "torchvision", "transformers", "peft", "trl", "datasets",
        "accelerate", "llamafactory", "llamafactory.data.mm_plugin", "llamafactory.train.tuner",
        "jieba", "nltk", "rouge_chinese",
    ],
}
# Installed-but-broken media packages are the classic trap: import them if present.
OPTIONAL = ["torchvision", "torchaudio", "torchcodec"]


def main(env: str) -> int:
    failures = []
    for name in CHECKS[env] + [m for m in OPTIONAL if m not in CHECKS[env]]:
        if name in OPTIONAL and name not in CHECKS[env] and importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure here means a broken env
            failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    # transformers imports lazily: touch the classes the stages use.
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    except Exception as exc:
        failures.append(f"transformers.AutoModelForCausalLM: {type(exc).__name__}: {exc}")
    if failures:
        print(f"smoke import of the {env} env FAILED:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    import torch
    import transformers
    print(f"smoke import of the {env} env ok (torch {torch.__version__}, "
          f"transformers {transformers.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
