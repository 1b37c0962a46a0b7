"""LLaMA-Factory's own prediction metrics for open QA, so QA rows compare with papers that
report them (Hi-Merging's QA tables do): BLEU-4 on characters with smoothing (method 3) and
ROUGE-1/2/L F1 over jieba words, in percent, exactly as its `ComputeSimilarity` computes them.

LLaMA-Factory lives in the train env, so its class runs there, in a subprocess, on the
(prediction, reference) texts lm-eval's generations left; the texts stand in for token ids (a
row index per text), which is all `ComputeSimilarity` decodes.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from harness.envs import lf_env, train_env
from harness.errors import HarnessError

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")  # ComputeSimilarity's names

_SCRIPT = r"""
import json, sys
import numpy as np
from transformers import EvalPrediction
from llamafactory.train.sft.metric import ComputeSimilarity

class Texts:  # the "tokenizer": id i decodes to texts[i]; 0 is padding
    pad_token_id = 0
    def __init__(self, texts):
        self.texts = texts
    def batch_decode(self, ids, skip_special_tokens=True):
        return [self.texts[int(row[0])] for row in ids]

pairs = json.load(sys.stdin)
n = len(pairs)
texts = [""] + [p for p, _ in pairs] + [r for _, r in pairs]
metric = ComputeSimilarity(tokenizer=Texts(texts))
preds = np.arange(1, n + 1).reshape(n, 1)
labels = np.arange(n + 1, 2 * n + 1).reshape(n, 1)
metric(EvalPrediction(predictions=preds, label_ids=labels), compute_result=False)
with open(sys.argv[1], "w") as fh:  # not stdout: LLaMA-Factory logs there
    json.dump(metric.score_dict, fh)
"""


def per_item(pairs: list[tuple[str, str]]) -> list[dict[str, float]]:
    """ComputeSimilarity's scores of each (prediction, reference) pair, in percent."""
    if not pairs:
        return []
    with tempfile.TemporaryDirectory(prefix="harness-lf-") as tmp:
        out = Path(tmp) / "scores.json"
        proc = subprocess.run([str(train_env() / "bin" / "python"), "-c", _SCRIPT, str(out)],
                              input=json.dumps(pairs, ensure_ascii=False), capture_output=True,
                              text=True, env=lf_env(offline=True))
        if proc.returncode != 0 or not out.is_file():
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            raise HarnessError(f"eval: LLaMA-Factory's ComputeSimilarity failed in "
                               f"{train_env()} ({tail[0][:160]}); run `make setup` to rebuild "
                               "the train env")
        scores: dict[str, list[float]] = json.loads(out.read_text())
    return [{name: scores[name][i] for name in METRICS} for i in range(len(pairs))]


def response(row: dict[str, Any]) -> str:
    """The generation lm-eval kept for a sample (its first filtered response)."""
    resp = row.get("filtered_resps")
    while isinstance(resp, list):
        resp = resp[0] if resp else ""
    return str(resp or "")


def column(name: str) -> str:
    """The per-sample and per-task key of a ComputeSimilarity metric: lf_bleu4, lf_rougeL, ..."""
    return "lf_" + name.replace("-4", "4").replace("-l", "L").replace("-", "")
