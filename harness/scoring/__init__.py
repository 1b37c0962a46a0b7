"""Scorers: S_m(model) on a task's DEV split, for baseline grid selection and Hi-Merging."""
