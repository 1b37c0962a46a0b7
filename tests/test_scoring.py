"""The two candidate scorers (resident HF model, resident vLLM engine) agree on the same
candidates; tolerance: MCQA accuracy within one item, QA mean log-likelihood within 1e-3."""
import pytest
import torch

from harness.data import synthetic
from harness.merge.hi_merging import REST, Candidates
from harness.merge.memory import InMemoryMerger
from harness.plan import build_plan
from harness.scoring.requests import mean_rouge
from harness.recipe import load_recipe
from harness.store import Store

from conftest import PROJECT
from tiny_models import plant_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scoring")
    recipe = load_recipe("tiny_en_zh_mcqa", PROJECT / "recipes")
    plan = build_plan(recipe, PROJECT / "requirements")
    store = Store(tmp, recipe.name)
    base, *sp = [u for u in plan["specialists"] if "multitask" not in u.inputs]
    plant_family(store, base.key, [u.key for u in sp], noise=0.05)
    base_dir = store.path("specialists", base.key) / "model"
    models = {f"m{i}": store.path("specialists", u.key) / "model" for i, u in enumerate(sp)}
    en = synthetic.dataset("en", "mcqa", {"train": 1, "dev": 40, "test": 1}, 0)["dev"]
    dev = {"en": (en, "mcqa"),  # cloze: option texts
           "zh": (synthetic.dataset("zh", "mcqa", {"train": 1, "dev": 40, "test": 1}, 0)["dev"], "mcqa"),
           "qa": (synthetic.dataset("en", "qa", {"train": 1, "dev": 10, "test": 1}, 0)["dev"], "qa"),
           # the same items as lettered exam questions (options in the prompt, letter answers)
           "en_letter": ([{k: v for k, v in r.items() if k != "answer_format"} for r in en], "mcqa")}
    return base_dir, models, dev


def test_hf_and_vllm_scorers_agree(family):
    from harness.scoring.candidates import CandidateScorer

    base_dir, models, dev = family
    candidates = Candidates(InMemoryMerger(base_dir, models))
    specs = [{}, {g: {"m0": (1.0, 1.0)} for g in candidates.groups},
             {1: {"m0": (0.5, 1.0), "m1": (0.5, 1.0)}},
             {g: {"m0": (0.7, 0.8), "m1": (0.3, 1.0)} for g in [0, 2, REST]}, {}]
    scores, moved, texts = {}, {}, {}
    for backend in ("hf", "vllm"):
        scorer = CandidateScorer(backend, base_dir, dev, "float32", True, max_model_len=512)
        try:
            scores[backend] = [[scorer.score(candidates.build(s), t) for t in dev] for s in specs]
            # a candidate that differs from the one held in one layer moves that layer only
            full = {g: {"m0": (1.0, 1.0)} for g in candidates.groups}
            scorer.score(candidates.build(full), "en")
            before = scorer.stats()["tensors_moved"]
            scorer.score(candidates.build({**full, 2: {"m1": (1.0, 1.0)}}), "en")
            moved[backend] = scorer.stats()["tensors_moved"] - before
            if backend == "vllm":
                check_prefix_cache(scorer.engine, dev["en"][0])
            texts[backend] = generated(scorer, candidates.build(specs[1]), dev["qa"][0])
        finally:
            scorer.close()
    # `generate` mode: both engines give the same greedy answers (float noise may flip a late
    # token of one), and the QA dev score is their ROUGE-L
    hf, vllm = texts["hf"][0], texts["vllm"][0]
    same = sum(a == b for a, b in zip(hf, vllm))
    assert same >= len(hf) - 1, list(zip(hf, vllm))
    for backend, (answers, score) in texts.items():
        assert score == pytest.approx(mean_rouge(dev["qa"][0], answers))
    assert same >= 1  # the comparison is not vacuous
    for hf_row, v_row in zip(scores["hf"], scores["vllm"]):
        assert abs(hf_row[0] - v_row[0]) <= 1 / 40 + 1e-9
        assert abs(hf_row[1] - v_row[1]) <= 1 / 40 + 1e-9
        assert hf_row[2] == pytest.approx(v_row[2], abs=1e-3)
        assert abs(hf_row[3] - v_row[3]) <= 1 / 40 + 1e-9
    assert scores["hf"][0] == scores["hf"][-1]  # back to the base: the same scores again
    assert moved == {"hf": len(candidates.groups[2]), "vllm": len(candidates.groups[2])}


def generated(scorer, tensors, records):
    """(greedy answers, `generate`-mode dev score) of one candidate on the QA records."""
    scorer.mode, scorer.max_gen_toks = "generate", 24
    try:
        score = scorer.score(tensors, "qa")
    finally:
        scorer.mode = "loglikelihood"
    engine = scorer.engine if scorer.backend == "vllm" else scorer.hf
    contexts = engine.requests.qa_contexts(records)
    if scorer.backend == "vllm":
        return engine.generations(contexts, 24), score
    return engine.generations(scorer.engine.model, contexts, 24), score


