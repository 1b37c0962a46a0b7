"""Where a model goes: the GPU when this process sees one, else the CPU.

One decision for every place that loads a model into torch (the transformers candidate scorer,
the transformers eval backend), so a GPU host never scores or evaluates on its CPU.
"""
from __future__ import annotations


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
