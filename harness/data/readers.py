"""Read a dataset's raw records, split by split, from a local release copy or the hub.

A hub dataset is a hub repository of release files (JSON, JSON lines, CSV, Parquet): the one
resolver (harness/hub.py) gives its snapshot folder from the hub cache, downloading it first
where the hub is reachable, and the folder is read like a local copy. So a hub id works
wherever a local folder does, offline too, and `datasets`' loading scripts are never run.
"""
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


def is_local(path: str, project: Path) -> bool:
    """A folder/file path, or a hub dataset id (org/name) when it is not a local path."""
    from harness.hub import HUB_ID

    return (path.startswith(("/", "./", "../", "~")) or not HUB_ID.match(path)
            or local_path(path, project).exists())


def read_file(path: Path, dataset: str) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            try:
                return read_jsonl(path)
            except HarnessError as exc:
                raise HarnessError(f"{dataset}: {exc}") from None
        if suffix == ".json":
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text)
            except ValueError:
                if not text.lstrip().startswith("{"):
                    raise
                return read_jsonl(path)  # several hub copies are JSON lines named .json
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


def local_path(path: str, project: Path) -> Path:
    """A recipe's local `path`: absolute, home-relative, or relative to the project folder."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else Path(project) / candidate


def read_local(dataset: str, source: str, path: Path | str, label: Optional[str] = None,
               hub: bool = False) -> RawSplits:
    """The release's data files under `path` (a file, or a folder read recursively), each
    file's split named by its file name. `label` names the files in reports (no machine path
    for hub snapshots: `org/name:file`); `hub` marks records of a hub copy (harness/data/
    converters.py: MedMCQA's hub copy numbers options from 0)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise HarnessError(f"{dataset}: {root}: no such file or folder; fix `path` in the recipe")
    if source == "cmedqa2":
        return _read_cmedqa2(dataset, root)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise HarnessError(f"{dataset}: {root}: no {'/'.join(SUFFIXES)} files in the folder")
    splits: RawSplits = {}
    for file in files:
        if label:
            name = f"{label}:{file.relative_to(root).as_posix()}" if root.is_dir() else label
        else:
            name = str(file)
        rows = read_file(file, dataset)
        if hub:
            rows = [dict(r, _hub=True) if isinstance(r, dict) else r for r in rows]
        splits.setdefault(split_of(file.stem), []).append((name, rows))
    return splits


def local_fingerprint(path: Path) -> str:
    """Content identity of a local release copy (every data file hashed; a copy over 64 MB by
    size and modification time), so an edited file changes the dataset's content key."""
    import hashlib

    root = Path(path)
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(root.parent if root.is_file() else root).as_posix().encode())
        stat = file.stat()
        if stat.st_size > 64 << 20:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


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


def read_hub(dataset: str, source: str, hub_id: str, config: Optional[str],
             revision: Optional[str] = None, subset: Optional[str] = None) -> tuple[RawSplits, dict]:
    """A hub dataset through the hub cache: its snapshot folder (the `subset` folder of it
    where a release holds several) read like a local copy. Returns the splits and what was
    resolved (id, commit) for the manifest."""
    from harness import hub

    patterns = [f"{subset}/*" if subset else "*"]
    resolved = hub.resolve(hub_id, revision, repo_type="dataset", allow_patterns=patterns,
                           what=f"datasets.{dataset}.path")
    root = resolved.path / subset if subset else resolved.path
    if not root.is_dir():
        raise HarnessError(f"datasets.{dataset}: {hub_id}@{resolved.revision} has no folder "
                           f"{subset!r} (config {config!r}); check `config`")
    splits = read_local(dataset, source, root, label=hub_id, hub=True)
    return splits, {**resolved.describe(), "config": config, "subset": subset}
