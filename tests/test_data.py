import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.data import converters, readers, synthetic
from harness.data.knowledge import CONDITIONS
from harness.data.prompts import mcqa_answer, mcqa_prompt, qa_prompt
from harness.data.records import dedup_key, read_jsonl
from harness.data.stage import convert_file
from harness.errors import HarnessError
from harness.plan import build_plan
from harness.recipe import load_recipe, parse_recipe
from harness.stages import Context, run_stage
from harness.store import Store

from conftest import SHARED_DATA

needs_samples = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------ the shared samples
@needs_samples
def test_medqa_sample_answers_match_raw(tmp_path):
    raw = raw_lines(SHARED_DATA / "medqa" / "test.jsonl")
    report = convert_file("medqa", str(SHARED_DATA / "medqa" / "test.jsonl"), tmp_path)
    out = read_jsonl(tmp_path / "test.jsonl")
    assert report["counts"] == {"test": len(raw)} and len(out) == 300
    for r, o in zip(raw, out):
        assert o["answer"] == r["answer_idx"]
        assert o["options"][o["answer"]] == r["answer"]  # the answer TEXT agrees too
        options = r["options"] if isinstance(r["options"], dict) else ast.literal_eval(r["options"])
        assert o["options"] == options and o["question"] == r["question"].strip()
        assert o["language"] == "en" and o["source"] == "medqa"


@needs_samples
def test_medmcqa_sample_cop_is_one_based(tmp_path):
    raw = raw_lines(SHARED_DATA / "medmcqa" / "dev.jsonl")
    convert_file("medmcqa", str(SHARED_DATA / "medmcqa" / "dev.jsonl"), tmp_path)
    out = read_jsonl(tmp_path / "test.jsonl")  # official dev serves as our test
    assert len(out) == len(raw)
    for r, o in zip(raw, out):
        assert o["answer"] == "ABCD"[r["cop"] - 1]
        assert o["options"][o["answer"]] == r["op" + o["answer"].lower()].strip()
        assert o["id"] == r["id"]


@needs_samples
def test_cmexam_sample_options_and_answers(tmp_path):
    raw = raw_lines(SHARED_DATA / "cmexam" / "val.jsonl")
    convert_file("cmexam", str(SHARED_DATA / "cmexam" / "val.jsonl"), tmp_path)
    out = read_jsonl(tmp_path / "dev.jsonl")
    assert len(out) == sum(1 for r in raw if len(r["Answer"]) == 1)
    for r, o in zip([r for r in raw if len(r["Answer"]) == 1], out):
        lines = r["Options"].split("\\n")
        assert list(o["options"]) == [line[0] for line in lines]
        assert o["answer"] == r["Answer"]
        answer_line = next(line for line in lines if line.startswith(r["Answer"]))
        assert o["options"][o["answer"]] == answer_line[1:].strip()


@needs_samples
def test_cmb_clin_sample_pairs(tmp_path):
    raw = raw_lines(SHARED_DATA / "cmb" / "clin_test.jsonl")
    convert_file("cmb_clin", str(SHARED_DATA / "cmb" / "clin_test.jsonl"), tmp_path)
    out = read_jsonl(tmp_path / "test.jsonl")
    pairs = [(case, p) for case in raw for p in (ast.literal_eval(case["QA_pairs"])
                                                 if isinstance(case["QA_pairs"], str) else case["QA_pairs"])]
    assert len(out) == len(pairs) == 208
    for (case, pair), o in zip(pairs, out):
        assert o["answer"] == pair["answer"].strip()
        assert o["question"].startswith(case["description"].strip()[:20])
        assert o["question"].endswith(pair["question"])


