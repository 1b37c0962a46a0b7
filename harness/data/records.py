"""The one normalised record schema every source converts into, and JSONL I/O.

MCQA: {"id", "question", "options": {"A": ..., ...}, "answer": "B", "language", "source"}
      optionally "answer_format": "text" (cloze: the answer is the option's text; see prompts.py)
QA:   {"id", "question", "answer", "language", "source"}
Converters and lm-eval tasks meet here and nowhere else.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from harness.errors import HarnessError

LETTERS = "ABCDEFGHIJ"
_WS = re.compile(r"\s+")


def normalise_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


def mcqa(id: str, question: str, options: dict[str, str], answer: str, language: str,
         source: str, where: str) -> dict[str, Any]:
    """Build and check an MCQA record; `where` names the file/record for error messages."""
    question = (question or "").strip()
    if not question:
        raise HarnessError(f"{where}: field question is empty; drop or fix the record")
    options = {k: str(v).strip() for k, v in options.items()}
    letters = list(options)
    if len(letters) < 2 or letters != list(LETTERS[:len(letters)]):
        raise HarnessError(f"{where}: field options must be lettered A, B, ... in order, got "
                           f"{letters}; fix the options")
    if any(not v for v in options.values()):
        raise HarnessError(f"{where}: field options has an empty option; fix the record")
    if answer not in options:
        raise HarnessError(f"{where}: field answer {answer!r} is not one of the option letters "
                           f"{''.join(letters)}; fix the answer")
    return {"id": str(id), "question": question, "options": options, "answer": answer,
            "language": language, "source": source}


def qa(id: str, question: str, answer: str, language: str, source: str,
       where: str) -> dict[str, Any]:
    question, answer = (question or "").strip(), (answer or "").strip()
    if not question or not answer:
        field = "question" if not question else "answer"
        raise HarnessError(f"{where}: field {field} is empty; drop or fix the record")
    return {"id": str(id), "question": question, "answer": answer, "language": language,
            "source": source}


def dedup_key(record: dict[str, Any]) -> str:
    """Exact match after whitespace normalisation. For MCQA the options count too: two exam
    items may share a stem ("Which of the following is true?") and differ in every option."""
    key = normalise_ws(record["question"])
    if "options" in record:
        key += "\x1f" + "\x1f".join(normalise_ws(v) for v in record["options"].values())
    return key


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise HarnessError(f"{path}:{n}: not valid JSON ({exc}); fix the line") from None
    return records
