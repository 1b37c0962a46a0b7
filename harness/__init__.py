"""Benchmark harness for LLM merging (Hi-Merging vs TIES, DARE, task arithmetic, linear)."""

__version__ = "0.1.0"
