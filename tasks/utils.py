"""Helpers for the harness's lm-eval tasks: data loading, prompts, answer extraction, metrics.

Data: each task reads `$HARNESS_DATA_DIR/<data>/<split>.jsonl` in the harness's normalised
schema (the eval stage sets HARNESS_DATA_DIR; to run a task by hand, point it at a folder that
holds e.g. `medqa/test.jsonl`). Chinese text is scored by character (ROUGE-L) and with
sacrebleu's `zh` tokeniser (BLEU): whitespace tokenisation would score every Chinese answer 0.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import datasets
import sacrebleu

from harness.data.prompts import answers_text, mcqa_choices as _choices, mcqa_prompt, qa_prompt
from harness.data.rouge import rouge_l, tokens  # noqa: F401 (the tasks' metric)

SPLITS = ("dev", "test")


def load(data: str, **_metadata) -> datasets.DatasetDict:
    root = os.environ.get("HARNESS_DATA_DIR")
    if not root:
        raise RuntimeError("HARNESS_DATA_DIR is not set: point it at a folder holding "
                           f"{data}/test.jsonl (the harness eval stage sets it)")
    folder = Path(root) / data
    found = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
            found[split] = datasets.Dataset.from_list([_flatten(r) for r in rows])
    if "test" not in found:
        raise FileNotFoundError(f"{folder / 'test.jsonl'}: missing; run `harness data` first")
    return datasets.DatasetDict(found)


def _flatten(record: dict) -> dict:
    """Options become parallel lists: Arrow cannot hold 4- and 5-option mappings in one column."""
    if "options" not in record:
        return record
    letters = list(record["options"])
    return {**{k: v for k, v in record.items() if k != "options"},
            "letters": letters, "choices": [record["options"][k] for k in letters],
            "answer_index": letters.index(record["answer"])}


def _record(doc: dict) -> dict:
    return {**doc, "options": dict(zip(doc["letters"], doc["choices"]))}


# ---------------------------------------------------------------- MCQA
def mcqa_text(doc: dict) -> str:
    return mcqa_prompt(_record(doc))


def mcqa_choices(doc: dict) -> list[str]:
    """The option letters, or the option texts for cloze records (answer_format "text")."""
    return _choices(_record(doc))


def mcqa_target(doc: dict) -> int:
    return int(doc["answer_index"])


def extract_letter(response: str, doc: dict) -> str | None:
    """The answer letter of a generated response; falls back to a quoted option text."""
    letters = "".join(doc["letters"])
    text = response.strip()
    match = re.match(rf"^\(?([{letters}])(?:[\s).:：、．]|$)", text)
    if match is None:
        match = re.search(rf"(?:answer is|Answer:|答案[是为：:]*)\s*\(?([{letters}])\b", text)
    if match is None:
        match = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text)
    if match:
        return match.group(1)
    hits = [L for L, c in zip(doc["letters"], doc["choices"]) if c and c in text]
    return hits[0] if len(hits) == 1 else None


def extract_option(response: str, doc: dict) -> str | None:
    """Cloze records: the option whose text the response gives (exactly, else the only one it
    contains)."""
    text = response.strip()
    for letter, choice in zip(doc["letters"], doc["choices"]):
        if text == choice:
            return letter
    hits = [L for L, c in zip(doc["letters"], doc["choices"]) if c and c in text]
    return hits[0] if len(hits) == 1 else None


def mcqa_gen_results(doc: dict, results: list[str]) -> dict:
    extract = extract_option if answers_text(doc) else extract_letter
    letter = extract(results[0], doc)
    return {"acc": float(letter == doc["letters"][doc["answer_index"]])}


# ---------------------------------------------------------------- open QA
def qa_text(doc: dict) -> str:
    return qa_prompt(doc)


def qa_target(doc: dict) -> str:
    return doc["answer"]


def bleu4(pairs: list[tuple[str, str]], tokenize: str) -> float:
    """Corpus BLEU-4 (sacrebleu) over (reference, prediction) pairs."""
    refs, preds = zip(*pairs) if pairs else ((), ())
    return sacrebleu.corpus_bleu(list(preds), [list(refs)], tokenize=tokenize).score


def bleu4_zh(pairs):
    return bleu4(pairs, "zh")


def bleu4_13a(pairs):
    return bleu4(pairs, "13a")


def qa_results_zh(doc: dict, results: list[str]) -> dict:
    pred = results[0].strip()
    return {"rougeL_char": rouge_l(doc["answer"], pred, "zh"), "bleu4_zh": (doc["answer"], pred)}


def qa_results_en(doc: dict, results: list[str]) -> dict:
    pred = results[0].strip()
    return {"rougeL_word": rouge_l(doc["answer"], pred, "en"), "bleu4_13a": (doc["answer"], pred)}
