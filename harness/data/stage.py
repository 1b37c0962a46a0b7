"""The data stage: every dataset of a recipe -> normalised JSONL splits + LLaMA-Factory files."""
from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.data import converters, readers, splits as S, synthetic
from harness.data.prompts import alpaca
from harness.data.records import write_jsonl
from harness.errors import HarnessError
from harness.recipe import DatasetSpec
from harness.stages import Context

log = logging.getLogger("harness")
LF_DIR = "llamafactory"
LF_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


def convert_raw(source: converters.Source, raw: readers.RawSplits):
    """Convert every raw split under our split names; returns (records, skipped, files)."""
    by_split: dict[str, list[dict]] = {}
    skipped: Counter = Counter()
    files: dict[str, list[str]] = {}
    for raw_split, parts in sorted(raw.items()):
        split = source.split_map.get(raw_split, raw_split)
        if split is None:  # e.g. MedMCQA's unlabelled test
            continue
        for file, rows in parts:
            converted, skips = converters.convert_split(source, rows, file, split)
            by_split.setdefault(split, []).extend(converted)
            skipped.update(skips)
            files.setdefault(split, []).append(file)
    return by_split, skipped, files


def load_splits(name: str, spec: DatasetSpec,
                project: Path) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The dataset's train/dev/test records and a report for the manifest."""
    if spec.source == "synthetic":
        sizes = {"train": spec.train_size, "dev": spec.dev_size, "test": spec.test_size}
        try:
            out = synthetic.dataset(spec.language, spec.task_type, sizes, spec.split_seed)
        except synthetic.TooLarge as exc:
            raise HarnessError(f"datasets.{name}.{exc.split}_size: {exc}; lower it in the "
                               "recipe") from None
        return out, {"generator": "harness.data.synthetic", "official_splits": [],
                     "carved": [], "duplicates_removed": {s: 0 for s in S.SPLITS}}
    source = converters.SOURCES[spec.source]
    if readers.is_local(spec.path, project):
        path = readers.local_path(spec.path, project)
        raw = readers.read_local(name, spec.source, path, label=spec.path)
        resolved = {"kind": "local", "ref": spec.path}
    else:
        raw, resolved = readers.read_hub(name, spec.source, spec.path, spec.config,
                                         spec.revision, source.subset(spec.config))
    official, skipped, files = convert_raw(source, raw)
    out, report = S.assign(official, spec.split_seed, spec.dev_fraction, spec.test_fraction)
    report.update({"files": files, "skipped": dict(skipped), "resolved": resolved})
    return out, report


def _cap_train(records: list[dict], max_train: int | None, seed: int) -> list[dict]:
    if max_train is None or len(records) <= max_train:
        return records
    keep = set(random.Random(f"max_train-{seed}").sample(range(len(records)), max_train))
    return [r for i, r in enumerate(records) if i in keep]


def write_dataset(folder: Path, name: str, spec: DatasetSpec, project: Path) -> dict[str, Any]:
    out, report = load_splits(name, spec, project)
    out["train"] = _cap_train(out["train"], spec.max_train, spec.split_seed)
    for split, records in out.items():
        if not records:
            raise HarnessError(f"{name}: split {split} is empty after conversion; check `path` "
                               "and the split files (or lower dev_fraction/test_fraction)")
    counts = {}
    for split, records in out.items():
        counts[split] = write_jsonl(folder / f"{split}.jsonl",
                                    ({k: v for k, v in r.items() if not k.startswith("_")}
                                     for r in records))
    lf = folder / LF_DIR
    lf.mkdir()
    info = {}
    for split in ("train", "dev"):
        file = f"{name}_{split}.json"
        (lf / file).write_text(json.dumps([alpaca(r) for r in out[split]], ensure_ascii=False,
                                          indent=1), encoding="utf-8")
        info[f"{name}_{split}"] = {"file_name": file, "columns": LF_COLUMNS}
    (lf / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return {"dataset": name, "source": spec.source, "path": spec.path,
            "language": spec.language, "task_type": spec.task_type, "counts": counts,
            "split_seed": spec.split_seed, **report}


def write_corpus(folder: Path, statements: int, seed: int, known: float = 0.0,
                 instruct: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tiny base's pre-training corpus and, where asked, its instruction set (alpaca)."""
    lf = folder / LF_DIR
    lf.mkdir()
    count = write_jsonl(lf / "corpus.jsonl", synthetic.corpus(statements, seed, known))
    info: dict[str, Any] = {"corpus": {"file_name": "corpus.jsonl", "columns": {"prompt": "text"}}}
    details: dict[str, Any] = {}
    if instruct:
        records = synthetic.instruct(instruct["items"], seed, instruct["share"])
        (lf / "instruct.json").write_text(json.dumps(records, ensure_ascii=False, indent=1),
                                          encoding="utf-8")
        info["instruct"] = {"file_name": "instruct.json"}
        details = {"instruct_items": len(records), "instruct_share": instruct["share"]}
    (lf / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return {"corpus_statements": count, "seed": seed, "known": known,
            "known_conditions": len(synthetic.known_conditions(known, seed)), **details,
            "generator": "harness.data.synthetic"}


def build(ctx: Context, units) -> None:
    for unit in tqdm(units, desc="data", unit="dataset"):
        details: dict[str, Any] = {}
        with ctx.store.build("data", unit.key, unit.inputs, unit.versions, details) as tmp:
            if "corpus" in unit.inputs:
                corpus = unit.inputs["corpus"]
                details.update(write_corpus(tmp, corpus["statements"], corpus["seed"],
                                            corpus.get("known", 0.0), corpus.get("instruct")))
            else:
                name = unit.inputs["name"]
                details.update(write_dataset(tmp, name, ctx.recipe.datasets[name], ctx.project))
        log.info("data: built %s [%s] %s", unit.name, unit.key, details.get("counts", ""))


def convert_file(dataset: str, input_path: str, outdir: Path, overwrite: bool = False) -> dict:
    """`harness convert`: one local release file/folder -> OUTDIR/<split>.jsonl, no re-splitting."""
    if dataset not in converters.SOURCES:
        raise HarnessError(f"unknown dataset {dataset!r}; choose one of "
                           f"{', '.join(sorted(converters.SOURCES))}")
    source = converters.SOURCES[dataset]
    raw = readers.read_local(dataset, dataset, input_path)
    by_split, skipped, _ = convert_raw(source, raw)
    deduped, removed = S.dedup({s: by_split.get(s, []) for s in S.SPLITS})
    deduped.update({s: r for s, r in by_split.items() if s not in S.SPLITS})
    outdir = Path(outdir)
    targets = {s: outdir / f"{s}.jsonl" for s, r in deduped.items() if r}
    clash = [str(p) for p in targets.values() if p.exists()]
    if clash and not overwrite:
        raise HarnessError(f"{', '.join(clash)} exists; refusing to overwrite (pass --overwrite)")
    outdir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, path in targets.items():
        tmp = path.with_name(f".{path.name}.tmp")
        counts[split] = write_jsonl(tmp, ({k: v for k, v in r.items() if not k.startswith("_")}
                                          for r in deduped[split]))
        tmp.replace(path)
    return {"counts": counts, "skipped": dict(skipped),
            "duplicates_removed": {s: n for s, n in removed.items() if n}}
