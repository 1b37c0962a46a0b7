"""Deterministic bilingual synthetic medical data built on knowledge.CONDITIONS.

- a pre-training corpus of plain statements in both languages that pair names with symptoms,
  tests, treatments and departments drawn AT RANDOM: the tiny base learns the vocabulary and
  the sentence shapes, not the facts, so it answers the exams at chance; or, with `known` > 0,
  states the true facts of that share of the conditions (a base that already knows part of the
  domain, as at 7B, so a fine-tune is a smaller delta);
- MedQA-style English questions (4 options) and CMExam-style Chinese questions (5 options),
  written as cloze items (`answer_format: "text"`: scored by the option's text, see
  prompts.py): each specialist learns the facts in its own language from its training split;
- English and Chinese open QA.
Every condition appears in every split (holding conditions out teaches the shortcut "held-out
names are never the answer"); dev and test use held-out question phrasings, and fresh
distractor sets and option orders, so memorising training items is not enough.
Why facts rather than the exam format: a ~1M-parameter model learns the lettered-answer format
only after a sudden jump late in training (FINDINGS.md), which does not fit the tiny recipe's
time budget and fails on some seeds; learning facts from the training split is steady.
"""
from __future__ import annotations

import random
import re
from typing import Any, Callable

from harness.data import records as R
from harness.data.knowledge import ATTRIBUTES, CONDITIONS, Condition

N_OPTIONS = {"en": 4, "zh": 5}


def join(items: list[str], lang: str) -> str:
    if lang == "zh":
        return "、".join(items[:-1]) + "和" + items[-1]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _symptoms(c: Condition, lang: str, rng: random.Random) -> str:
    items = list(c.symptoms(lang))
    rng.shuffle(items)
    return join(items, lang)


# ---------------------------------------------------------------- pre-training corpus
CORPUS_TEMPLATES = {
    "en": [
        "{name} typically presents with {s}.",
        "Patients with {name} often report {s}.",
        "{S} suggest {name}.",
        "A patient with {s} most likely has {name}.",
        "When someone has {s}, doctors think of {name}.",
        "{Name} is confirmed by {test}.",
        "The key test for {name} is {test}.",
        "{Test} is used to diagnose {name}.",
        "The first-line treatment for {name} is {treatment}.",
        "{Name} is treated with {treatment}.",
        "{Treatment} is given for {name}.",
        "{Name} is managed in {department}.",
        "Patients with {name} are seen in {department}.",
        "In {department}, doctors treat {name}.",
    ],
    "zh": [
        "{name}的典型表现为{s}。",
        "{name}患者常有{s}。",
        "出现{s}时，应考虑{name}。",
        "{s}提示{name}。",
        "患者有{s}，最可能是{name}。",
        "{name}的确诊检查是{test}。",
        "{test}用于诊断{name}。",
        "{name}的一线治疗是{treatment}。",
        "{name}常用{treatment}治疗。",
        "{treatment}用于治疗{name}。",
        "{name}由{department}诊治。",
        "{name}患者应到{department}就诊。",
        "{department}负责诊治{name}。",
    ],
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, c: Condition, lang: str, rng: random.Random) -> str:
    values = {"name": c.name(lang), "s": _symptoms(c, lang, rng),
              **{k: c.attribute(k, lang) for k in ATTRIBUTES}}
    values.update({_cap(k): _cap(v) for k, v in values.items()})
    return template.format(**values)


def _fill_unpaired(template: str, lang: str, rng: random.Random,
                   pool: list[Condition] = CONDITIONS) -> str:
    """A template filled from a different random condition of `pool` per slot: language
    without facts."""
    values = {"name": rng.choice(pool).name(lang),
              "s": _symptoms(rng.choice(pool), lang, rng),
              **{k: rng.choice(pool).attribute(k, lang) for k in ATTRIBUTES}}
    values.update({_cap(k): _cap(v) for k, v in values.items()})
    return template.format(**values)


