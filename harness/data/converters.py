"""One converter per real dataset: raw release records -> normalised records (records.py).

Each source is declared once in SOURCES: its task type, language, how a raw record converts,
and how the release's split names map onto ours (train / dev / test; None drops a split, e.g.
MedMCQA's unlabelled test, whose official validation split serves as our test).
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from harness.data import records as R
from harness.errors import HarnessError


@dataclass
class Ctx:
    """Where a raw record came from, for error messages and ids; counts what was skipped."""
    source: str
    file: str
    split: str
    index: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def where(self) -> str:
        return f"{self.source}: {self.file} record {self.index + 1}"

    def field(self, raw: dict, *names: str) -> Any:
        """The first of `names` present in the raw record; a clear error if none is."""
        for name in names:
            if name in raw and raw[name] is not None:
                return raw[name]
        raise HarnessError(f"{self.where}: missing field {' or '.join(names)} (has "
                           f"{', '.join(sorted(raw)) or 'no fields'}); is this the right dataset?")

    def default_id(self) -> str:
        return f"{self.source}-{self.split}-{self.index:06d}"


Converter = Callable[[dict, Ctx], Iterable[dict]]


@dataclass(frozen=True)
class Source:
    name: str
    task_type: str
    language: str
    convert: Converter
    split_map: dict[str, Optional[str]] = field(default_factory=dict)
    # A release that holds several subsets (CMB: exam questions and clinical cases) names
    # them by `config`: config -> the folder of the release that holds it; the first is the
    # default.
    hub_subsets: dict[str, str] = field(default_factory=dict)

    def subset(self, config: Optional[str]) -> Optional[str]:
        if not self.hub_subsets:
            return None
        return self.hub_subsets[config or next(iter(self.hub_subsets))]


def _literal(value: Any, ctx: Ctx, name: str) -> Any:
    """Some copies store dicts/lists as Python reprs ("{'A': ...}"): parse literals only."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise HarnessError(f"{ctx.where}: field {name} is neither a mapping nor a list; "
                               "fix the record") from None
    return value


def medqa(raw: dict, ctx: Ctx) -> Iterable[dict]:
    if "sent1" in raw:  # the hub copy GBaker/MedQA-USMLE-4-options-hf (lm-eval's format)
        options = {R.LETTERS[i]: raw[f"ending{i}"] for i in range(4)}
        answer = _index_letter(ctx.field(raw, "label"), 0, len(options), ctx, "label")
        question = raw["sent1"]
    else:
        options = _literal(ctx.field(raw, "options"), ctx, "options")
        if not isinstance(options, dict):
            raise HarnessError(f"{ctx.where}: field options must map letters to texts")
        answer = str(ctx.field(raw, "answer_idx")).strip()
        question = ctx.field(raw, "question")
    yield R.mcqa(raw.get("id") or ctx.default_id(), question, dict(sorted(options.items())),
                 answer, "en", "medqa", ctx.where)


def _index_letter(value: Any, base: int, n: int, ctx: Ctx, name: str) -> str:
    try:
        index = int(value) - base
    except (TypeError, ValueError):
        raise HarnessError(f"{ctx.where}: field {name} {value!r} is not an option number") from None
    if not 0 <= index < n:
        hint = ("; this looks 0-based: hub copies are 0-based, raw release files 1-based"
                if base == 1 and index == -1 else "")
        raise HarnessError(f"{ctx.where}: field {name} {value!r} is out of range for {n} options "
                           f"({base}-based){hint}")
    return R.LETTERS[index]


def medmcqa(raw: dict, ctx: Ctx) -> Iterable[dict]:
    options = {L: ctx.field(raw, f"op{L.lower()}") for L in "ABCD"}
    # Raw release files number the correct option 1..4; the hub copy 0..3. The hub loader
    # marks its records so one converter serves both.
    base = 0 if raw.get("_hub") else 1
    answer = _index_letter(ctx.field(raw, "cop"), base, 4, ctx, "cop")
    yield R.mcqa(raw.get("id") or ctx.default_id(), ctx.field(raw, "question"), options, answer,
                 "en", "medmcqa", ctx.where)


_OPTION_LINE = re.compile(r"^\s*([A-J])\s*[.．、:：)]?\s*(.*)$", re.S)


def _lettered_lines(text: str, ctx: Ctx) -> dict[str, str]:
    # Some CMExam copies separate options with a literal backslash-n, others with a newline.
    parts = [p for p in re.split(r"\\n|\n", text) if p.strip()]
    options = {}
    for part in parts:
        match = _OPTION_LINE.match(part)
        if not match:
            raise HarnessError(f"{ctx.where}: field Options line {part!r} does not start with "
                               "an option letter; fix the record")
        options[match.group(1)] = match.group(2)
    return options


def _single_answer(answer: str, ctx: Ctx) -> Optional[str]:
    """Multi-answer items ('ABD') are kept out of single-answer MCQA and counted."""
    letters = re.sub(r"[\s,，、]", "", str(answer)).upper()
    if len(letters) > 1:
        ctx.skipped["multi_answer"] += 1
        return None
    return letters


def _keyed_options(items: list, ctx: Ctx) -> dict[str, str]:
    """The hub copy fzkuji/CMExam stores options as [{"key": "A", "value": ...}, ...]."""
    try:
        return {str(o["key"]).strip(): o["value"] for o in items}
    except (KeyError, TypeError):
        raise HarnessError(f"{ctx.where}: field Options is a list but not of "
                           "{key, value} entries; fix the record") from None


