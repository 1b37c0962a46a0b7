"""ROUGE-L of a generated answer against the reference: the leaderboard's open-QA metric
(tasks/utils.py scores lm-eval's generations with it) and the QA dev score of the candidate
scorer's `generate` mode, so a search chooses by the number the leaderboard prints."""
from __future__ import annotations

import re


def tokens(text: str, language: str) -> list[str]:
    """Characters for Chinese (spaces dropped), lower-cased words for English."""
    if language == "zh":
        return [ch for ch in text if not ch.isspace()]
    return re.findall(r"\w+", text.lower())


def rouge_l(reference: str, prediction: str, language: str) -> float:
    """ROUGE-L F1 (x100) over tokens(): longest common subsequence, precision and recall."""
    ref, hyp = tokens(reference, language), tokens(prediction, language)
    if not ref or not hyp:
        return 0.0
    prev = [0] * (len(hyp) + 1)
    for r in ref:
        cur = [0]
        for j, h in enumerate(hyp, 1):
            cur.append(prev[j - 1] + 1 if r == h else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 100.0 * 2 * p * r / (p + r)
