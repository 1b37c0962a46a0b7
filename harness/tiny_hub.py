"""Tiny models published into the local hub cache under `harness-tiny/*` hub ids.

They stand in for `Qwen/Qwen2-7B-Instruct` and `meta-llama/Meta-Llama-3-8B-Instruct` on hosts
without a GPU or a hub: same architecture, the real model's own chat template and special
tokens (../shared/data/chat_templates), a hub id resolved through the hub cache by the same
resolver. A recipe that names one runs the GPU recipes' code path end to end, smaller.

Each is pre-trained here once by LLaMA-Factory (`stage: pt`, from scratch) on plain text:
the synthetic medical statements (harness/data/synthetic.py, both languages) and the TRAIN-only
release samples of ChatDoctor (English) and the Chinese medical SFT set (their answers as
running text). No exam item of MedQA, MedMCQA, CMExam or CMB is in the corpus, since recipes
carve their dev and test splits from those samples.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness import hub, tiny
from harness.data import synthetic
from harness.data.records import read_jsonl, write_jsonl
from harness.errors import HarnessError
from harness.recipe import DEFAULT_SYSTEM_PROMPT, TinyBase

log = logging.getLogger("harness")


@dataclass(frozen=True)
class TinyRepo:
    spec: TinyBase
    chat_template: str     # file under shared/data/chat_templates/
    lf_template: str       # LLaMA-Factory's template of the real model


# 4 layers at hidden 128 (head_dim 64, which vLLM's CPU kernels accept); vocabulary and context
# sized for real exam questions (a MedQA item with its options is 300-600 tokens here).
_SHAPE = dict(hidden_size=128, num_layers=4, num_heads=2, num_kv_heads=1, intermediate_size=256,
              vocab_size=6000, max_position_embeddings=2048, pretrain_steps=300,
              pretrain_lr=2e-3, pretrain_batch_size=16, cutoff_len=256,
              corpus_statements=20000, corpus_seed=0)
TINY_REPOS: dict[str, TinyRepo] = {
    # Qwen2-7B pads its 151646 tokens to 152064 embedding rows; the stand-in pads too (6000
    # tokens, 6144 rows), so merges of it take the padded path (merge/vocab.py). Llama-3-8B's
    # 128256 rows are its tokenizer's length: no padding.
    "harness-tiny/qwen2-med": TinyRepo(TinyBase(architecture="qwen2", vocab_multiple_of=256,
                                                **_SHAPE),
                                       "qwen2_7b_instruct.json", "qwen"),
    "harness-tiny/llama3-med": TinyRepo(TinyBase(architecture="llama", **_SHAPE),
                                        "llama3_8b_instruct.json", "llama3"),
}
# Train-only release samples whose text the base reads (file, fields joined as running text).
CORPUS_FILES = (("chatdoctor_genmedgpt5k/train_first1000.jsonl", ("input", "output")),
                ("medical_zh_sft1k/train.jsonl", ("conversations",)))


def shared_data(project: Path) -> Path:
    """The real data samples: HARNESS_SHARED_DATA, else ../shared/data beside the project."""
    folder = Path(os.environ.get("HARNESS_SHARED_DATA") or Path(project).parent / "shared" / "data")
    if not folder.is_dir():
        raise HarnessError(f"{folder}: the shared data samples are missing; set "
                           "HARNESS_SHARED_DATA to the folder holding chat_templates/ and the "
                           "dataset samples")
    return folder


def corpus_texts(data: Path, statements: int, seed: int) -> list[str]:
    texts = [r["text"] for r in synthetic.corpus(statements, seed)]
    for name, fields in CORPUS_FILES:
        for row in read_jsonl(data / name):
            for f in fields:
                value = row.get(f)
                if isinstance(value, list):  # sharegpt turns
                    texts += [t["value"] for t in value if t.get("value")]
                elif value:
                    texts.append(value)
    return texts


def prompt_texts(system_prompt: str = DEFAULT_SYSTEM_PROMPT, repeat: int = 200) -> list[str]:
    """The fixed prompt text (system prompt, instructions, answer cues), repeated so the
    tokenizer keeps it in few tokens."""
    from harness.data import prompts

    fixed = [system_prompt, *prompts.MCQA_INSTRUCTION.values(), *prompts.QA_INSTRUCTION.values(),
             *prompts.ANSWER_CUE.values()]
    return fixed * repeat


def build(repo_id: str, project: Path, spec: Optional[TinyBase] = None) -> hub.Resolved:
    """Pre-train the tiny model of `repo_id` (or of `spec`, for a reduced test build) and
    publish it into the hub cache; returns the resolved snapshot."""
    from harness.train import llamafactory as lf

    if spec is None and repo_id not in TINY_REPOS:
        raise HarnessError(f"{repo_id}: not a tiny model the harness builds; known: "
                           f"{', '.join(sorted(TINY_REPOS))}")
    repo = TINY_REPOS.get(repo_id) or next(r for r in TINY_REPOS.values()
                                           if r.spec.architecture == spec.architecture)
    spec = spec or repo.spec
    data = shared_data(project)
    template = json.loads((data / "chat_templates" / repo.chat_template).read_text())
    fmt = tiny.chat_format(spec.architecture, template)
    with tempfile.TemporaryDirectory(prefix="harness-tiny-") as tmp:
        work = Path(tmp)
        texts = corpus_texts(data, spec.corpus_statements, spec.corpus_seed)
        corpus = work / "corpus"
        corpus.mkdir()
        write_jsonl(corpus / "corpus.jsonl", ({"text": t} for t in texts))
        (corpus / "dataset_info.json").write_text(json.dumps(
            {"corpus": {"file_name": "corpus.jsonl", "columns": {"prompt": "text"}}}))
        init = work / "init"
        tiny.prepare_init(spec, fmt, texts + prompt_texts(), init)
        config = lf.pretrain_config(str(init), corpus, str(work / "lf_output"),
                                    spec.pretrain_steps, spec.pretrain_lr,
                                    spec.pretrain_batch_size, spec.cutoff_len, seed=0)
        log.info("tiny hub model %s: pre-training %d steps with LLaMA-Factory", repo_id,
                 spec.pretrain_steps)
        lf.run("train", lf.write_yaml(work / "pretrain.yaml", config), work / "pretrain.log",
               offline=True)
        model = lf.publish_model(work / "lf_output", work / "model", tokenizer_from=init)
        losses = lf.train_losses(work / "lf_output")
        (model / "harness_build.json").write_text(json.dumps({
            "built_by": "harness.tiny_hub", "stands_in_for": template.get("model"),
            "chat_template_from": f"shared/data/chat_templates/{repo.chat_template}",
            "llamafactory_template": repo.lf_template, "spec": spec.model_dump(),
            "corpus": {"texts": len(texts), "synthetic_statements": spec.corpus_statements,
                       "files": [f for f, _ in CORPUS_FILES]},
            "losses": losses[:1] + losses[-1:]}, indent=2, ensure_ascii=False))
        resolved = hub.publish(model, repo_id)
    log.info("tiny hub model %s: published at commit %s", repo_id, resolved.revision)
    return resolved