def cmexam(raw: dict, ctx: Ctx) -> Iterable[dict]:
    answer = _single_answer(ctx.field(raw, "Answer", "answer"), ctx)
    if answer is None:
        return
    options = ctx.field(raw, "Options", "options")
    options = (_keyed_options(options, ctx) if isinstance(options, list)
               else _lettered_lines(options, ctx))
    yield R.mcqa(raw.get("id") or ctx.default_id(), ctx.field(raw, "Question", "question"),
                 options, answer, "zh", "cmexam", ctx.where)


def cmb(raw: dict, ctx: Ctx) -> Iterable[dict]:
    answer = _single_answer(ctx.field(raw, "answer"), ctx)
    if answer is None:
        return
    options = _literal(ctx.field(raw, "option"), ctx, "option")
    # CMB pads every item to six slots (A-F); the unused ones are null or empty
    options = {k: v for k, v in sorted(options.items()) if v is not None and str(v).strip()}
    yield R.mcqa(raw.get("id") or ctx.default_id(), ctx.field(raw, "question"), options,
                 answer, "zh", "cmb", ctx.where)


def cmb_clin(raw: dict, ctx: Ctx) -> Iterable[dict]:
    """A clinical case with several QA pairs: each pair asks about the case description."""
    case_id = raw.get("id", ctx.index)
    pairs = _literal(ctx.field(raw, "QA_pairs"), ctx, "QA_pairs")
    description = ctx.field(raw, "description")
    for i, pair in enumerate(pairs):
        record = R.qa(f"cmb_clin-{case_id}-{i}", f"{description.strip()}\n\n{pair['question']}",
                      pair["answer"], "zh", "cmb_clin", f"{ctx.where} pair {i + 1}")
        record["_group"] = f"case-{case_id}"  # pairs of one case stay in one split
        yield record


def _alpaca(source: str, language: str) -> Converter:
    def convert(raw: dict, ctx: Ctx) -> Iterable[dict]:
        # The instruction is a generic role prompt ("If you are a doctor, ..."); the patient's
        # question is `input`.
        question = raw.get("input") or ctx.field(raw, "instruction")
        yield R.qa(raw.get("id") or ctx.default_id(), question, ctx.field(raw, "output"),
                   language, source, ctx.where)
    return convert


def cmedqa2(raw: dict, ctx: Ctx) -> Iterable[dict]:
    yield R.qa(f"cmedqa2-{ctx.field(raw, 'question_id')}", ctx.field(raw, "question"),
               ctx.field(raw, "answer"), "zh", "cmedqa2", ctx.where)


def medical_zh_sft(raw: dict, ctx: Ctx) -> Iterable[dict]:
    turns = ctx.field(raw, "conversations")
    human = next((t["value"] for t in turns if t.get("from") in ("human", "user")), None)
    reply = next((t["value"] for t in turns if t.get("from") in ("gpt", "assistant")), None)
    if human is None or reply is None:
        raise HarnessError(f"{ctx.where}: field conversations needs a human and a gpt turn")
    yield R.qa(raw.get("id") or ctx.default_id(), human, reply, "zh", "medical_zh_sft", ctx.where)


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("medqa", "mcqa", "en", medqa),
    # MedMCQA's test labels are hidden: its official validation split is our test split.
    Source("medmcqa", "mcqa", "en", medmcqa, {"dev": "test", "test": None}),
    Source("cmexam", "mcqa", "zh", cmexam),
    # CMB-Exam's official test ships without answers (they are not public): it is dropped,
    # the official val serves as dev and the test split is carved from train (split_seed).
    Source("cmb", "mcqa", "zh", cmb, {"test": None}, hub_subsets={"exam": "CMB-Exam"}),
    Source("cmb_clin", "qa", "zh", cmb_clin, hub_subsets={"clin": "CMB-Clin"}),
    Source("healthcaremagic", "qa", "en", _alpaca("healthcaremagic", "en")),
    Source("chatdoctor", "qa", "en", _alpaca("chatdoctor", "en")),
    Source("cmedqa2", "qa", "zh", cmedqa2),
    Source("medical_zh_sft", "qa", "zh", medical_zh_sft),
]}


def split_of(stem: str) -> str:
    """Split named by a release file or hub split ('phrases_no_exclude_test', 'validation')."""
    s = stem.lower()
    if "test" in s or "heldout" in s:
        return "test"
    if re.search(r"(^|[_\-.])(dev|val|valid|validation)([_\-.]|$)", s) or s in ("dev", "val"):
        return "dev"
    if "train" in s:
        return "train"
    return "all"


def convert_split(source: Source, raws: list[dict], file: str, split: str) -> tuple[list[dict], Counter]:
    ctx = Ctx(source.name, file, split)
    out = []
    for i, raw in enumerate(raws):
        ctx.index = i
        if not isinstance(raw, dict):
            raise HarnessError(f"{ctx.where}: expected a JSON object, got {type(raw).__name__}")
        try:
            out.extend(source.convert(raw, ctx))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # a field of an unexpected shape (a number where text was due, a missing key
            # inside a nested value): name the record and the field, not a traceback
            what = f"field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise HarnessError(f"{ctx.where}: cannot convert ({what}); fix or drop the record "
                               f"(fields: {', '.join(sorted(map(str, raw)))})") from None
    return out, ctx.skipped
