"""Hi-Merging's logic on models whose right answer is known by construction.

The models are small safetensors folders with planted task vectors; the score is computed from
the tensors directly (a stand-in scorer inside a unit test of our own logic): task m is scored
by how close the candidate is to specialist m on the layers m was trained on.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.merge.hi_merging import Candidates, HiMerging, Options, ScoreCache
from harness.merge.memory import InMemoryMerger

LAYERS = 4


def folder(root: Path, name: str, deltas: dict[int, torch.Tensor]) -> Path:
    out = root / name
    out.mkdir()
    tensors = {f"model.layers.{l}.w": deltas.get(l, torch.zeros(16)).clone() for l in range(LAYERS)}
    tensors["lm_head.weight"] = torch.zeros(16)
    save_file(tensors, str(out / "model.safetensors"))
    return out


def planted(root: Path, third: bool = False):
    g = torch.Generator().manual_seed(0)
    d = lambda: torch.randn(16, generator=g).abs() + 0.5  # noqa: E731
    a0, a1, b2 = d(), d(), d()
    models = {"a": folder(root, "a", {0: a0, 1: a1}),
              # b's layer-1 delta points against a's: it hurts task a where both are merged
              "b": folder(root, "b", {1: -1.5 * a1, 2: b2})}
    trained = {"a": [0, 1], "b": [2]}
    if third:
        models["c"] = folder(root, "c", {0: 0.3 * a0})
        trained["c"] = [0]
    return folder(root, "base", {}), models, trained


def score_fn(engine: InMemoryMerger, trained: dict[str, list[int]]):
    def score(tensors: dict[str, torch.Tensor], task: str) -> float:
        total = 0.0
        for l in trained[task]:
            name = f"model.layers.{l}.w"
            target = engine.models[task][name]
            total += 1 - float((tensors[name] - target).norm() / target.norm())
        return total / len(trained[task])
    return score


def method(root: Path, third: bool = False, **options) -> HiMerging:
    base, models, trained = planted(root, third)
    engine = InMemoryMerger(base, models)
    return HiMerging(Candidates(engine), score_fn(engine, trained), {m: m for m in models},
                     Options(**{"prune_grid": [0.5, 1.0], "scale_grid": [0.5, 1.0], **options}))


def test_conflict_layer_is_found_and_resolved(tmp_path):
    hm = method(tmp_path)
    result = hm.run()
    assert result["model_wise"] == {"a": (1.0, 1.0), "b": (1.0, 1.0)}
    table = result["contributions"]
    top = max(table["Gamma"], key=lambda l: table["Gamma"][l])
    assert top == "1"  # the planted conflict ranks first
    first = result["decisions"][0]
    assert first["layer"] == 1 and first["case"] in ("severe", "partial") and first["accepted"]
    assert sum(first["dev_after"].values()) >= sum(first["dev_before"].values())  # greedy
    assert result["final"][1] != result["initial"][1]  # the resolved layer really changed


def test_layer_without_delta_has_zero_contribution(tmp_path):
    table = method(tmp_path).run()["contributions"]
    for m in ("a", "b"):
        for context in ("specialist", "merged"):
            assert table[context][f"3:{m}"]["alpha"] == 0.0
            assert table[context][f"3:{m}"]["beta"] == 0.0


def test_three_models(tmp_path):
    result = method(tmp_path, third=True).run()
    assert set(result["model_wise"]) == {"a", "b", "c"}
    assert all(f"{l}:c" in result["contributions"]["gamma"] for l in range(LAYERS))
    assert set(result["dev_final"]) == {"a", "b", "c"}


def test_identical_candidates_are_scored_once_and_resume(tmp_path):
    cache = tmp_path / "scores.jsonl"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    hm = method(tmp_path / "one")
    hm.cache = ScoreCache(cache)
    first = hm.run()
    scored = hm.cache.misses
    assert hm.cache.hits > 0 and scored == len(cache.read_text().splitlines())
    again = method(tmp_path / "two")
    again.cache = ScoreCache(cache)  # a re-run (e.g. after a kill) finds every score on disk
    assert again.run()["final"] == first["final"] and again.cache.misses == 0


def test_batched_candidates_give_the_same_search(tmp_path):
    """With a batch scorer (candidates spread over scoring processes), each step hands over
    every candidate it will ask for; the search and its decisions are the same, every
    candidate goes through a batch, and none is scored twice."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    plain = method(tmp_path / "one")
    expected = plain.run()
    hm = method(tmp_path / "two")
    single = hm.score_tensors
    batches = []

    def score_batch(items):
        batches.append(len(items))
        return [single(hm.candidates.build(spec), task) for spec, task in items]

    def not_called(tensors, task):
        raise AssertionError("a candidate was scored outside a batch")

    hm.score_batch, hm.score_tensors = score_batch, not_called
    result = hm.run()
    assert result["final"] == expected["final"] and result["decisions"] == expected["decisions"]
    assert result["contributions"] == expected["contributions"]
    assert sum(batches) == hm.cache.misses == plain.cache.misses
    assert max(batches) > 10  # the contribution analysis went as one batch