@needs_samples
def test_chatdoctor_and_medical_zh_sft_samples(tmp_path):
    convert_file("chatdoctor", str(SHARED_DATA / "chatdoctor_genmedgpt5k"), tmp_path / "cd")
    raw_train = raw_lines(SHARED_DATA / "chatdoctor_genmedgpt5k" / "train_first1000.jsonl")
    raw_test = raw_lines(SHARED_DATA / "chatdoctor_genmedgpt5k" / "heldout_last300.jsonl")
    train, test = read_jsonl(tmp_path / "cd" / "train.jsonl"), read_jsonl(tmp_path / "cd" / "test.jsonl")
    assert len(test) == len(raw_test)
    kept = {r["question"] for r in train}
    for r in raw_test:
        assert any(o["question"] == r["input"].strip() and o["answer"] == r["output"].strip()
                   for o in test)
    # whatever the heldout file also holds is removed from train, never kept twice
    assert len(train) + sum(1 for r in raw_train if r["input"].strip() in {t["question"] for t in test}
                            and r["input"].strip() not in kept) >= len(train)
    assert not {dedup_key(r) for r in train} & {dedup_key(r) for r in test}

    convert_file("medical_zh_sft", str(SHARED_DATA / "medical_zh_sft1k" / "train.jsonl"), tmp_path / "zh")
    raw = raw_lines(SHARED_DATA / "medical_zh_sft1k" / "train.jsonl")
    out = read_jsonl(tmp_path / "zh" / "train.jsonl")
    first = {r["conversations"][0]["value"].strip(): r["conversations"][1]["value"].strip() for r in raw}
    assert len(out) == len({dedup_key({"question": q}) for q in first})
    for o in out:
        assert first[o["question"]] == o["answer"] and o["language"] == "zh"


def test_convert_refuses_to_overwrite(tmp_path):
    src = tmp_path / "medical_zh_sft_train.jsonl"
    src.write_text(json.dumps({"conversations": [{"from": "human", "value": "问"},
                                                 {"from": "gpt", "value": "答"}]}) + "\n")
    convert_file("medical_zh_sft", str(src), tmp_path / "out")
    with pytest.raises(HarnessError, match="refusing to overwrite"):
        convert_file("medical_zh_sft", str(src), tmp_path / "out")


# ------------------------------------------------------------------ converter logic
def _convert(source, rows, split="test"):
    return converters.convert_split(converters.SOURCES[source], rows, "f.jsonl", split)


def test_cmexam_multi_answer_kept_out_and_counted():
    rows = [{"Question": "q1", "Options": "A 甲\\nB 乙\\nC 丙", "Answer": "AB"},
            {"Question": "q2", "Options": "A 甲\nB 乙\nC 丙", "Answer": "C"},
            {"Question": "q3", "Options": "A. 甲\nB. 乙", "Answer": "A, B"}]
    out, skipped = _convert("cmexam", rows)
    assert [o["question"] for o in out] == ["q2"] and out[0]["options"] == {"A": "甲", "B": "乙", "C": "丙"}
    assert skipped == {"multi_answer": 2}


def test_medmcqa_hub_copy_is_zero_based():
    row = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0, "_hub": True}
    assert _convert("medmcqa", [row])[0][0]["answer"] == "A"
    with pytest.raises(HarnessError, match=r"field cop 0 is out of range.*looks 0-based"):
        _convert("medmcqa", [dict(row, _hub=False)])


def test_medqa_hub_format():
    row = {"sent1": "q", "ending0": "a", "ending1": "b", "ending2": "c", "ending3": "d", "label": 2}
    out = _convert("medqa", [row])[0][0]
    assert out["answer"] == "C" and out["options"]["C"] == "c"


