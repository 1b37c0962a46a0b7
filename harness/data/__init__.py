"""Data stage: real medical datasets and the bilingual synthetic default, in one schema."""
