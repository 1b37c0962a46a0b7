"""One scale across tasks (harness/merge/gains.py): normalised gains and the grid choice."""
import pytest

from harness.merge import gains

# An MCQA accuracy (base 0.25, specialist 0.65) beside an open-QA mean log-likelihood
# (base -3.0, specialist -2.0): raw scores live on unrelated scales.
REF = gains.Reference({"mcqa": 0.25, "qa": -3.0}, {"mcqa": 0.65, "qa": -2.0})


def test_gain_is_zero_at_the_base_and_one_at_the_specialist():
    assert REF.gain("mcqa", 0.25) == 0.0 and REF.gain("mcqa", 0.65) == pytest.approx(1.0)
    assert REF.gain("qa", -3.0) == 0.0 and REF.gain("qa", -2.0) == pytest.approx(1.0)
    assert REF.mean_gain({"mcqa": 0.45, "qa": -2.25}) == pytest.approx((0.5 + 0.75) / 2)


def test_a_failed_specialist_keeps_higher_is_better():
    ref = gains.Reference({"t": 0.5}, {"t": 0.4})  # the specialist is worse than the base
    assert ref.weak() == ["t"]
    assert ref.gain("t", 0.6) > ref.gain("t", 0.5) > ref.gain("t", 0.4)


def test_a_flat_specialist_is_left_out_instead_of_outweighing_every_task():
    # One dev item (1/16) over an equal specialist: a floored span would score it in the
    # thousands and decide the whole merge on it.
    ref = gains.Reference({"mcqa": 0.25, "flat": 0.5}, {"mcqa": 0.65, "flat": 0.5})
    assert ref.flat() == ["flat"] and ref.weak() == ["flat"]
    assert ref.mean_gain({"mcqa": 0.45, "flat": 0.5 + 1 / 16}) == pytest.approx(0.5)
    assert ref.mean_gain({"mcqa": 0.45, "flat": 0.0}) == pytest.approx(0.5)
    assert ref.unit("flat") == 0.0 and ref.unit("mcqa") == pytest.approx(2.5)
    # Every task flat: raw differences from the base, so a better merge still wins.
    none = gains.Reference({"a": 0.5, "b": -3.0}, {"a": 0.5, "b": -3.0})
    assert none.mean_gain({"a": 0.6, "b": -3.0}) > none.mean_gain({"a": 0.5, "b": -3.0})


def point(params, scores):
    return {"params": params, "dev_scores": scores, "dev_mean": sum(scores.values()) / 2,
            "dev_gain": REF.mean_gain(scores)}


def test_choice_follows_gain_not_the_raw_mean():
    # A keeps QA (gain 1.0) and loses MCQA (0.0); B keeps 60 % of MCQA and 30 % of QA.
    # The raw mean prefers A (its log-likelihood is less negative); gains prefer B.
    a = point({"weight": 1.0}, {"mcqa": 0.25, "qa": -2.0})
    b = point({"weight": 0.5}, {"mcqa": 0.49, "qa": -2.7})
    assert a["dev_mean"] > b["dev_mean"]
    assert a["dev_gain"] == pytest.approx(0.5) and b["dev_gain"] == pytest.approx(0.45)
    c = point({"weight": 0.7}, {"mcqa": 0.57, "qa": -2.6})  # 0.8 and 0.4: gain 0.6
    assert gains.best_point([a, b, c]) == 2
    assert max(range(3), key=lambda i: [a, b, c][i]["dev_mean"]) == 0  # raw would pick a


def test_ties_go_to_the_raw_mean_then_the_lighter_merge_never_grid_order():
    heavy = point({"density": 0.7, "weight": 1.0}, {"mcqa": 0.45, "qa": -2.5})
    light = point({"density": 0.5, "weight": 1.0}, {"mcqa": 0.45, "qa": -2.5})
    assert gains.best_point([heavy, light]) == 1
    assert gains.best_point([light, heavy]) == 0
    richer = dict(heavy, dev_mean=heavy["dev_mean"] + 0.01)  # same gain, higher raw mean
    assert gains.best_point([light, richer]) == 1


def test_measure_scores_the_base_and_each_tasks_own_specialist():
    seen = []

    def score(weights, task):
        seen.append((weights, task))
        return {"base": 0.2, "sp_a": 0.6, "sp_b": 0.9}[weights] + (task == "b") * 0.1

    ref = gains.measure(score, "base", {"a": "sp_a", "b": "sp_b"})
    assert ref.base == {"a": 0.2, "b": pytest.approx(0.3)}
    assert ref.specialist == {"a": 0.6, "b": pytest.approx(1.0)}
    assert ("sp_a", "b") not in seen  # a specialist is scored on its own task only