def known_conditions(known: float, seed: int) -> list[Condition]:
    """The conditions the base is told the truth about: a seeded share `known` of them."""
    order = list(CONDITIONS)
    random.Random(f"known-{seed}").shuffle(order)
    return order[:round(known * len(order))]


def corpus(statements: int, seed: int, known: float = 0.0) -> list[dict[str, str]]:
    """Pre-training statements, alternating languages. A share `known` of the conditions is
    described truthfully (every statement naming one of them pairs it with its own facts), the
    base's prior knowledge, as a 7B base knows part of medicine; every other statement pairs
    its slots at random among the other conditions (language, no facts, and nothing false
    about a known condition)."""
    rng = random.Random(f"corpus-{seed}")
    told = known_conditions(known, seed)
    rest = [c for c in CONDITIONS if c not in told]
    out = []
    for i in range(statements):
        lang = "en" if i % 2 == 0 else "zh"
        template = rng.choice(CORPUS_TEMPLATES[lang])
        if not rest or (told and rng.random() < len(told) / len(CONDITIONS)):
            out.append({"text": _fill(template, rng.choice(told), lang, rng)})
        else:
            out.append({"text": _fill_unpaired(template, lang, rng, rest)})
    return out


# ---------------------------------------------------------------- instruction tuning of the base
# Questions a general assistant is asked, in neither the exam's nor the QA set's wording, each
# answered by the fact first (so the knowledge shows where a cloze option is scored) in a style
# of its own (the base's), unlike the datasets' answers.
INSTRUCT_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "en": {
        "diagnosis": ["Someone has {s}. Name the condition.", "{S}: which condition is this?"],
        "treatment": ["How do we treat {name}?", "Name the usual treatment for {name}."],
        "test": ["How do we confirm {name}?", "Name the test that proves {name}."],
        "department": ["Where is {name} looked after?", "Name the department for {name}."],
    },
    "zh": {
        "diagnosis": ["有人出现{s}，这是什么病？", "{s}：请说出病名。"],
        "treatment": ["{name}怎么治？", "请说出{name}的常规治疗。"],
        "test": ["{name}怎么确诊？", "请说出证实{name}的检查。"],
        "department": ["{name}在哪里看？", "请说出负责{name}的科室。"],
    },
}
BASE_ANSWER = {"en": "{value}, as a rule.", "zh": "{value}，一般如此。"}
# Open consultations (a third of the items): symptoms in, every fact of the condition out, in
# the base's own sentence, not the QA set's. An instruct model already answers a patient in
# sentences; without this the tiny base has never written one, so the QA specialist's delta
# carries the whole answer format and a merge that shrinks it loses the format with the facts.
CONSULT_SHARE = 1 / 3
CONSULT: dict[str, tuple[list[str], str]] = {
    "en": (["Someone reports {s}. What is it likely to be?",
            "My friend has {s}. Any idea what that is?"],
           "Probably {name}. {Test} would confirm it; it is treated with {treatment}, in "
           "{department}."),
    "zh": (["有人说自己{s}，大概是什么病？", "朋友出现{s}，这是怎么回事？"],
           "多半是{name}，可做{test}确认，治疗可用{treatment}，去{department}。"),
}


def instruct(items: int, seed: int, share: float) -> list[dict[str, str]]:
    """Alpaca records for the base's instruction stage, alternating languages, about a seeded
    share of the conditions only (a fact asked directly, or a consultation from symptoms): the base learns to answer questions from what it knows, on
    part of the domain, as an instruct model does, and the specialists still have the rest of
    the exam to learn."""
    rng = random.Random(f"instruct-{seed}")
    about = known_conditions(share, seed + 1)  # not the corpus's draw: an independent share
    out = []
    for i in range(items):
        lang = "en" if i % 2 == 0 else "zh"
        if rng.random() < CONSULT_SHARE:
            questions, answer = CONSULT[lang]
            c = rng.choice(about)
            out.append({"instruction": _fill(rng.choice(questions), c, lang, rng), "input": "",
                        "output": _fill(answer, c, lang, rng)})
            continue
        kind = rng.choice(list(INSTRUCT_TEMPLATES[lang]))
        c = rng.choice(about)
        question = _fill(rng.choice(INSTRUCT_TEMPLATES[lang][kind]), c, lang, rng)
        value = _answer_value(c, kind, lang)
        out.append({"instruction": question, "input": "",
                    "output": BASE_ANSWER[lang].format(value=value)})
    return out


