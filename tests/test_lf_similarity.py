"""LLaMA-Factory's ComputeSimilarity on the eval stage's QA generations (run in the train env)."""
import json

import pytest

from conftest import needs_train_env
from harness.evaluation import lf_similarity as lf
from harness.evaluation.stage import write_results

pytestmark = needs_train_env


def test_scores_match_hand_counts():
    same, partial, empty = lf.per_item([("the cat sat", "the cat sat"),
                                        ("the cat sat", "the cat sat on the mat"),
                                        ("", "the cat sat")])
    assert same == {"bleu-4": pytest.approx(100.0), "rouge-1": pytest.approx(100.0, abs=1e-3),
                    "rouge-2": pytest.approx(100.0, abs=1e-3),
                    "rouge-l": pytest.approx(100.0, abs=1e-3)}
    # jieba keeps English words whole. ROUGE-1 counts distinct words: 3 of the reference's 5
    # (the, cat, sat, on, mat), all 3 predicted: F1 = 2 x 0.6 / 1.6. Bigrams: 2 of 5, 2 of 2:
    # 2 x 0.4 / 1.4. ROUGE-L: the common subsequence is 3 of 6 words: 2 x 0.5 / 1.5.
    assert partial["rouge-1"] == pytest.approx(75.0, abs=1e-3)
    assert partial["rouge-2"] == pytest.approx(57.1429, abs=1e-3)
    assert partial["rouge-l"] == pytest.approx(66.6667, abs=1e-3)
    assert 0 < partial["bleu-4"] < 100
    assert empty == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}


def test_chinese_is_scored_over_jieba_words():
    [one] = lf.per_item([("患者应该多喝水", "患者应该多喝水并休息")])
    assert 0 < one["rouge-l"] < 100 and 0 < one["bleu-4"] < 100


def test_qa_samples_and_results_carry_lf_metrics(tmp_path):
    """The eval stage adds lf_* to each QA sample and the task's mean; MCQA is untouched."""
    out = {"results": {"qa": {"rougeL_word,none": 0.5}, "mc": {"acc,none": 1.0}},
           "samples": {"qa": [{"doc_id": 0, "target": "drink water", "filtered_resps": [
                               "drink water"], "rougeL_word": 1.0},
                              {"doc_id": 1, "target": "rest in bed", "filtered_resps": [
                                  "go running"], "rougeL_word": 0.0}],
                       "mc": [{"doc_id": 0, "target": 1, "filtered_resps": [[0.1, False]],
                               "acc": 1.0}]}}
    result = write_results(tmp_path, out, {})
    assert result["results"]["qa"]["lf_rougeL,none"] == pytest.approx(50.0, abs=1e-3)
    assert result["results"]["qa"]["lf_bleu4,none"] < 100
    assert not any(k.startswith("lf_") for k in result["results"]["mc"])
    rows = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    qa = [r for r in rows if r["task"] == "qa"]
    assert [r["lf_rougeL"] for r in qa] == [pytest.approx(100.0, abs=1e-3), 0.0]
    assert json.loads((tmp_path / "results.json").read_text())["results"]["qa"][
        "lf_rouge1,none"] == pytest.approx(50.0, abs=1e-3)