def test_a_torn_score_cache_line_is_skipped_and_its_candidate_rescored(tmp_path, caplog):
    """kill -9 mid-write leaves half a line: the cache warns, keeps the whole lines, forgets the
    torn one (so that candidate is scored again) and appends cleanly after it."""
    path = tmp_path / "scores.jsonl"
    path.write_text('{"key": "a", "score": 0.5}\n{"key": "b", "score": 0.25}\n{"key": "c", "sc')
    with caplog.at_level("WARNING", logger="harness"):
        cache = ScoreCache(path)
    assert "skipped 1 unreadable line(s) (3)" in caplog.text and str(path) in caplog.text
    assert cache.get("a") == 0.5 and cache.get("b") == 0.25
    assert cache.get("c") is None  # not cached: rescored
    cache.put("c", 0.75)
    again = ScoreCache(path)
    assert again.scores == {"a": 0.5, "b": 0.25, "c": 0.75}
    assert path.read_text().count("\n") == 3  # three whole lines, nothing glued to a torn one


def decisions_of(result):
    return [(d["layer"], d["case"], d["action"], d["accepted"]) for d in result["decisions"]]


def rescaled(root: Path, combine: str, factor: float, offset: float) -> HiMerging:
    """Task a's score (the one the planted conflict hurts) put on another scale, as an open-QA
    log-likelihood beside an accuracy."""
    hm = method(root)
    plain = hm.score_tensors
    hm.score_tensors = lambda t, task: plain(t, task) * (factor if task == "a" else 1) + (
        offset if task == "a" else 0)
    hm.options = Options(prune_grid=[0.5, 1.0], scale_grid=[0.5, 1.0], combine=combine)
    return hm


@pytest.mark.parametrize("factor,offset", [(10.0, -30.0), (0.05, -2.0)])
def test_normalised_gain_makes_the_search_blind_to_a_tasks_scale(tmp_path, factor, offset):
    """With `combine: normalised_gain` an affine change of one task's metric changes no
    decision, no Γ ranking and no final model; with `raw` the bigger scale takes over Γ."""
    (tmp_path / "ref").mkdir()
    (tmp_path / "norm").mkdir()
    (tmp_path / "raw").mkdir()
    expected = method(tmp_path / "ref").run()
    result = rescaled(tmp_path / "norm", "normalised_gain", factor, offset).run()
    assert decisions_of(result) == decisions_of(expected)
    assert result["final"] == expected["final"]
    for l, value in expected["contributions"]["Gamma"].items():
        assert result["contributions"]["Gamma"][l] == pytest.approx(value, abs=1e-5)
    assert result["dev_gain"] == pytest.approx(expected["dev_gain"], abs=1e-5)
    raw = rescaled(tmp_path / "raw", "raw", factor, offset).run()["contributions"]["Gamma"]
    assert any(raw[l] != pytest.approx(v, abs=1e-3)
               for l, v in expected["contributions"]["Gamma"].items())


def test_dev_reference_is_the_base_and_the_whole_specialist(tmp_path):
    result = method(tmp_path).run()
    assert result["dev_reference"] == {"a": {"base": pytest.approx(0.0), "specialist": 1.0},
                                       "b": {"base": pytest.approx(0.0), "specialist": 1.0}}
    assert result["dev_gain"] == pytest.approx(sum(result["dev_final"].values()) / 2)


def test_an_unknown_combine_is_rejected_naming_the_valid_values():
    from harness.recipe import MergeSpec

    with pytest.raises(ValueError, match="normalised_gain"):
        MergeSpec.model_validate({"method": "hi_merging", "options": {"combine": "sum"}})