def tokenizer_extras(repeat: int = 200) -> list[str]:
    """The fixed prompt text around every exam question (instructions, answer cues, the
    training question wordings with their slots emptied), repeated so the tiny tokenizer learns
    whole words for it: prompts stay short, and training and scoring cost less. Held-out
    (dev/test) wordings are left out."""
    from harness.data import prompts

    texts = [*prompts.MCQA_INSTRUCTION.values(), *prompts.CLOZE_INSTRUCTION.values(),
             *prompts.QA_INSTRUCTION.values(), *prompts.ANSWER_CUE.values()]
    for lang in ("en", "zh"):
        texts += [re.sub(r"\{\w+\}", " ", t) for train, _ in MCQA_TEMPLATES[lang].values()
                  for t in train]
        texts += [re.sub(r"\{\w+\}", " ", t) for t in QA_TEMPLATES[lang]["questions"][0]]
    return texts * repeat


# ---------------------------------------------------------------- exam questions
# (kind, train templates, held-out templates used by dev and test)
MCQA_TEMPLATES: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "en": {
        "diagnosis": ([
            "A {age}-year-old {sex} presents with {s}. What is the most likely diagnosis?",
            "A {age}-year-old {sex} comes to the clinic complaining of {s}. Which condition is most likely?",
            "A patient reports {s}. Which of the following is the most likely diagnosis?",
            "Which diagnosis best explains {s} in a {age}-year-old {sex}?",
        ], [
            "A {age}-year-old {sex} is brought to the emergency department with {s}. What is the most probable diagnosis?",
            "Over the past weeks a {age}-year-old {sex} has developed {s}. Which disease does this patient most likely have?",
        ]),
        "treatment": ([
            "What is the first-line treatment for {name}?",
            "Which of the following is the treatment of choice for {name}?",
            "A patient is diagnosed with {name}. Which treatment should be started first?",
        ], ["Which therapy is recommended first for a patient with {name}?"]),
        "test": ([
            "Which test confirms {name}?",
            "Which investigation is used to diagnose {name}?",
            "A doctor suspects {name}. Which test should be ordered?",
        ], ["Which examination establishes the diagnosis of {name}?"]),
        "department": ([
            "Which department manages {name}?",
            "A patient with {name} should be referred to which department?",
        ], ["Which specialty is responsible for treating {name}?"]),
    },
    "zh": {
        "diagnosis": ([
            "患者，{sex}，{age}岁，出现{s}。最可能的诊断是",
            "{sex}性患者，{age}岁，主诉{s}。应首先考虑的疾病是",
            "患者有{s}，最可能的诊断是",
            "{age}岁{sex}性，近期出现{s}，首先考虑",
        ], [
            "患者{age}岁，{sex}，因{s}就诊。该患者最可能患有",
            "一名{age}岁{sex}性患者近几周出现{s}，应诊断为",
        ]),
        "treatment": ([
            "{name}的一线治疗是",
            "治疗{name}首选",
            "患者确诊为{name}，应首先给予",
        ], ["{name}患者首选的治疗方法是"]),
        "test": ([
            "确诊{name}的检查是",
            "诊断{name}应选择的检查是",
            "怀疑{name}时应首先进行的检查是",
        ], ["对{name}最有诊断价值的检查是"]),
        "department": ([
            "{name}患者应就诊于",
            "{name}由哪个科室诊治",
        ], ["诊治{name}的科室是"]),
    },
}
KIND_WEIGHTS = {"diagnosis": 4, "treatment": 2, "test": 2, "department": 2}
SEX = {"en": ("man", "woman"), "zh": ("男", "女")}


def _answer_value(c: Condition, kind: str, lang: str) -> str:
    return c.name(lang) if kind == "diagnosis" else c.attribute(kind, lang)


