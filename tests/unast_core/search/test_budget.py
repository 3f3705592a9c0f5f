"""The budget rules as pure functions, with numbers."""

import pytest

from unast_core.errors import InfeasibleBudget
from unast_core.search.budget import (corrected_budget, hold_latency_budget, kept_within, loosened_budget,
                                     within_budget)


def test_within_budget_allows_the_tolerance_on_latency_only():
    assert within_budget({"latency": 0.5, "params": 0.6}, {"latency": 0.519, "params": 0.6}, 0.02)
    assert not within_budget({"latency": 0.5}, {"latency": 0.521}, 0.02)
    assert not within_budget({"params": 0.6}, {"params": 0.6001}, 0.02)  # exact costs get no tolerance
    assert within_budget({"latency": 0.5, "memory": 0.3}, {"latency": 0.5}, 0.0)  # only what was measured counts


def test_corrected_budget_scales_by_the_median_and_never_loosens():
    assert corrected_budget({"latency": 0.66, "params": 0.9}, [0.6, 0.6, 0.6], [0.66, 0.65, 0.67]) == pytest.approx(
        {"latency": 0.6, "params": 0.9})
    assert corrected_budget({"latency": 0.5}, [0.5], [0.4]) == {"latency": 0.5}


def test_kept_within_falls_back_to_the_fastest():
    assert kept_within([0.7, 0.5, 0.52], 0.52) == [1, 2]
    assert kept_within([0.7, 0.6, 0.65], 0.52) == [1]


class _Searches:
    """A fake search: each budget asked gives architectures with known predicted and measured ratios."""

    def __init__(self, results):
        self.results, self.asked = results, []

    def __call__(self, budget):
        self.asked.append(budget)
        outcome = self.results[len(self.asked) - 1]
        if outcome is None:
            raise InfeasibleBudget("unreachable", {"latency": 0.9})
        return outcome


def test_hold_keeps_the_measured_ones_without_searching_again():
    search = _Searches([])
    held = hold_latency_budget({"latency": 0.5}, 0.02, "first", [0.5, 0.49, 0.48], lambda f: [0.53, 0.515, 0.50], search)
    assert held.found == "first" and held.kept == [1, 2] and held.corrected is None and search.asked == []
    assert held.notes == ["architecture 0 measured latency 0.530, over 0.520: left out of select"]


def test_hold_searches_again_with_the_corrected_budget():
    # every architecture measures 10% over its prediction: the search runs again at 0.5 / 1.1
    measurements = {"first": [0.55, 0.55, 0.561], "retry": [0.505, 0.49]}
    search = _Searches(["retry"])
    held = hold_latency_budget({"latency": 0.5}, 0.02, "first", [0.5, 0.5, 0.51], lambda f: measurements[f], search)
    assert search.asked == [{"latency": pytest.approx(0.5 / 1.1)}]
    assert held.found == "retry" and held.measured == [0.505, 0.49] and held.kept == [0, 1]
    assert held.corrected == {"latency": pytest.approx(0.4545, abs=1e-4)} and not held.corrected_unreachable


def test_hold_keeps_the_fastest_measured_when_the_corrected_budget_is_unreachable():
    search = _Searches([None])
    held = hold_latency_budget({"latency": 0.5}, 0.02, "first", [0.5, 0.5], lambda f: [0.62, 0.58], search)
    assert held.corrected_unreachable and held.found == "first" and held.kept == [1]
    assert "unreachable" in held.notes[-1]


def test_hold_falls_back_to_the_fastest_when_the_retry_is_still_over():
    measurements = {"first": [0.6, 0.62], "retry": [0.56, 0.54, 0.57]}
    held = hold_latency_budget({"latency": 0.5}, 0.02, "first", [0.5, 0.5], lambda f: measurements[f],
                               _Searches(["retry"]))
    assert held.found == "retry" and held.kept == [1] and "keeping the fastest" in held.notes[-1]


def test_loosened_budget_scales_by_the_median_and_never_tightens():
    assert loosened_budget({"latency": 0.75, "params": 0.9}, [0.75, 0.75, 0.75], [0.70, 0.72, 0.71]) == pytest.approx(
        {"latency": 0.75 / (0.71 / 0.75), "params": 0.9})
    assert loosened_budget({"latency": 0.5}, [0.5], [0.6]) == {"latency": 0.5}
    assert loosened_budget({"latency": 0.95}, [0.95], [0.5]) == {"latency": 1.0}  # never past the teacher


def test_hold_searches_again_with_a_looser_budget_when_everything_measures_well_under():
    # the table over-predicts by 5%: 0.75 is searched again at 0.75 / 0.95, and that search's ones hold
    measurements = {"first": [0.7125, 0.7125, 0.70], "retry": [0.752, 0.775, 0.745]}
    search = _Searches(["retry"])
    held = hold_latency_budget({"latency": 0.75}, 0.02, "first", [0.75, 0.75, 0.74], lambda f: measurements[f], search)
    assert search.asked == [{"latency": pytest.approx(0.75 / 0.95)}]
    assert held.found == "retry" and held.kept == [0, 2] and "under the budget" in held.notes[0]


def test_hold_keeps_the_first_search_when_the_looser_one_measures_over():
    measurements = {"first": [0.70, 0.71], "retry": [0.80, 0.79]}
    held = hold_latency_budget({"latency": 0.75}, 0.02, "first", [0.75, 0.75], lambda f: measurements[f],
                               _Searches(["retry"]))
    assert held.found == "first" and held.measured == [0.70, 0.71] and held.kept == [0, 1]
    assert "keeping the first" in held.notes[-1]
    within = hold_latency_budget({"latency": 0.75}, 0.02, "first", [0.75], lambda f: [0.74], _Searches([]))
    assert within.found == "first" and within.corrected is None  # within the tolerance below: no second search