def test_hf_generation_batches_like_one_prompt_at_a_time(family):
    """Left padding and the stop tokens: a batch gives each prompt the answer it gets alone."""
    from harness.scoring.hf import HFScorer, load_model

    base_dir, models, dev = family
    model = load_model(models["m0"])
    scorer = HFScorer(base_dir, batch_size=4)
    contexts = scorer.requests.qa_contexts(dev["qa"][0])
    assert len({len(c) for c in contexts}) > 1  # prompts of different lengths: padding matters
    batched = scorer.generations(model, contexts, 24)
    scorer.batch_size = 1
    assert batched == scorer.generations(model, contexts, 24)
    assert all(t.strip() for t in batched)  # the planted model writes something


def check_prefix_cache(engine, records):
    """Options after the first of a question read its KV blocks from the prefix cache; the
    log-likelihoods equal a no-cache pass, also for a continuation the cache reaches into."""
    from harness.scoring.requests import Pair

    pairs = engine.requests.mcqa(records)
    long = Pair(len(records), pairs[0].context[:8], pairs[0].context[8:80])
    pairs += [long, Pair(len(records), long.context, long.continuation + [5])]
    engine.llm.reset_prefix_cache()
    cached = engine.logliks(pairs)
    plain = engine._score(pairs, list(range(len(pairs))), [None] * len(pairs), cached=False)
    assert cached == pytest.approx(plain, abs=1e-4)


def test_hf_scorer_reuses_lower_layers_with_identical_scores(family):
    from harness.scoring.candidates import CandidateScorer

    base_dir, models, dev = family
    candidates = Candidates(InMemoryMerger(base_dir, models))
    full = {g: {"m0": (1.0, 1.0)} for g in candidates.groups}
    specs = [full, {**full, 3: {"m1": (1.0, 1.0)}}, {**full, 2: {}}, full]
    results = {}
    for reuse in (True, False):
        scorer = CandidateScorer("hf", base_dir, dev, "float32", True)
        if not reuse:  # the same scorer with every layer recomputed
            for i, layer in enumerate(scorer.engine.model.model.layers):
                scorer.engine.model.model.layers[i] = layer.layer
        results[reuse] = [[scorer.score(candidates.build(s), t) for t in dev] for s in specs]
        if reuse:
            stats = scorer.stats()
    assert results[True] == results[False]
    # candidate 2 changes only layer 3: layers 0-2 of every batch come from the cache
    assert stats["layers_reused"] > 0 and stats["layers_computed"] > 0


@pytest.mark.parametrize("where", ["local", "ray"])
def test_scorer_pool_matches_one_resident_scorer(family, tmp_path, where, monkeypatch):
    """Candidates spread over two scoring processes (a local pool, or Ray actors on a local
    Ray instance), each building them from their specs: the same scores as one scorer here."""
    from harness.data.records import write_jsonl
    from harness.recipe import ExecutorSpec
    from harness.scoring.candidates import CandidateScorer
    from harness.scoring.pool import ScorerPool, ScorerSetup

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    base_dir, models, dev = family
    tasks = {"en": dev["en"], "qa": dev["qa"]}
    paths = {t: tmp_path / f"{t}.jsonl" for t in tasks}
    for t, (records, _) in tasks.items():
        write_jsonl(paths[t], records)
    setup = ScorerSetup("hf", str(base_dir), {n: str(p) for n, p in models.items()},
                        {t: (str(paths[t]), kind) for t, (_, kind) in tasks.items()},
                        None, "float32", True, 32, 512, 1)
    candidates = Candidates(InMemoryMerger(base_dir, models))
    specs = [{}, {1: {"m0": (0.5, 1.0), "m1": (0.5, 1.0)}},
             {g: {"m0": (0.7, 0.8), "m1": (0.3, 1.0)} for g in [0, 2, REST]}]
    items = [(s, t) for s in specs for t in tasks]
    here = CandidateScorer("hf", base_dir, tasks, "float32", True, max_model_len=512)
    expected = [here.score(candidates.build(s), t) for s, t in items]
    if where == "ray":
        ray = pytest.importorskip("ray")
        ray.init(num_cpus=2, include_dashboard=False)
        spec = ExecutorSpec(kind="ray", workers=2, cpus_per_unit=1)
    else:
        spec = ExecutorSpec(workers=2)
    pool = ScorerPool(spec, setup)
    try:
        got = pool(items)
        again = pool(items[:2])  # a second batch: the resident scorers are reused
    finally:
        pool.close()
        if where == "ray":
            ray.shutdown()
    assert got == pytest.approx(expected, abs=1e-4)
    assert again == pytest.approx(expected[:2], abs=1e-4)
    assert pool.stats()["batches"] == 2 and pool.stats()["scored"] == len(items) + 2