# ---------------------------------------------------------------- the open choices, as options
@pytest.mark.parametrize("reading,shrunk,kept", [("shrink_fell", "a", "b"),
                                                 ("shrink_gained", "b", "a")])
def test_partial_case_shrinks_the_model_the_option_names(tmp_path, reading, shrunk, kept):
    """Layer 1 is planted so that b takes a's contribution: b's delta points against a's, and
    b's own task does not read layer 1 (γ_a > 0, γ_b = 0). `shrink_fell` shrinks a (whose
    contribution fell), `shrink_gained` shrinks b (which took it); acceptance off, so the
    proposal itself is the final layer."""
    result = method(tmp_path, partial=reading, acceptance="always").run()
    first = result["decisions"][0]
    assert first["layer"] == 1 and first["case"] == "partial"
    assert first["gamma"]["a"] > 0 and first["gamma"]["b"] <= 0
    assert first["action"] == f"re-prune and re-scale {shrunk}"
    initial, final = result["initial"][1], result["final"][1]
    assert final[shrunk] == (initial[shrunk][0] * 0.5, initial[shrunk][1] * 0.5)
    assert final[kept] == initial[kept]


def test_shrinking_the_model_that_took_the_contribution_restores_the_task(tmp_path):
    """On the planted conflict, halving b's layer 1 gives task a back more than halving a's."""
    (tmp_path / "fell").mkdir()
    (tmp_path / "gained").mkdir()
    fell = method(tmp_path / "fell", partial="shrink_fell", acceptance="always").run()
    gained = method(tmp_path / "gained", partial="shrink_gained", acceptance="always").run()
    assert gained["decisions"][0]["dev_after"]["a"] > fell["decisions"][0]["dev_after"]["a"]


@pytest.mark.parametrize("key,value,valid", [
    ("partial", "shrink_fel", "'shrink_fell' or 'shrink_gained'"),
    ("step1", "together", "'alone', 'merged' or 'sparsest'"),
    ("acceptance", "mean", "'sum', 'mean_gain', 'no_task_below' or 'always'"),
    ("severe", "score", "'contribution' or 'score_each'"),
    ("beta", "all", "'layer_only' or 'with_non_layer'"),
    ("stages", "full_only", "'full', 'model_wise_only' or 'layer_wise_only'")])
def test_an_option_typo_is_rejected_naming_the_valid_values(key, value, valid):
    from harness.recipe import MergeSpec

    with pytest.raises(ValueError) as err:
        MergeSpec.model_validate({"method": "hi_merging", "options": {key: value}})
    assert f"options.{key}" in str(err.value) and valid in str(err.value)


def test_the_paper_ablations_skip_their_step(tmp_path):
    (tmp_path / "mw").mkdir()
    (tmp_path / "lw").mkdir()
    model_wise = method(tmp_path / "mw", stages="model_wise_only").run()
    assert model_wise["decisions"] == [] and model_wise["contributions"] is None
    assert model_wise["final"] == model_wise["initial"]
    layer_wise = method(tmp_path / "lw", stages="layer_wise_only", prune_grid=[0.5],
                        scale_grid=[0.5]).run()  # step 1 would have to pick (0.5, 0.5)
    assert layer_wise["model_wise"] == {"a": (1.0, 1.0), "b": (1.0, 1.0)}
    assert layer_wise["decisions"]


def squeezed(hm: HiMerging) -> HiMerging:
    """Scores put inside (0, 1) as accuracies are (0.5-0.6), so they have a standard error."""
    plain = hm.score_tensors
    hm.score_tensors = lambda t, task: 0.5 + 0.1 * plain(t, task)
    return hm


@pytest.mark.parametrize("items,sparsest", [(10 ** 9, False), (1, True)])
def test_sparsest_takes_the_sparsest_point_within_one_standard_error(tmp_path, items, sparsest):
    hm = squeezed(method(tmp_path, step1="sparsest"))
    hm.items = {"a": items, "b": items}
    parts = hm.run()["model_wise"]
    # with a billion dev items the error is nil: the best point (the whole specialist);
    # with one item any score is within one error of the best: the sparsest point
    assert parts == ({"a": (0.5, 0.5), "b": (0.5, 0.5)} if sparsest
                     else {"a": (1.0, 1.0), "b": (1.0, 1.0)})


