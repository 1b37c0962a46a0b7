"""Every hub dataset id of the GPU recipes, read through the hub cache as on a GPU host.

Each id has a fixture written in that repository's own file layout and column names (read
from the hub pages and from public code that loads them; see the comments), published into a
temporary hub cache with harness/hub.py and read by the real data stage offline: the same
snapshot reader and converter a host with network runs after downloading the repository."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import hub
from harness.data.records import read_jsonl
from harness.errors import HarnessError
from harness.plan import build_plan
from harness.recipe import parse_recipe
from harness.stages import Context, run_stage
from harness.store import Store

from conftest import PROJECT

GPU_RECIPES = ("qwen2_en_zh", "llama3_en_zh")


def _jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def medqa_rows(split: str, n: int) -> list[dict]:
    # GBaker/MedQA-USMLE-4-options-hf: train.json / dev.json / test.json, JSON lines with
    # id, sent1 (the question), sent2, ending0..ending3, label (0-based), as lm-eval reads them
    return [{"id": f"{split}-{i:05d}", "sent1": f"A {30 + i}-year-old man presents with fever "
             f"and cough ({split} {i}). Which is the most likely diagnosis?", "sent2": "",
             "ending0": "Pneumonia", "ending1": "Asthma", "ending2": f"Sarcoidosis {i}",
             "ending3": "Bronchiectasis", "label": i % 4} for i in range(n)]


def medmcqa_rows(split: str, n: int) -> list[dict]:
    # openlifescienceai/medmcqa: data/{train,validation,test}-00000-of-00001.parquet with id,
    # question, opa..opd, cop (0-based; -1 in the unlabelled test), choice_type, exp,
    # subject_name, topic_name
    return [{"id": f"{split}-{i}", "question": f"Which nerve supplies muscle {i} ({split})?",
             "opa": "Median", "opb": "Ulnar", "opc": "Radial", "opd": f"Axillary {i}",
             "cop": -1 if split == "test" else i % 4, "choice_type": "single",
             "exp": None if i % 2 else "Because.", "subject_name": "Anatomy",
             "topic_name": None} for i in range(n)]


def cmexam_rows(split: str, n: int) -> list[dict]:
    # fzkuji/CMExam (the Hi-Merging authors' copy): train.json / valid.json / test.json with
    # Question, Options as [{"key", "value"}], Answer (letters; several for multi-answer items),
    # Explanation
    rows = []
    for i in range(n):
        rows.append({"Question": f"{split}第{i}题：夜间阵发性呼吸困难，可见于",
                     "Options": [{"key": k, "value": f"{v}{i}"} for k, v in
                                 zip("ABCDE", ["急性脑血管疾病", "癔病", "毒血症", "慢性阻塞性肺气肿",
                                               "左心功能不全"])],
                     "Answer": "ABD" if i == 0 else "ABCDE"[i % 5],
                     "Explanation": "左心功能不全（E对）。"})
    return rows


def cmb_exam_rows(split: str, n: int, answers: bool = True) -> list[dict]:
    # FreedomIntelligence/CMB: CMB-Exam/CMB-{train,val,test}/*-merge.json, JSON arrays with
    # exam_type, exam_class, exam_subject, question, answer, question_type, option (A-F, the
    # unused slots null), explanation; the test file has no answer
    rows = []
    for i in range(n):
        row = {"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "临床执业医师",
               "question": f"{split}第{i}题：治疗急性心肌梗死首选", "question_type": "单项选择题",
               "option": {"A": "吗啡", "B": "硝酸甘油", "C": f"阿司匹林{i}", "D": "肝素",
                          "E": "溶栓治疗" if i % 2 else "", "F": None}}
        if answers:
            row.update(answer="ABCD"[i % 4], explanation="")
        rows.append(row)
    rows[-1].update(question_type="多项选择题", answer="AB") if answers else None
    return rows


def cmb_clin_cases(n: int) -> list[dict]:
    # CMB-Clin/CMB-Clin-qa.json: cases with id, title, description and QA_pairs
    return [{"id": str(i), "title": f"案例分析-{i}", "description": f"病人，男，{40 + i}岁。",
             "QA_pairs": [{"question": "诊断是什么？", "answer": f"诊断{i}"},
                          {"question": "如何治疗？", "answer": f"治疗{i}"}]} for i in range(n)]


FIXTURES = {
    "GBaker/MedQA-USMLE-4-options-hf": {
        "README.md": "---\nlicense: cc-by-sa-4.0\n---\n",
        "train.json": _jsonl(medqa_rows("train", 40)), "dev.json": _jsonl(medqa_rows("dev", 8)),
        "test.json": _jsonl(medqa_rows("test", 10))},
    "openlifescienceai/medmcqa": {
        "README.md": "---\nlicense: apache-2.0\n---\n",
        "data/train-00000-of-00001.parquet": medmcqa_rows("train", 30),
        "data/validation-00000-of-00001.parquet": medmcqa_rows("validation", 12),
        "data/test-00000-of-00001.parquet": medmcqa_rows("test", 9)},
    "fzkuji/CMExam": {
        "train.json": json.dumps(cmexam_rows("train", 30), ensure_ascii=False),
        "valid.json": json.dumps(cmexam_rows("valid", 8), ensure_ascii=False),
        "test.json": json.dumps(cmexam_rows("test", 10), ensure_ascii=False)},
    "FreedomIntelligence/CMB": {
        "CMB.py": "# the repository's loading script (never run)\n",
        "CMB-Exam/CMB-train/CMB-train-merge.json": json.dumps(cmb_exam_rows("train", 60), ensure_ascii=False),
        "CMB-Exam/CMB-val/CMB-val-merge.json": json.dumps(cmb_exam_rows("val", 7), ensure_ascii=False),
        "CMB-Exam/CMB-test/CMB-test-choice-question-merge.json":
            json.dumps(cmb_exam_rows("test", 9, answers=False), ensure_ascii=False),
        "CMB-Clin/CMB-Clin-qa.json": json.dumps(cmb_clin_cases(5), ensure_ascii=False)},
}


def gpu_hub_datasets() -> set[str]:
    ids = set()
    for name in GPU_RECIPES:
        data = yaml.safe_load((PROJECT / "recipes" / f"{name}.yaml").read_text())
        ids |= {d["path"] for d in data["datasets"].values() if hub.is_hub_id(d["path"])}
    return ids


def publish_fixtures(tmp_path: Path) -> dict[str, hub.Resolved]:
    out = {}
    for repo, files in FIXTURES.items():
        folder = tmp_path / "src" / repo.replace("/", "__")
        for name, content in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith(".parquet"):
                pd.DataFrame(content).to_parquet(path, index=False)
            else:
                path.write_text(content, encoding="utf-8")
        out[repo] = hub.publish(folder, repo, "dataset")
    return out


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return publish_fixtures(tmp_path)


def test_every_gpu_hub_dataset_has_a_fixture_in_its_hub_layout():
    assert gpu_hub_datasets() == set(FIXTURES)


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipe_datasets_convert_from_the_hub_cache(recipe, hub_cache, tmp_path):
    data = yaml.safe_load((PROJECT / "recipes" / f"{recipe}.yaml").read_text())
    parsed = parse_recipe(data)
    ctx = Context(parsed, Store(tmp_path / "runs", parsed.name),
                  build_plan(parsed, PROJECT / "requirements"), PROJECT)
    assert len(run_stage(ctx, "data")) == 4
    out = {}
    for unit in ctx.plan["data"]:
        folder = ctx.store.path("data", unit.key)
        details = ctx.store.manifest("data", unit.key)["details"]
        repo = data["datasets"][unit.inputs["name"]]["path"]
        assert details["resolved"]["id"] == repo  # through the hub cache, at its commit
        assert details["resolved"]["revision"] == hub_cache[repo].revision
        out[unit.inputs["name"]] = {s: read_jsonl(folder / f"{s}.jsonl") for s in ("train", "dev", "test")}
        out[unit.inputs["name"]]["details"] = details
    medqa = out["medqa"]
    assert [len(medqa[s]) for s in ("train", "dev", "test")] == [40, 8, 10]  # official splits
    first = medqa["test"][0]
    assert first["options"] == {"A": "Pneumonia", "B": "Asthma", "C": "Sarcoidosis 0",
                                "D": "Bronchiectasis"} and first["answer"] == "A"
    assert medqa["test"][3]["answer"] == "D"  # label 3, 0-based
    medmcqa = out["medmcqa"]
    # the official validation is the test split (the test is unlabelled); dev carved from train
    assert len(medmcqa["test"]) == 12 and {r["answer"] for r in medmcqa["test"]} == set("ABCD")
    assert medmcqa["test"][1]["answer"] == "B"  # cop 1, 0-based on the hub
    assert len(medmcqa["dev"]) + len(medmcqa["train"]) == 30
    cmexam = out["cmexam"]
    assert [len(cmexam[s]) for s in ("train", "dev", "test")] == [29, 7, 9]  # multi-answer out
    assert cmexam["test"][0]["options"]["E"] == "左心功能不全1"
    assert cmexam["details"]["skipped"] == {"multi_answer": 3}
    cmb = out["cmb"]
    # CMB-Exam: the answerless test is dropped; val is dev; test carved from train
    assert len(cmb["dev"]) == 6 and all(r["id"].startswith("cmb-dev") for r in cmb["dev"])
    assert len(cmb["test"]) == round(59 * 0.042) and len(cmb["train"]) == 59 - len(cmb["test"])
    assert not any("test第" in r["question"] for s in ("train", "dev", "test") for r in cmb[s])
    even = next(r for r in cmb["dev"] if r["question"].startswith("val第0"))
    assert list(even["options"]) == list("ABCD")  # the empty E and the null F are dropped
    odd = next(r for r in cmb["dev"] if r["question"].startswith("val第1"))
    assert list(odd["options"]) == list("ABCDE")
    assert cmb["details"]["resolved"]["subset"] == "CMB-Exam"


def test_cmb_clin_reads_its_own_subset(hub_cache, tmp_path):
    data = {"name": "cmb_clin_hub", "base": {"model": "tiny"},
            "datasets": {"cmb_clin": {"source": "cmb_clin", "language": "zh", "task_type": "qa",
                                      "path": "FreedomIntelligence/CMB", "config": "clin"}},
            "specialists": [{"name": n, "dataset": "cmb_clin", "language": "zh", "task_type": "qa"}
                            for n in ("a", "b")],
            "merges": [{"method": "linear"}], "eval": {"tasks": ["cmb_clin"]}}
    recipe = parse_recipe(data)
    ctx = Context(recipe, Store(tmp_path / "runs", recipe.name),
                  build_plan(recipe, PROJECT / "requirements"), PROJECT)
    run_stage(ctx, "data")
    unit = next(u for u in ctx.plan["data"] if u.inputs.get("name") == "cmb_clin")
    folder = ctx.store.path("data", unit.key)
    total = sum(len(read_jsonl(folder / f"{s}.jsonl")) for s in ("train", "dev", "test"))
    assert total == 10  # five cases, two QA pairs each, whole cases per split


def test_unknown_subset_and_missing_snapshot_are_one_line_errors(hub_cache, tmp_path):
    with pytest.raises(HarnessError, match=r"config 'exams' is not a subset of cmb; valid: exam"):
        parse_recipe({**yaml.safe_load((PROJECT / "recipes" / "qwen2_en_zh.yaml").read_text()),
                      "datasets": {"cmb": {"source": "cmb", "language": "zh", "task_type": "mcqa",
                                           "path": "FreedomIntelligence/CMB", "config": "exams"}}})
    with pytest.raises(HarnessError, match=r"not in the hub cache .* HF_HUB_OFFLINE is set"):
        hub.resolve("nobody/nothing", repo_type="dataset", what="datasets.x.path")


def test_published_repos_are_in_the_standard_cache_layout(hub_cache, tmp_path):
    """huggingface_hub's own cache scanner reads what hub.publish wrote, and publishing the
    same files again is the same commit."""
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub.cache_dir())
    assert not info.warnings
    repos = {(r.repo_type, r.repo_id): {rev.commit_hash for rev in r.revisions} for r in info.repos}
    for repo, resolved in hub_cache.items():
        assert repos[("dataset", repo)] == {resolved.revision}
    again = publish_fixtures(tmp_path / "again")
    assert {r: v.revision for r, v in again.items()} == {r: v.revision for r, v in hub_cache.items()}
