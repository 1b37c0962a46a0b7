"""Merge stage: mergekit baselines with grids, and the in-memory merge engine."""