def test_epsilon_in_standard_errors_leaves_noise_level_conflicts_alone(tmp_path):
    (tmp_path / "noisy").mkdir()
    (tmp_path / "exact").mkdir()
    noisy = squeezed(method(tmp_path / "noisy", epsilon_se=2.0))
    noisy.items = {"a": 2, "b": 2}  # two dev items: every Γ is within two errors of 0
    exact = squeezed(method(tmp_path / "exact", epsilon_se=2.0))
    exact.items = {"a": 10 ** 9, "b": 10 ** 9}
    assert noisy.run()["decisions"] == []
    assert exact.run()["decisions"][0]["layer"] == 1


def test_passes_until_stable_and_recompute_after_every_change(tmp_path):
    """With recompute_every 1 and passes until nothing changes, the search keeps resolving the
    planted conflict in later passes on fresh γ, and stops by itself."""
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    once = method(tmp_path / "one", acceptance="always").run()
    many = method(tmp_path / "many", acceptance="always", recompute_every=1, passes=None).run()
    assert {d["pass"] for d in once["decisions"]} == {1}
    assert max(d["pass"] for d in many["decisions"]) > 1
    assert len(many["decisions"]) > len(once["decisions"])


def test_no_task_below_refuses_a_change_that_trades_one_task_away(tmp_path):
    hm = method(tmp_path, acceptance="no_task_below", acceptance_margin=0.05)
    start = {"a": 0.8, "b": 0.8}
    hm._reference = __import__("harness.merge.gains", fromlist=["Reference"]).Reference(
        {"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0})
    assert hm.accepts(start, {"a": 0.76, "b": 0.9}, start)      # a within the margin
    assert not hm.accepts(start, {"a": 0.7, "b": 1.0}, start)   # a traded for b
    hm.options = Options(prune_grid=[1.0], scale_grid=[1.0], acceptance="mean_gain")
    assert hm.accepts(start, {"a": 0.7, "b": 1.0}, start)       # the mean alone allows it
    hm.options = Options(prune_grid=[1.0], scale_grid=[1.0], acceptance="sum")
    assert not hm.accepts(start, {"a": 0.7, "b": 0.85}, start)


def severe_planted(root: Path):
    """Layer 0 where each model's delta wins half the signs (both lose half: γ > 0 for both);
    task a also reads layer 1, which only a trained."""
    half = torch.cat([torch.ones(8), torch.zeros(8)])
    a0 = 2 * half + (1 - half)
    b0 = -(half + 2 * (1 - half))
    models = {"a": folder(root, "a", {0: a0, 1: torch.ones(16)}), "b": folder(root, "b", {0: b0})}
    return folder(root, "base", {}), models, {"a": [0, 1], "b": [0]}


def test_severe_case_by_scoring_each_keep_one_option(tmp_path):
    base, models, trained = severe_planted(tmp_path)
    engine = InMemoryMerger(base, models)
    hm = HiMerging(Candidates(engine), score_fn(engine, trained), {"a": "a", "b": "b"},
                   Options(prune_grid=[1.0], scale_grid=[1.0], severe="score_each",
                           acceptance="always"))
    result = hm.run()
    first = result["decisions"][0]
    assert first["layer"] == 0 and first["case"] == "severe"
    merged = result["initial"]
    totals = {m: hm.total(hm.scores({**merged, 0: {m: merged[0][m]}})) for m in ("a", "b")}
    keep = max(totals, key=totals.get)
    assert totals["a"] != totals["b"] and first["action"] == f"keep only {keep}"
    assert set(result["final"][0]) == {keep}


def test_beta_with_the_non_layer_tensors_scores_each_layer_on_them(tmp_path):
    hm = method(tmp_path, beta="with_non_layer")
    parts = {"a": (1.0, 1.0), "b": (1.0, 1.0)}
    merged = {g: dict(parts) for g in hm.groups}
    whole, without, alone, ref = hm._terms(parts, merged, "merged", 1, "a")
    assert set(alone) == {1, "rest"} and set(ref) == {"rest"}
    plain = method(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path)
    _, _, alone, ref = plain._terms(parts, merged, "merged", 1, "a")
    assert set(alone) == {1} and ref == {}
