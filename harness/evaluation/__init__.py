"""Evaluation stage: lm-eval over every model of a recipe, hf or vLLM backend."""
