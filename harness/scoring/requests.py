"""The token sequences both candidate scorers score, built the way the lm-eval tasks build them.

A context is the recipe's system prompt and the task prompt in the tokenizer's chat template (as
lm-eval's `--apply_chat_template --system_instruction`, and as LLaMA-Factory trains with
`default_system`);
with the template on, lm-eval joins context and continuation with no delimiter, so neither do
we. MCQA: one (context, choice) pair per option, a choice being the option's letter or, for
cloze records, its text; the option with the highest summed log-likelihood is the answer.
QA: the reference answer as the continuation (`loglikelihood` mode), or the prompt alone, the
answer generated greedily up to the QA tasks' stop tokens and scored by ROUGE-L (`generate`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.data.prompts import mcqa_choices, mcqa_prompt, qa_prompt
from harness.data.rouge import rouge_l

STOP = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")  # the QA tasks' `until` (tasks/)


@dataclass(frozen=True)
class Pair:
    item: int            # index of the record
    context: list[int]
    continuation: list[int]


class Requests:
    def __init__(self, tokenizer, apply_chat_template: bool = True,
                 system_prompt: str | None = None):
        self.tok = tokenizer
        self.chat = apply_chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.system = system_prompt
        # a search scores the same dev items for every candidate: tokenize each text once
        self._ids: dict[tuple[str, bool], list[int]] = {}

    def encode(self, text: str, chat: bool = False) -> list[int]:
        key = (text, chat)
        if key not in self._ids:
            if chat:
                system = [{"role": "system", "content": self.system}] if self.system else []
                text = self.tok.apply_chat_template(
                    system + [{"role": "user", "content": text}], tokenize=False,
                    add_generation_prompt=True)
            self._ids[key] = self.tok.encode(text, add_special_tokens=False)
        return self._ids[key]

    def context(self, text: str) -> list[int]:
        return self.encode(text, self.chat)

    def mcqa(self, records: list[dict[str, Any]]) -> list[Pair]:
        pairs = []
        for i, r in enumerate(records):
            ctx = self.context(mcqa_prompt(r))
            pairs += [Pair(i, ctx, self.encode(c))
                      for c in mcqa_choices(r)]
        return pairs

    def qa(self, records: list[dict[str, Any]]) -> list[Pair]:
        return [Pair(i, self.context(qa_prompt(r)), self.encode(r["answer"]))
                for i, r in enumerate(records)]

    def qa_contexts(self, records: list[dict[str, Any]]) -> list[list[int]]:
        return [self.context(qa_prompt(r)) for r in records]

    def stop_ids(self) -> list[int]:
        """Token ids that end a generated answer: the tasks' stop strings this vocabulary has,
        and its eos."""
        vocab = self.tok.get_vocab()
        ids = {vocab[t] for t in STOP if t in vocab}
        if self.tok.eos_token_id is not None:
            ids.add(self.tok.eos_token_id)
        return sorted(ids)


def accuracy(records: list[dict[str, Any]], pairs: list[Pair], logliks: list[float]) -> float:
    """Share of records whose correct option has the highest log-likelihood (first on ties,
    as lm-eval's argmax)."""
    best: dict[int, tuple[float, int]] = {}
    option: dict[int, int] = {}
    for pair, ll in zip(pairs, logliks):
        k = option.get(pair.item, 0)
        option[pair.item] = k + 1
        if pair.item not in best or ll > best[pair.item][0]:
            best[pair.item] = (ll, k)
    hits = sum(list(r["options"])[best[i][1]] == r["answer"] for i, r in enumerate(records))
    return hits / max(1, len(records))


def mean_token_loglik(pairs: list[Pair], logliks: list[float]) -> float:
    return sum(logliks) / max(1, sum(len(p.continuation) for p in pairs))


def mean_rouge(records: list[dict[str, Any]], predictions: list[str]) -> float:
    """Mean ROUGE-L of the generated answers, on 0-1 (an accuracy's scale, for `combine: raw`)."""
    scores = [rouge_l(r["answer"], p.strip(), r.get("language", "en"))
              for r, p in zip(records, predictions)]
    return sum(scores) / max(1, len(scores)) / 100.0
