"""The token sequences both candidate scorers score, built the way the lm-eval tasks build them.

A context is the recipe's system prompt and the task prompt in the tokenizer's chat template (as
lm-eval's `--apply_chat_template --system_instruction`, and as LLaMA-Factory trains with
`default_system`);
with the template on, lm-eval joins context and continuation with no delimiter, so neither do
we. MCQA: one (context, choice) pair per option, a choice being the option's letter or, for
cloze records, its text; the option with the highest summed log-likelihood is the answer.
QA: the reference answer as the continuation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.data.prompts import mcqa_choices, mcqa_prompt, qa_prompt


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
