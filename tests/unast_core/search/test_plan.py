import math

import pytest

from unast_core.config import SearchConfig
from unast_core.errors import InfeasibleBudget
from unast_core.search.plan import check_reachable, plan

# 4 sublayers x {teacher, identity}; teacher total latency 10 = fixed 2 + 4 x 2.
LUT = {"pool": [{"op": "teacher"}, {"op": "identity"}], "costs": {"latency": [[2.0, 0.0]] * 4, "params": [[5, 0]] * 4},
       "fixed": {"latency": 2.0, "params": 20}, "teacher": {"latency": 10.0, "params": 40}}
SCORES = [[0.0, 0.4], [0.0, 0.1], [0.0, 0.3], [0.0, 0.2]]


def test_plan_meets_the_budget_with_the_cheapest_damage():
    result = plan(SCORES, LUT, {"latency": 0.6}, SearchConfig(k=2))
    best = result["architectures"][0]
    assert best["choice"] == [0, 1, 0, 1]  # skip the two least harmful sublayers
    assert best["predicted_ratio"]["latency"] == pytest.approx(0.6)
    assert best["score_sum"] == pytest.approx(0.3)
    assert len(result["architectures"]) == 2


def test_unreachable_budget_names_the_smallest_reachable_value():
    with pytest.raises(InfeasibleBudget, match=r"latency=0.1 .*smallest reachable is latency=0.2") as info:
        check_reachable(LUT, {"latency": 0.1})
    assert info.value.reachable["latency"] == pytest.approx(0.2)
    with pytest.raises(InfeasibleBudget, match="smallest reachable is latency=0.2"):
        plan(SCORES, LUT, {"latency": 0.1}, SearchConfig())
    check_reachable(LUT, {"latency": 0.2, "params": 0.5})  # exactly reachable is fine


def test_failed_candidates_are_never_chosen():
    scores = [row[:] for row in SCORES]
    scores[1][1] = math.nan
    best = plan(scores, LUT, {"latency": 0.6}, SearchConfig())["architectures"][0]
    assert best["choice"][1] == 0


def test_calibration_maps_the_budget_and_the_reported_prediction():
    from unast_core.search.cost import calibrated_ratio, fit_calibration, table_fraction

    fit = fit_calibration([0.4, 0.6, 0.8, 1.0], [0.3, 0.55, 0.8, 1.05])  # measured = -0.2 + 1.25 x table, exactly
    assert fit["slope"] == pytest.approx(1.25) and fit["intercept"] == pytest.approx(-0.2)
    assert fit["max_abs_residual"] == pytest.approx(0.0, abs=1e-12)
    assert fit_calibration([0.5, 0.5], [0.4, 0.6])["slope"] == 1.0  # no spread: identity, never a division by 0
    assert fit_calibration([0.4, 0.8], [0.9, 0.5]) | {"points": None} == {
        "intercept": 0.0, "slope": 1.0, "max_abs_residual": pytest.approx(0.5), "points": None}  # decreasing: identity
    lut = {**LUT, "calibration": {"latency": fit}}
    assert table_fraction(lut, "latency", calibrated_ratio(lut, "latency", 0.7)) == pytest.approx(0.7)
    assert table_fraction(lut, "params", 0.5) == 0.5  # only latency is calibrated
    # measured 0.55 at table 0.6: budget 0.55 gets the same choice as an uncalibrated 0.6, reported as 0.55
    best = plan(SCORES, lut, {"latency": 0.55}, SearchConfig(k=1))["architectures"][0]
    assert best["choice"] == [0, 1, 0, 1]
    assert best["table_ratio"]["latency"] == pytest.approx(0.6) and best["predicted_ratio"]["latency"] == pytest.approx(0.55)
    with pytest.raises(InfeasibleBudget, match="smallest reachable is latency=0.05"):  # -0.2 + 1.25 x 0.2, calibrated
        check_reachable(lut, {"latency": 0.01})