def _question(lang: str, split: str, rng: random.Random, index: int) -> dict[str, Any]:
    kinds = list(KIND_WEIGHTS)
    kind = rng.choices(kinds, weights=[KIND_WEIGHTS[k] for k in kinds])[0]
    train, heldout = MCQA_TEMPLATES[lang][kind]
    template = rng.choice(train if split == "train" else heldout)
    c = rng.choice(CONDITIONS)
    correct = _answer_value(c, kind, lang)
    pool = sorted({_answer_value(o, kind, lang) for o in CONDITIONS} - {correct})
    values = rng.sample(pool, N_OPTIONS[lang] - 1) + [correct]
    rng.shuffle(values)
    options = {R.LETTERS[i]: v for i, v in enumerate(values)}
    answer = R.LETTERS[values.index(correct)]
    question = template.format(age=rng.randint(18, 80), sex=rng.choice(SEX[lang]),
                               s=_symptoms(c, lang, rng), name=c.name(lang))
    record = R.mcqa(f"synth-mcqa-{lang}-{split}-{index:05d}", question, options, answer, lang,
                    "synthetic", f"synthetic {lang} mcqa {split}")
    return {**record, "answer_format": "text"}


QA_TEMPLATES = {
    "en": {
        "questions": ([
            "I have {s}. What might be wrong with me?",
            "Doctor, I've been having {s}. What could this be?",
        ], [
            "For a few days I have noticed {s}. What condition could cause this?",
            "My symptoms are {s}. Which illness do I probably have?",
            "What disease usually causes {s}?",
        ]),
        "answer": "These symptoms suggest {name}. It is confirmed by {test}, and the first-line "
                  "treatment is {treatment}; you should be seen in {department}.",
    },
    "zh": {
        "questions": ([
            "我最近出现{s}，是什么病？",
            "医生，我有{s}，可能是什么问题？",
        ], [
            "这几天我发现自己{s}，请问可能是什么疾病？",
            "我的症状是{s}，我可能得了什么病？",
            "{s}通常是什么疾病引起的？",
        ]),
        "answer": "这些症状提示{name}。确诊需要{test}，一线治疗是{treatment}，建议到{department}就诊。",
    },
}


def _qa(lang: str, split: str, rng: random.Random, index: int) -> dict[str, Any]:
    train, heldout = QA_TEMPLATES[lang]["questions"]
    c = rng.choice(CONDITIONS)
    question = _fill(rng.choice(train if split == "train" else heldout), c, lang, rng)
    answer = _fill(QA_TEMPLATES[lang]["answer"], c, lang, rng)
    return R.qa(f"synth-qa-{lang}-{split}-{index:05d}", question, answer, lang, "synthetic",
                f"synthetic {lang} qa {split}")


class TooLarge(ValueError):
    """More distinct items asked of a split than the generator's world holds."""

    def __init__(self, split: str, message: str):
        super().__init__(message)
        self.split = split


def dataset(language: str, task_type: str, sizes: dict[str, int],
            seed: int) -> dict[str, list[dict[str, Any]]]:
    """Splits of the requested sizes, test first: no item appears in two splits."""
    make: Callable = _question if task_type == "mcqa" else _qa
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split in ("test", "dev", "train"):
        rng = random.Random(f"{task_type}-{language}-{split}-{seed}")
        items: list[dict] = []
        attempts = since_new = 0
        while len(items) < sizes[split]:
            attempts += 1
            since_new += 1
            # the world is exhausted long before the generous bound when thousands of draws in
            # a row bring nothing new
            if attempts > 50 * sizes[split] + 1000 or since_new > 20000:
                raise TooLarge(split, f"the synthetic {language} {task_type} generator cannot "
                                      f"make {sizes[split]} distinct {split} items")
            record = make(language, split, rng, len(items))
            key = R.dedup_key(record)
            if key not in seen:
                seen.add(key)
                items.append(record)
                since_new = 0
        out[split] = items
    return {s: out[s] for s in ("train", "dev", "test")}
