"""Read a dataset's raw records, split by split, from a local release copy or the hub."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from harness.data.converters import split_of
from harness.data.records import read_jsonl
from harness.errors import HarnessError

RawSplits = dict[str, list[tuple[str, list[dict]]]]  # split -> [(file label, raw records)]
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def is_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def read_file(path: Path, dataset: str) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            try:
                return read_jsonl(path)
            except HarnessError as exc:
                raise HarnessError(f"{dataset}: {exc}") from None
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise HarnessError(f"{dataset}: {path}: expected a JSON list of records")
            return data
        if suffix == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as fh:
                return list(csv.DictReader(fh))
        if suffix == ".parquet":
            import pandas as pd
            return pd.read_parquet(path).to_dict("records")
    except OSError as exc:
        raise HarnessError(f"{dataset}: cannot read {path} ({exc.strerror}); check `path`") from None
    except ValueError as exc:
        raise HarnessError(f"{dataset}: {path}: not valid {suffix[1:]} ({exc})") from None
    raise HarnessError(f"{dataset}: {path}: unsupported file type {suffix!r}; "
                       f"use one of {', '.join(SUFFIXES)}")


def read_local(dataset: str, source: str, path: str) -> RawSplits:
    root = Path(path).expanduser()
    if not root.exists():
        raise HarnessError(f"{dataset}: {root}: no such file or folder; fix `path` in the recipe")
    if source == "cmedqa2":
        return _read_cmedqa2(dataset, root)
    files = [root] if root.is_file() else sorted(
        p for p in root.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise HarnessError(f"{dataset}: {root}: no {'/'.join(SUFFIXES)} files in the folder")
    splits: RawSplits = {}
    for file in files:
        splits.setdefault(split_of(file.stem), []).append((str(file), read_file(file, dataset)))
    return splits


def _read_cmedqa2(dataset: str, root: Path) -> RawSplits:
    """cMedQA2 release: question.csv + answer.csv joined by question_id; the
    {train,dev,test}_candidates.txt files (question_id, pos_ans_id, ...) give official splits."""
    if not root.is_dir():
        raise HarnessError(f"{dataset}: {root}: cMedQA2 needs the release folder "
                           "(question.csv, answer.csv)")
    questions = _csv_rows(dataset, root / "question.csv", ("question_id", "content"))
    answers = _csv_rows(dataset, root / "answer.csv", ("ans_id", "question_id", "content"))
    first_answer: dict[str, str] = {}
    for row in answers:
        first_answer.setdefault(row["question_id"], row["content"])
    answer_by_id = {row["ans_id"]: row["content"] for row in answers}
    records = {row["question_id"]: row["content"] for row in questions}

    def record(qid: str, ans_id: Optional[str] = None) -> dict:
        answer = answer_by_id.get(ans_id) if ans_id else first_answer.get(qid)
        if qid not in records or answer is None:
            raise HarnessError(f"{dataset}: {root}: question_id {qid} has no question or answer "
                               "in question.csv/answer.csv")
        return {"question_id": qid, "question": records[qid], "answer": answer}

    splits: RawSplits = {}
    candidates = sorted(root.glob("*_candidates.txt"))
    for file in candidates:
        seen, rows = set(), []
        rows_in = _csv_rows(dataset, file, ("question_id", "pos_ans_id"))
        for row in rows_in:
            if row["question_id"] not in seen:
                seen.add(row["question_id"])
                rows.append(record(row["question_id"], row["pos_ans_id"]))
        splits.setdefault(split_of(file.stem), []).append((str(file), rows))
    if not candidates:
        with_answer = [q for q in records if q in first_answer]
        splits["all"] = [(str(root / "question.csv"), [record(q) for q in with_answer])]
    return splits


def _csv_rows(dataset: str, path: Path, columns: tuple[str, ...]) -> list[dict]:
    """cMedQA2's .csv and *_candidates.txt files are all comma-separated with a header."""
    if not path.exists():
        raise HarnessError(f"{dataset}: {path}: file missing from the cMedQA2 folder")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise HarnessError(f"{dataset}: {path}: missing column {', '.join(missing)} "
                           f"(has {', '.join(rows[0])})")
    return rows


def read_hub(dataset: str, source: str, hub_id: str, config: Optional[str]) -> RawSplits:
    """Load from the Hugging Face hub (hosts with network only)."""
    try:
        import datasets
        loaded = datasets.load_dataset(hub_id, config)
    except Exception as exc:  # offline, gated, missing, loading scripts (datasets>=4)
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise HarnessError(f"{dataset}: cannot load {hub_id!r} from the hub ({first}); on a host "
                           "without network set `path` to a local copy of the release") from None
    splits: RawSplits = {}
    for name, table in loaded.items():
        rows = [dict(r, _hub=True) for r in table]
        splits.setdefault(split_of(name), []).append((f"{hub_id}:{name}", rows))
    return splits
