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


def method(root: Path, third: bool = False) -> HiMerging:
    base, models, trained = planted(root, third)
    engine = InMemoryMerger(base, models)
    return HiMerging(Candidates(engine), score_fn(engine, trained), {m: m for m in models},
                     Options(prune_grid=[0.5, 1.0], scale_grid=[0.5, 1.0]))


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