@pytest.mark.parametrize("source, row, message", [
    ("medqa", {"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "E"},
     "medqa: f.jsonl record 1: field answer 'E' is not one of the option letters AB"),
    ("medqa", {"question": "q", "opts": {}, "answer_idx": "A"},
     "medqa: f.jsonl record 1: missing field options"),
    ("cmexam", {"Question": "q", "Options": "1 甲\n2 乙", "Answer": "A"},
     "does not start with an option letter"),
    ("medical_zh_sft", {"conversations": [{"from": "human", "value": "q"}]},
     "needs a human and a gpt turn"),
    ("chatdoctor", {"instruction": "x", "input": "q", "output": ""}, "field answer is empty"),
])
def test_bad_records_name_dataset_file_and_field(source, row, message):
    with pytest.raises(HarnessError, match=re.escape(message)):
        _convert(source, [row])


def test_missing_file_and_unreachable_hub(tmp_path, monkeypatch):
    with pytest.raises(HarnessError, match=r"medqa_en: .*nope.jsonl: no such file"):
        readers.read_local("medqa_en", "medqa", str(tmp_path / "nope.jsonl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(HarnessError, match=r"datasets.medqa_en.path 'GBaker/x': not in the hub "
                                           r"cache .* HF_HUB_OFFLINE is set; run `harness fetch"):
        readers.read_hub("medqa_en", "medqa", "GBaker/x", None)


def test_cmedqa2_release_folder(tmp_path):
    (tmp_path / "question.csv").write_text("question_id,content\n1,头痛怎么办\n2,咳嗽怎么办\n3,发热怎么办\n")
    (tmp_path / "answer.csv").write_text(
        "ans_id,question_id,content\n10,1,休息\n11,1,吃药\n12,2,喝水\n13,3,退烧\n")
    (tmp_path / "train_candidates.txt").write_text("question_id,pos_ans_id,neg_ans_id\n1,11,12\n1,11,13\n2,12,10\n")
    (tmp_path / "test_candidates.txt").write_text("question_id,pos_ans_id,neg_ans_id\n3,13,10\n")
    report = convert_file("cmedqa2", str(tmp_path), tmp_path / "out")
    assert report["counts"] == {"train": 2, "test": 1}
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert [(r["question"], r["answer"]) for r in train] == [("头痛怎么办", "吃药"), ("咳嗽怎么办", "喝水")]


# ------------------------------------------------------------------ the data stage
def _recipe(project, datasets: dict):
    data = yaml.safe_load((project / "recipes" / "tiny_en_zh_mcqa.yaml").read_text())
    data["datasets"] = datasets
    data["eval"]["tasks"] = sorted({d["source"] for d in datasets.values()})  # task = source
    names = list(datasets)
    for sp, name in zip(data["specialists"], names + names):
        sp["dataset"], sp["language"] = name, datasets[name]["language"]
        sp["task_type"] = datasets[name]["task_type"]
    return parse_recipe(data)


def _run_data(project, recipe, root):
    ctx = Context(recipe, Store(root, recipe.name), build_plan(recipe, project / "requirements"), project)
    run_stage(ctx, "data")
    return {u.inputs.get("name", "corpus"): ctx.store.path("data", u.key) for u in ctx.plan["data"]}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


@needs_samples
def test_real_dataset_seeded_split_is_reproducible(project, tmp_path):
    def recipe(seed):
        return _recipe(project, {
            "medmcqa": {"source": "medmcqa", "language": "en", "task_type": "mcqa",
                        "path": str(SHARED_DATA / "medmcqa" / "dev.jsonl"), "split_seed": seed},
            "cmexam": {"source": "cmexam", "language": "zh", "task_type": "mcqa",
                       "path": str(SHARED_DATA / "cmexam" / "val.jsonl"), "split_seed": seed}})
    a = _run_data(project, recipe(0), tmp_path / "a")
    b = _run_data(project, recipe(0), tmp_path / "b")
    c = _run_data(project, recipe(1), tmp_path / "c")
    for name in ("medmcqa", "cmexam"):
        assert _files(a[name]) == _files(b[name])  # same seed: byte-identical
        test_a = {r["id"] for r in read_jsonl(a[name] / "test.jsonl")}
        test_c = {r["id"] for r in read_jsonl(c[name] / "test.jsonl")}
        assert test_a != test_c  # another seed: another split
        splits = {s: read_jsonl(a[name] / f"{s}.jsonl") for s in ("train", "dev", "test")}
        assert sum(map(len, splits.values())) == 300
        keys = [{dedup_key(r) for r in recs} for recs in splits.values()]
        assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
        manifest = json.loads((a[name] / "manifest.json").read_text())
        assert manifest["details"]["counts"] == {s: len(r) for s, r in splits.items()}
        assert manifest["details"]["split_seed"] == 0 and manifest["details"]["carved"] == ["dev", "test"]
        assert set(manifest["files"]) >= {"train.jsonl", "dev.jsonl", "test.jsonl"}


def test_cross_split_duplicates_are_removed_and_counted(project, tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    row = lambda q, a="A": {"question": q, "options": {"A": "x", "B": "y"}, "answer_idx": a}
    (folder / "train.jsonl").write_text("\n".join(json.dumps(row(q)) for q in
                                                  ["q1", "q2", "q  3", "q4", "q5", "q6"]))
    (folder / "dev.jsonl").write_text("\n".join(json.dumps(row(q)) for q in ["q2", "q7"]))
    (folder / "test.jsonl").write_text("\n".join(json.dumps(row(q)) for q in ["q 3", "q8"]))
    recipe = _recipe(project, {"medqa": {"source": "medqa", "language": "en", "task_type": "mcqa",
                                         "path": str(folder)}})
    out = _run_data(project, recipe, tmp_path / "runs")["medqa"]
    train = [r["question"] for r in read_jsonl(out / "train.jsonl")]
    assert train == ["q1", "q4", "q5", "q6"]
    details = json.loads((out / "manifest.json").read_text())["details"]
    assert details["duplicates_removed"] == {"train": 2, "dev": 0, "test": 0}
    assert details["official_splits"] == ["dev", "test", "train"]


def test_empty_split_fails_and_writes_nothing(project, tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(
        {"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}) + "\n")
    (folder / "test.jsonl").write_text("")
    recipe = _recipe(project, {"medqa": {"source": "medqa", "language": "en", "task_type": "mcqa",
                                         "path": str(folder)}})
    with pytest.raises(HarnessError, match="medqa: split (dev|test) is empty"):
        _run_data(project, recipe, tmp_path / "runs")
    assert not any((tmp_path / "runs").rglob("*.jsonl"))


def test_wrong_language_for_a_source_is_rejected(project):
    with pytest.raises(HarnessError, match="source 'cmexam' is zh mcqa; set language: zh"):
        _recipe(project, {"cmexam": {"source": "cmexam", "language": "en", "task_type": "mcqa",
                                     "path": "/x"}})


def test_tiny_recipe_data_stage(project, tmp_path, harness_bin):
    env = {"HARNESS_RUNS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(harness_bin + ["data", "--recipe", "tiny_en_zh"], capture_output=True,
                          text=True, cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr
    recipe = load_recipe("tiny_en_zh", project / "recipes")
    plan = build_plan(recipe, project / "requirements")
    store = Store(tmp_path, "tiny_en_zh")
    assert all(store.has("data", u.key) for u in plan["data"])
    again = subprocess.run(harness_bin + ["data", "--recipe", "tiny_en_zh"], capture_output=True,
                           text=True, cwd=project, env=env)
    assert again.returncode == 0 and again.stderr.count("skipped (cached)") == len(plan["data"])
    for unit in plan["data"]:
        folder = store.path("data", unit.key)
        info = json.loads((folder / "llamafactory" / "dataset_info.json").read_text())
        for entry in info.values():
            assert (folder / "llamafactory" / entry["file_name"]).is_file()
        if "name" in unit.inputs:
            train = read_jsonl(folder / "train.jsonl")
            lf = json.loads((folder / "llamafactory" / f"{unit.inputs['name']}_train.json").read_text())
            assert len(lf) == len(train)
            # LLaMA-Factory joins instruction and input with a newline: the exact eval prompt
            prompt, answer = ((mcqa_prompt, mcqa_answer) if "options" in train[0]
                              else (qa_prompt, lambda r: r["answer"]))
            assert lf[0]["instruction"] + "\n" + lf[0]["input"] == prompt(train[0])
            assert lf[0]["output"] == answer(train[0])
            if train[0].get("answer_format") == "text":  # cloze: the option's text
                assert lf[0]["output"] == train[0]["options"][train[0]["answer"]]


# ------------------------------------------------------------------ the synthetic design
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_synthetic_mcqa_design(lang):
    data = synthetic.dataset(lang, "mcqa", {"train": 2000, "dev": 200, "test": 400}, seed=0)
    assert {s: len(r) for s, r in data.items()} == {"train": 2000, "dev": 200, "test": 400}
    train_q = {r["question"] for r in data["train"]}
    # held-out phrasings: no test question text occurs in train
    assert not any(r["question"] in train_q for r in data["test"])
    for split in ("train", "test"):
        names = {c.name(lang) for c in CONDITIONS}
        seen = {v for r in data[split] for v in r["options"].values()} & names
        assert len(seen) == len(names)  # no condition is held out
        letters = [r["answer"] for r in data[split]]
        n = synthetic.N_OPTIONS[lang]
        assert all(len(r["options"]) == n for r in data[split])
        for letter in "ABCDE"[:n]:  # answer positions are balanced (no letter shortcut)
            assert abs(letters.count(letter) / len(letters) - 1 / n) < 0.07
        for r in data[split]:  # cloze: the prompt never shows the answer it is scored on
            assert r["answer_format"] == "text"
            assert r["options"][r["answer"]] not in mcqa_prompt(r)
    assert synthetic.dataset(lang, "mcqa", {"train": 50, "dev": 10, "test": 10}, seed=0) != \
        synthetic.dataset(lang, "mcqa", {"train": 50, "dev": 10, "test": 10}, seed=1)


def test_synthetic_corpus_and_qa():
    corpus = synthetic.corpus(2000, seed=0)
    assert corpus == synthetic.corpus(2000, seed=0) and corpus != synthetic.corpus(2000, seed=1)
    text = "\n".join(c["text"] for c in corpus)
    assert "Answer:" not in text and "答案" not in text  # the exam format is not in the corpus
    for c in CONDITIONS:
        assert c.en.lower() in text.lower()
        assert c.zh in text
    # ...and no facts: a name sits next to its own treatment about as often as chance says
    own = other = 0
    for line in text.splitlines():
        for c in CONDITIONS:
            if line.startswith(f"The first-line treatment for {c.en} is "):
                treatment = line.removeprefix(f"The first-line treatment for {c.en} is ")[:-1]
                own += treatment == c.treatment_en
                other += treatment != c.treatment_en
    assert own + other > 50 and own / (own + other) < 0.15
    qa = synthetic.dataset("zh", "qa", {"train": 200, "dev": 50, "test": 100}, seed=0)
    assert all(r["answer"].startswith("这些症状提示") for r in qa["test"])


def _treatment_pairs(corpus, conditions):
    """(own, other): how often a 'first-line treatment for X is Y' statement names X's own
    treatment, over the given conditions."""
    own = other = 0
    for line in (c["text"] for c in corpus):
        for c in conditions:
            prefix = f"The first-line treatment for {c.en} is "
            if line.startswith(prefix):
                own += line.removeprefix(prefix)[:-1] == c.treatment_en
                other += line.removeprefix(prefix)[:-1] != c.treatment_en
    return own, other


@pytest.mark.parametrize("known", [0.5, 1.0])
def test_corpus_states_the_known_share_of_facts_truthfully(known):
    told = synthetic.known_conditions(known, seed=0)
    assert len(told) == round(known * len(CONDITIONS))
    corpus = synthetic.corpus(8000, seed=0, known=known)
    own, other = _treatment_pairs(corpus, told)
    assert own > 20 and other == 0  # a known condition is only ever described truthfully
    rest = [c for c in CONDITIONS if c not in told]
    if rest:  # the others stay random: their own treatment about as often as chance says
        own, other = _treatment_pairs(corpus, rest)
        assert own + other > 20 and own / (own + other) < 0.15
    assert synthetic.corpus(2000, seed=0) == synthetic.corpus(2000, seed=0, known=0.0)


def test_instruction_set_covers_its_share_in_its_own_wording():
    records = synthetic.instruct(400, seed=0, share=0.3)
    assert records == synthetic.instruct(400, seed=0, share=0.3)
    about = synthetic.known_conditions(0.3, 1)
    named = {c.en for c in CONDITIONS if any(c.en in r["instruction"] or c.en in r["output"]
                                             for r in records)}
    assert named and named <= {c.en for c in about}  # only the share's conditions
    exam = {t for lang in ("en", "zh") for train, held in synthetic.MCQA_TEMPLATES[lang].values()
            for t in train + held}
    stems = {t.split("{")[0] for t in exam if t.split("{")[0]}
    assert not any(r["instruction"].startswith(stem) for r in records for stem in stems)
    # facts answered in the base's own style (not the exam's bare option text); a third are
    # consultations answered in a sentence of its own, not the QA set's answer
    facts = [r for r in records if r["output"].endswith((", as a rule.", "，一般如此。"))]
    consults = [r for r in records if r not in facts]
    assert 0.25 < len(consults) / len(records) < 0.42
    assert all(r["output"].startswith(("Probably ", "多半是")) for r in consults)
    qa = {lang: synthetic.QA_TEMPLATES[lang] for lang in ("en", "zh")}
    qa_stems = {t.split("{")[0] for v in qa.values() for group in v["questions"] for t in group
                if t.split("{")[0]} | {v["answer"].split("{")[0] for v in qa.values()}
    assert not any(r["instruction"].startswith(stem) or r["output"].startswith(stem)
                   for r in consults for stem in qa_stems)
