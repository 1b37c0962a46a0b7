"""Specialists stage: the tiny base, LLaMA-Factory fine-tunes and their exported weights."""
