import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tasks"))
import utils as task_utils  # noqa: E402  (tasks/utils.py, the lm-eval helper module)

from harness.data.stage import convert_file  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.evaluation.tasks import task_configs  # noqa: E402
from harness.plan import build_plan  # noqa: E402
from harness.recipe import parse_recipe  # noqa: E402
from harness.stages import Context, run_stage  # noqa: E402
from harness.store import Store  # noqa: E402

from conftest import PROJECT, SHARED_DATA  # noqa: E402
from tiny_models import make_model, plant  # noqa: E402

LM_EVAL = Path(sys.executable).parent / "lm_eval"


# ------------------------------------------------------------------ metrics
def test_identical_chinese_strings_score_100():
    text = "这些症状提示社区获得性肺炎，一线治疗是阿奇霉素。"
    assert task_utils.rouge_l(text, text, "zh") == 100.0
    assert task_utils.bleu4_zh([(text, text)]) == pytest.approx(100.0)
    # whitespace tokenisation would see one "word" each and score a near-miss 0
    assert task_utils.rouge_l(text, text[:-1] + "！", "zh") > 90


def test_known_pairs_give_known_values():
    # LCS("甲乙丙丁", "甲乙戊丁") = 3 of 4 characters each way: F1 = 75
    assert task_utils.rouge_l("甲乙丙丁", "甲乙戊丁", "zh") == pytest.approx(75.0)
    assert task_utils.rouge_l("the cat sat", "the cat ran away", "en") == pytest.approx(
        100 * 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    # hypothesis one character longer than the reference: brevity penalty 1, n-gram precisions
    # 5/6, 4/5, 3/4, 2/3 -> BLEU = (1/3) ** (1/4)
    assert task_utils.bleu4_zh([("甲乙丙丁戊", "甲乙丙丁戊己")]) == pytest.approx(
        100 * (1 / 3) ** 0.25, abs=1e-6)
    assert task_utils.bleu4_13a([("a b c d e", "a b c d e f")]) == pytest.approx(
        100 * (1 / 3) ** 0.25, abs=1e-6)
    assert task_utils.rouge_l("甲乙", "丙丁", "zh") == 0.0


@pytest.mark.parametrize("response, expected", [
    ("B", "B"), ("B. 阿奇霉素", "B"), ("(C) spirometry", "C"), ("The answer is D.", "D"),
    ("答案：A", "A"), ("I think it is spirometry", "C"), ("nothing useful", None),
])
def test_answer_letter_extraction(response, expected):
    doc = {"letters": ["A", "B", "C", "D"], "choices": ["x-ray", "阿奇霉素", "spirometry", "ECG"]}
    assert task_utils.extract_letter(response, doc) == expected


@pytest.mark.parametrize("response, expected", [
    ("spirometry", "C"), (" 阿奇霉素 ", "B"), ("It is spirometry.", "C"), ("B", None),
    ("x-ray or ECG", None),
])
def test_cloze_option_extraction(response, expected):
    doc = {"letters": ["A", "B", "C", "D"], "choices": ["x-ray", "阿奇霉素", "spirometry", "ECG"],
           "answer_format": "text"}
    assert task_utils.extract_option(response, doc) == expected
    assert task_utils.mcqa_choices(doc) == doc["choices"]
    assert task_utils.mcqa_choices({**doc, "answer_format": "letter"}) == doc["letters"]


# ------------------------------------------------------------------ tasks under plain lm_eval
def _data_dir(tmp: Path) -> Path:
    """Every task's data: converted shared samples, generated synthetic data, small fakes."""
    from harness.data import synthetic
    from harness.data.records import write_jsonl
    root = tmp / "data"
    for lang in ("en", "zh"):
        for kind in ("mcqa", "qa"):
            splits = synthetic.dataset(lang, kind, {"train": 5, "dev": 5, "test": 10}, 0)
            (root / f"synthetic_{kind}_{lang}").mkdir(parents=True)
            for split, records in splits.items():
                write_jsonl(root / f"synthetic_{kind}_{lang}" / f"{split}.jsonl", records)
    conversions = {"medqa": "medqa/test.jsonl", "medmcqa": "medmcqa/dev.jsonl",
                   "cmexam": "cmexam/val.jsonl", "cmb_clin": "cmb/clin_test.jsonl",
                   "chatdoctor": "chatdoctor_genmedgpt5k/heldout_last300.jsonl",
                   "healthcaremagic": "chatdoctor_genmedgpt5k/heldout_last300.jsonl",
                   "medical_zh_sft": "medical_zh_sft1k/train.jsonl"}
    for name, rel in conversions.items():
        convert_file(name, str(SHARED_DATA / rel), root / name)
    for name in conversions:  # each task scores the test split
        folder = root / name
        if not (folder / "test.jsonl").exists():
            next(folder.glob("*.jsonl")).rename(folder / "test.jsonl")
    # No CMB-Exam or cMedQA2 samples exist: reuse CMExam items / QA pairs in their schema.
    shutil.copytree(root / "cmexam", root / "cmb")
    shutil.copytree(root / "medical_zh_sft", root / "cmedqa2")
    return root


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
def test_every_task_runs_under_plain_lm_eval(tmp_path):
    model = make_model(tmp_path / "model", seed=0)
    data = _data_dir(tmp_path)
    configs = task_configs(PROJECT / "tasks")
    tasks = sorted(n for n, c in configs.items() if "group" not in c)
    grouped = set(configs["med_all"]["task"])  # lm-eval refuses a group beside its members
    proc = subprocess.run(
        [str(LM_EVAL), "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--include_path", "tasks", "--tasks", ",".join([t for t in tasks if t not in grouped] + ["med_all"]), "--limit", "3",
         "--apply_chat_template", "--gen_kwargs", "max_gen_toks=8", "--batch_size", "4",
         "--output_path", str(tmp_path / "out")],
        cwd=PROJECT, env={**os.environ, "HARNESS_DATA_DIR": str(data)},
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert set(tasks) <= set(results) and "med_all" in results
    for task in tasks:
        metrics = results[task]
        if task.startswith(("synth_qa_zh", "cmedqa2", "cmb_clin", "medical_zh_sft")):
            assert {"rougeL_char,none", "bleu4_zh,none"} <= set(metrics), task
        elif task.startswith(("synth_qa_en", "healthcaremagic", "chatdoctor")):
            assert {"rougeL_word,none", "bleu4_13a,none"} <= set(metrics), task
        else:
            assert 0.0 <= metrics["acc,none"] <= 1.0, task


# ------------------------------------------------------------------ the eval stage
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The tiny recipe, reduced to one merge, with real tiny models where training would be."""
    tmp = tmp_path_factory.mktemp("eval")
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh_mcqa.yaml").read_text())
    data["multitask"]["enabled"] = False
    data["merges"] = [{"method": "linear", "grid": {"weight": [1.0]}}]
    data["eval"].update(limit=30, backend="hf")
    recipe = parse_recipe(data)
    store = Store(tmp / "runs", recipe.name)
    ctx = Context(recipe, store, build_plan(recipe, PROJECT / "requirements"), PROJECT)
    run_stage(ctx, "data")
    for seed, unit in enumerate(ctx.plan["specialists"] + ctx.plan["merge"]):
        plant(store, unit.stage, unit.key, seed)
    return data, tmp


def _context(data: dict, root: Path, backend: str) -> Context:
    recipe = parse_recipe({**data, "eval": {**data["eval"], "backend": backend}})
    return Context(recipe, Store(root, recipe.name),
                   build_plan(recipe, PROJECT / "requirements"), PROJECT)


def _samples(ctx: Context, unit) -> dict:
    path = ctx.store.path("eval", unit.key) / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["task"], r["doc_id"]): r for r in rows}


def test_eval_stage_hf_then_nothing_to_redo(planted, caplog):
    data, tmp = planted
    ctx = _context(data, tmp / "runs", "hf")
    built = run_stage(ctx, "eval")
    assert len(built) == len(ctx.plan["eval"]) == 4
    for unit in ctx.plan["eval"]:
        result = json.loads((ctx.store.path("eval", unit.key) / "results.json").read_text())
        meta = result["harness"]
        assert meta["backend"] == "hf" and meta["limit"] == 30 and meta["num_fewshot"] == 0
        assert meta["apply_chat_template"] is True and meta["seed"] == 1234
        assert meta["request_cache"] is None and meta["versions"]["lm-eval"] == "0.4.13"
        assert set(result["results"]) == {"synth_mcqa_en", "synth_mcqa_zh"}
        assert result["n-samples"]["synth_mcqa_en"]["effective"] == 30
    with caplog.at_level(logging.INFO, logger="harness"):
        assert run_stage(ctx, "eval") == []
    assert "eval: all 4 unit(s) cached, nothing to do" in caplog.text


def test_vllm_backend_matches_hf_on_one_swapped_engine(planted, caplog):
    data, tmp = planted
    hf = _context(data, tmp / "runs", "hf")
    if not all(hf.store.has("eval", u.key) for u in hf.plan["eval"]):
        run_stage(hf, "eval")
    vllm_root = tmp / "runs-vllm"
    shutil.copytree(tmp / "runs", vllm_root, ignore=shutil.ignore_patterns("eval"))
    ctx = _context(data, vllm_root, "vllm")
    with caplog.at_level(logging.INFO, logger="harness"):
        built = run_stage(ctx, "eval")
    assert len(built) == 4
    assert "vLLM engine starts 1, in-place swaps 3" in caplog.text
    for hf_unit, v_unit in zip(hf.plan["eval"], ctx.plan["eval"]):
        assert hf_unit.name == v_unit.name and hf_unit.key != v_unit.key  # backend is in the key
        hf_res = json.loads((hf.store.path("eval", hf_unit.key) / "results.json").read_text())
        v_res = json.loads((ctx.store.path("eval", v_unit.key) / "results.json").read_text())
        for task in ("synth_mcqa_en", "synth_mcqa_zh"):
            assert v_res["results"][task]["acc,none"] == hf_res["results"][task]["acc,none"]
        hf_s, v_s = _samples(hf, hf_unit), _samples(ctx, v_unit)
        assert hf_s.keys() == v_s.keys()
        for key in hf_s:  # per option log-likelihoods agree: the same model was scored
            for (a, _), (b, _) in zip(hf_s[key]["filtered_resps"], v_s[key]["filtered_resps"]):
                assert math.isclose(float(a), float(b), abs_tol=2e-3), (key, a, b)


def test_missing_model_is_a_clear_error(planted, tmp_path):
    data, tmp = planted
    root = tmp_path / "runs"
    shutil.copytree(tmp / "runs", root, ignore=shutil.ignore_patterns("eval", "merge"))
    ctx = _context(data, root, "hf")
    with pytest.raises(HarnessError, match=r"model merge/\w+ is not built; run `harness merge"):
        run_stage(ctx, "eval")


def test_unknown_task_is_rejected(planted):
    data, _ = planted
    with pytest.raises(HarnessError, match="unknown task 'synth_mcqa_fr'"):
        build_plan(parse_recipe({**data, "eval": {**data["eval"], "tasks": ["synth_mcqa_fr"]}}),
                   PROJECT / "requirements")
    with pytest.raises(HarnessError, match="no dataset in the recipe provides medqa"):
        build_plan(parse_recipe({**data, "eval": {**data["eval"], "tasks": ["medqa"]}}),
                   PROJECT / "requirements")