def test_negative_scores_are_not_taken_for_free():
    """A replacement scored below the teacher (noise of a few sequences) ties with it and loses the tie: with
    a budget the teacher meets, nothing is replaced; unfloored, the ILP takes the 'free' skips."""
    from unast_core.search.plan import TIE_BREAK, floored

    scores = [[0.0, -0.28], [0.0, 0.1], [0.0, -0.05], [0.0, 0.2]]
    assert floored(scores, LUT["pool"]) == [[0.0, TIE_BREAK], [0.0, 0.1], [0.0, TIE_BREAK], [0.0, 0.2]]
    assert math.isnan(floored([[0.0, math.nan]], LUT["pool"])[0][1])
    loose = {"latency": 1.0}
    assert plan(scores, LUT, loose, SearchConfig(k=1))["architectures"][0]["choice"] == [0, 0, 0, 0]
    assert plan(scores, LUT, loose, SearchConfig(k=1, floor_scores=False))["architectures"][0]["choice"] == [1, 0, 1, 0]
    # under a budget that needs two skips, the floored ones are still the cheapest damage
    assert plan(scores, LUT, {"latency": 0.6}, SearchConfig(k=1))["architectures"][0]["choice"] == [1, 0, 1, 0]


def test_fitted_scale_moves_the_choice_from_distilled_replacements_to_skips():
    """With the prior on (the default, 2), a linear replacement scored a little better than a skip loses to it;
    NaN stays NaN and the score the architecture reports is the scaled one the ILP minimised."""
    from unast_core.search.plan import scaled

    lut = {**LUT, "pool": [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"}],
           "costs": {"latency": [[2.0, 0.0, 0.0]] * 4, "params": [[5, 0, 1]] * 4}}
    scores = [[0.0, 0.5, 0.3], [0.0, 0.1, 0.08], [0.0, 0.6, 0.4], [0.0, 0.2, math.nan]]
    assert scaled(scores, lut["pool"], 2.0)[1] == [0.0, 0.1, 0.16]
    assert math.isnan(scaled(scores, lut["pool"], 2.0)[3][2])
    assert scaled([[0.0, -0.1, -0.2]], lut["pool"], 2.0) == [[0.0, -0.1, -0.2]]
    budget = {"latency": 0.6}  # two of the four sublayers replaced, by a skip or a linear layer
    off = plan(scores, lut, budget, SearchConfig(k=1, fitted_scale=1.0))["architectures"][0]
    on = plan(scores, lut, budget, SearchConfig(k=1))["architectures"][0]  # the default: 2
    assert off["choice"][1] == 2 and on["choice"][1] == 1  # 0.08 beats the skip's 0.1; 0.16 does not
    assert on["score_sum"] > off["score_sum"]


def test_a_whole_block_scored_as_one_skip_is_taken_over_two_scattered_skips():
    """Sublayers 0-1 are one block. Skipped one by one they score 0.4 + 0.1 and the search would skip 1 and 3
    (0.3); skipped together they score 0.15, so with the block score it skips the block (0, 1) instead, and
    reports that score. A super-additive block score keeps the pair apart."""
    from unast_core.search.plan import block_pairs

    budget = {"latency": 0.6}  # two of the four sublayers skipped
    assert plan(SCORES, LUT, budget, SearchConfig(k=1))["architectures"][0]["choice"] == [0, 1, 0, 1]
    best = plan(SCORES, LUT, budget, SearchConfig(k=1), block_scores=[0.15, None, 0.9, None])["architectures"][0]
    assert best["choice"] == [1, 1, 0, 0] and best["score_sum"] == pytest.approx(0.15)
    assert block_pairs(SCORES, LUT["pool"], [0.15, None, 0.9, None], True) == [
        (0, 1, 1, 1, pytest.approx(-0.35)), (2, 1, 3, 1, pytest.approx(0.4))]
    # a sub-additive block that is still worse than two scattered skips is not taken
    worse = plan(SCORES, LUT, budget, SearchConfig(k=1), block_scores=[0.45, None, None, None])["architectures"][0]
    assert worse["choice"] == [0, 1, 0, 1]
    assert block_pairs(SCORES, LUT["pool"], [-0.2, None, math.nan, None], True)[0][4] == pytest.approx(1e-6 - 0.5)
    assert block_pairs(SCORES, [{"op": "teacher"}, {"op": "linear"}], [0.1, None, None, None], True) == []
