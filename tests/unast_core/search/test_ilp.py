"""The Top-K ILP (Eq. 3-4) against brute force on small random pools, plus status handling and input checks."""

import itertools
import math
import random
import time

import mip
import pytest
from mip import OptimizationStatus

from unast_core.search import ilp as search
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.search.ilp import Solution, min_reachable, solve, status_action

TOL = 1e-9


def random_instance(rng: random.Random, n_costs=None, holes=True):
    """4-6 sublayers x 2-4 candidates (ragged), 1-2 costs, some NaN/inf scores; limits at or above the costs of a
    random architecture, so the budget is feasible (often tight)."""
    n = rng.randint(4, 6)
    widths = [rng.randint(2, 4) for _ in range(n)]
    scores = [[rng.uniform(-1.0, 3.0) for _ in range(w)] for w in widths]
    if holes:
        for row in scores:
            if rng.random() < 0.3:
                row[rng.randrange(len(row))] = rng.choice([math.nan, math.inf, -math.inf])
            if all(not math.isfinite(s) for s in row):
                row[0] = rng.uniform(0.0, 1.0)
    names = ["latency", "memory"][: n_costs or rng.randint(1, 2)]
    costs = {c: [[rng.uniform(0.5, 5.0) for _ in range(w)] for w in widths] for c in names}
    anchor = [rng.choice([j for j, s in enumerate(row) if math.isfinite(s)]) for row in scores]
    limits = {c: sum(costs[c][i][j] for i, j in enumerate(anchor)) * rng.uniform(1.0, 1.3) for c in names}
    return scores, costs, limits


def overlap_bound(n, max_overlap):
    return min(math.floor(max_overlap * n + 1e-9), n - 1)


def brute_force(scores, costs, limits, previous=(), bound=None):
    """Smallest objective over all choices meeting Eq. 3 and, wrt ``previous``, Eq. 4; None if none."""
    available = [[j for j, s in enumerate(row) if math.isfinite(s)] for row in scores]
    best = None
    for choice in itertools.product(*available):
        if any(sum(costs[c][i][j] for i, j in enumerate(choice)) > limits[c] + TOL for c in limits):
            continue
        if any(sum(a == b for a, b in zip(choice, p)) > bound for p in previous):
            continue
        value = sum(scores[i][j] for i, j in enumerate(choice))
        best = value if best is None else min(best, value)
    return best


def check_solution(sol: Solution, scores, costs, limits):
    assert len(sol.choice) == len(scores)
    assert all(math.isfinite(scores[i][j]) for i, j in enumerate(sol.choice)), "chose an unavailable candidate"
    assert sol.objective == pytest.approx(sum(scores[i][j] for i, j in enumerate(sol.choice)))
    for c in costs:
        assert sol.costs[c] == pytest.approx(sum(costs[c][i][j] for i, j in enumerate(sol.choice)))
    for c, limit in limits.items():
        assert sol.costs[c] <= limit + 1e-6, (c, sol.costs[c], limit)


def approx(value):
    return pytest.approx(value, rel=1e-4, abs=1e-6)  # CBC's default relative gap is 1e-4


# --- optimality against brute force -----------------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_first_solution_is_the_brute_force_optimum(seed):
    scores, costs, limits = random_instance(random.Random(seed))
    [sol] = solve(scores, costs, limits, k=1)
    check_solution(sol, scores, costs, limits)
    assert sol.status == "optimal"
    assert sol.objective == approx(brute_force(scores, costs, limits))


@pytest.mark.parametrize("seed", range(25))
def test_each_of_k_solutions_is_optimal_under_the_overlap_bound(seed):
    rng = random.Random(1000 + seed)
    scores, costs, limits = random_instance(rng)
    max_overlap = rng.choice([0.3, 0.5, 0.7, 1.0])
    k = rng.randint(2, 6)
    sols = solve(scores, costs, limits, k=k, max_overlap=max_overlap)
    bound = overlap_bound(len(scores), max_overlap)
    assert 1 <= len(sols) <= k
    for idx, sol in enumerate(sols):
        check_solution(sol, scores, costs, limits)
        for earlier in sols[:idx]:  # Eq. 4 pairwise
            assert sum(a == b for a, b in zip(sol.choice, earlier.choice)) <= bound
        best = brute_force(scores, costs, limits, [s.choice for s in sols[:idx]], bound)
        assert best is not None and sol.objective == approx(best), idx
    if len(sols) < k:  # stopped early: no further diverse solution exists
        assert brute_force(scores, costs, limits, [s.choice for s in sols], bound) is None


def test_results_are_deterministic():
    scores, costs, limits = random_instance(random.Random(7))
    runs = [[s.choice for s in solve(scores, costs, limits, k=4, max_overlap=0.5)] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


def test_full_overlap_still_gives_distinct_solutions():
    scores = [[0.0, 1.0, 2.0]] * 3
    sols = solve(scores, {}, {}, k=5, max_overlap=1.0)
    choices = [tuple(s.choice) for s in sols]
    assert len(sols) == 5 and len(set(choices)) == 5
    assert choices[0] == (0, 0, 0)


def test_returns_fewer_when_no_diverse_solution_is_left():
    # 3 binary sublayers, overlap bound floor(0.34 * 3) = 1: solutions pairwise differ in >= 2 places,
    # and only the four even-weight codes can do that.
    scores = [[0.0, 1.0], [0.0, 2.0], [0.0, 4.0]]
    sols = solve(scores, {}, {}, k=10, max_overlap=0.34)
    assert [s.choice for s in sols] == [[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1]]
    assert [s.objective for s in sols] == [0.0, 3.0, 5.0, 6.0]


# --- unavailable candidates -------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_unavailable_candidates_are_never_chosen(bad):
    scores = [[bad, 1.0, 2.0], [0.5, bad], [bad, 3.0]]
    costs = {"latency": [[0.0, 5.0, 1.0], [1.0, math.nan], [0.0, 1.0]]}  # cost of an unavailable one is ignored
    sols = solve(scores, costs, {"latency": 10.0}, k=3, max_overlap=0.34)
    assert sols
    for sol in sols:
        assert all(math.isfinite(scores[i][j]) for i, j in enumerate(sol.choice))
    assert sols[0].choice == [1, 0, 1]


@pytest.mark.parametrize("seed", range(10))
def test_random_holes_with_several_solutions(seed):
    rng = random.Random(500 + seed)
    scores, costs, limits = random_instance(rng)
    for sol in solve(scores, costs, limits, k=4, max_overlap=0.5):
        check_solution(sol, scores, costs, limits)


# --- infeasible budgets -----------------------------------------------------------------------

def test_infeasible_budget_names_the_cost_and_the_reachable_value():
    scores = [[0.0, 1.0], [0.0, 1.0]]
    costs = {"latency": [[10.0, 7.55], [10.0, 7.55]], "params": [[3.0, 1.0], [3.0, 1.0]]}
    with pytest.raises(InfeasibleBudget) as info:
        solve(scores, costs, {"latency": 12.3})
    assert str(info.value) == "no architecture meets latency <= 12.300 (smallest reachable: 15.100); raise the budget"
    assert info.value.reachable == {"latency": pytest.approx(15.1)}
    assert isinstance(info.value, UnastError) and "\n" not in str(info.value)


def test_jointly_infeasible_budgets_raise_from_the_solver():
    # each budget alone is reachable (0), but no choice meets both: the ILP itself reports infeasible
    scores = [[0.0, 0.0], [0.0, 0.0]]
    costs = {"a": [[0.0, 10.0], [0.0, 10.0]], "b": [[10.0, 0.0], [10.0, 0.0]]}
    with pytest.raises(InfeasibleBudget) as info:
        solve(scores, costs, {"a": 5.0, "b": 5.0})
    assert info.value.reachable == {"a": 0.0, "b": 0.0}
    assert "a <= 5.000 (smallest reachable: 0.000)" in str(info.value)
    assert "b <= 5.000 (smallest reachable: 0.000)" in str(info.value)


@pytest.mark.parametrize("seed", range(10))
def test_random_infeasible_budget_reports_min_reachable(seed):
    rng = random.Random(2000 + seed)
    scores, costs, _ = random_instance(rng)
    reach = min_reachable(costs, scores)
    limits = {c: reach[c] * rng.uniform(0.5, 0.99) - 0.01 for c in costs}
    with pytest.raises(InfeasibleBudget) as info:
        solve(scores, costs, limits, k=3)
    assert info.value.reachable == pytest.approx(reach)


def test_min_reachable_skips_unavailable_candidates_only_when_scores_are_given():
    costs = {"latency": [[1.0, 5.0], [2.0, 0.5]], "memory": [[4.0, 1.0], [1.0, 1.0]]}
    scores = [[math.nan, 0.0], [0.0, 0.0]]
    assert min_reachable(costs) == {"latency": 1.5, "memory": 2.0}
    assert min_reachable(costs, scores) == {"latency": 5.5, "memory": 2.0}


# --- solver status handling -------------------------------------------------------------------

EXPECTED = {
    OptimizationStatus.OPTIMAL: ("optimal", "optimal"),
    OptimizationStatus.FEASIBLE: ("feasible", "feasible"),
    OptimizationStatus.INFEASIBLE: ("raise_infeasible", "stop"),
    OptimizationStatus.INT_INFEASIBLE: ("raise_infeasible", "stop"),
    OptimizationStatus.INF_OR_UNBD: ("raise_infeasible", "stop"),
    OptimizationStatus.NO_SOLUTION_FOUND: ("raise_timeout", "stop"),
    OptimizationStatus.UNBOUNDED: ("raise_error", "raise_error"),
    OptimizationStatus.ERROR: ("raise_error", "raise_error"),
    OptimizationStatus.LOADED: ("raise_error", "raise_error"),
    OptimizationStatus.CUTOFF: ("raise_error", "raise_error"),
    OptimizationStatus.TRUNCATED: ("raise_error", "raise_error"),
    OptimizationStatus.OTHER: ("raise_error", "raise_error"),
}


@pytest.mark.parametrize("status", list(OptimizationStatus))
def test_every_status_has_an_action(status):
    assert (status_action(status, first=True), status_action(status, first=False)) == EXPECTED[status]


def fake_optimize(monkeypatch, mip_statuses):
    """Make the n-th MIP optimize() return mip_statuses[n] (None: really solve); LP relaxations run."""
    real, calls = mip.Model.optimize, []

    def optimize(self, *args, relax=False, **kwargs):
        if relax:
            return real(self, *args, relax=True, **kwargs)
        calls.append(1)
        status = mip_statuses[len(calls) - 1] if len(calls) <= len(mip_statuses) else None
        return real(self, *args, **kwargs) if status is None else status

    monkeypatch.setattr(mip.Model, "optimize", optimize)


SMALL = ([[0.0, 1.0, 2.0]] * 4, {"latency": [[3.0, 2.0, 1.0]] * 4}, {"latency": 9.0})


@pytest.mark.parametrize("status,error", [
    (OptimizationStatus.NO_SOLUTION_FOUND, "raise time_limit_s"),
    (OptimizationStatus.INFEASIBLE, "raise the budget"),
    (OptimizationStatus.INT_INFEASIBLE, "raise the budget"),
])
def test_first_solve_failures_are_user_errors(monkeypatch, status, error):
    fake_optimize(monkeypatch, [status])
    with pytest.raises(UnastError, match=error) as info:
        solve(*SMALL, k=3)
    assert (status == OptimizationStatus.NO_SOLUTION_FOUND) != isinstance(info.value, InfeasibleBudget)


@pytest.mark.parametrize("status", [OptimizationStatus.UNBOUNDED, OptimizationStatus.ERROR, OptimizationStatus.LOADED,
                                    OptimizationStatus.CUTOFF, OptimizationStatus.OTHER])
@pytest.mark.parametrize("at", [0, 1])
def test_unexpected_statuses_raise_runtime_error(monkeypatch, status, at):
    fake_optimize(monkeypatch, [None] * at + [status])
    with pytest.raises(RuntimeError, match=status.name):
        solve(*SMALL, k=3)


@pytest.mark.parametrize("status", [OptimizationStatus.INFEASIBLE, OptimizationStatus.INT_INFEASIBLE])
def test_later_infeasible_stops_the_list(monkeypatch, status):
    fake_optimize(monkeypatch, [None, None, status])
    sols = solve(*SMALL, k=5, max_overlap=0.5)
    assert len(sols) == 2


def test_later_time_limit_without_incumbent_falls_back_to_the_verified_warm_start(monkeypatch):
    scores, costs, limits = random_instance(random.Random(3), n_costs=2)
    fake_optimize(monkeypatch, [None] + [OptimizationStatus.NO_SOLUTION_FOUND] * 10)
    sols = solve(scores, costs, limits, k=4, max_overlap=0.5)
    bound = overlap_bound(len(scores), 0.5)
    assert sols[0].status == "optimal" and all(s.status == "feasible" for s in sols[1:])
    for idx, sol in enumerate(sols):
        check_solution(sol, scores, costs, limits)
        previous = [s.choice for s in sols[:idx]]
        assert all(sum(a == b for a, b in zip(sol.choice, p)) <= bound for p in previous)
        assert sol.objective >= brute_force(scores, costs, limits, previous, bound) - 1e-6


def test_feasible_status_is_recorded(monkeypatch):
    real = mip.Model.optimize

    def optimize(self, *args, relax=False, **kwargs):
        status = real(self, *args, relax=relax, **kwargs)
        return status if relax else OptimizationStatus.FEASIBLE

    monkeypatch.setattr(mip.Model, "optimize", optimize)
    sols = solve(*SMALL, k=2)
    assert [s.status for s in sols] == ["feasible", "feasible"]


# --- input validation -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(scores=[]), "empty"),
    (dict(k=0), "k must be >= 1"),
    (dict(max_overlap=0.0), "max_overlap"),
    (dict(max_overlap=1.5), "max_overlap"),
    (dict(time_limit_s=0.0), "time_limit_s"),
    (dict(scores=[[0.0, 1.0], [math.nan, math.inf]]), "sublayer 1 has no available candidate"),
    (dict(costs={"latency": [[1.0, 2.0]]}), "costs\\['latency'\\] has 1 sublayers"),
    (dict(costs={"latency": [[1.0, 2.0], [1.0]]}), "costs\\['latency'\\]\\[1\\] has 1 candidates"),
    (dict(costs={"latency": [[1.0, math.nan], [1.0, 2.0]]}), "non-finite cost"),
    (dict(limits={"memory": 3.0}), "unknown cost 'memory'"),
    (dict(limits={"latency": math.nan}), "must be finite"),
])
def test_invalid_input_is_rejected(kwargs, match):
    args = dict(scores=[[0.0, 1.0], [0.0, 1.0]], costs={"latency": [[2.0, 1.0], [2.0, 1.0]]},
                limits={"latency": 3.0})
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        solve(**args)


# --- a mid-size pool: constraints hold, time stays small --------------------------------------

def test_mid_size_pool_many_solutions():
    rng = random.Random(11)
    n, m = 30, 8
    scores, latency = [], []
    for _ in range(n):
        lat = sorted((rng.uniform(0.1, 1.0) for _ in range(m)), reverse=True)
        scores.append([(1.0 - f) * rng.uniform(0.5, 2.0) for f in lat])
        latency.append(lat)
    limit = 0.6 * sum(row[0] for row in latency)
    start = time.perf_counter()
    sols = search.solve(scores, {"latency": latency}, {"latency": limit}, k=20, time_limit_s=9.0)
    assert time.perf_counter() - start < 10.0
    assert len(sols) == 20
    bound = overlap_bound(n, 0.7)
    for idx, sol in enumerate(sols):
        check_solution(sol, scores, {"latency": latency}, {"latency": limit})
        assert all(sum(a == b for a, b in zip(sol.choice, e.choice)) <= bound for e in sols[:idx])
    assert sols[0].status == "optimal"
    assert sols[0].objective == min(s.objective for s in sols)


def test_solve_gives_torch_back_its_threads():
    """CBC sets the OpenMP thread count of the calling thread to 1, and torch shares that runtime: the stages
    that ran after the search in the same thread (the final finetune, the evaluation's timing) used one core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scores = [[0.0, 0.4], [0.0, 0.1], [0.0, 0.3]]
        costs = {"latency": [[2.0, 0.0]] * 3}
        assert solve(scores, costs, {"latency": 4.0}, k=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- pair terms (a whole block skipped is not the sum of its two skips) -------------------------

def pair_value(scores, pairs, choice):
    return (sum(scores[i][j] for i, j in enumerate(choice))
            + sum(d for i, a, i2, b, d in pairs if choice[i] == a and choice[i2] == b))


def random_pairs(rng: random.Random, scores):
    """Pair terms of either sign between neighbouring sublayers (as attention and MLP of one block are)."""
    pairs = []
    for i in range(0, len(scores) - 1, 2):
        a, b = rng.randrange(len(scores[i])), rng.randrange(len(scores[i + 1]))
        pairs.append((i, a, i + 1, b, rng.uniform(-3.0, 2.0)))
    return pairs


def brute_force_pairs(scores, costs, limits, pairs, previous=(), bound=None):
    available = [[j for j, s in enumerate(row) if math.isfinite(s)] for row in scores]
    best = None
    for choice in itertools.product(*available):
        if any(sum(costs[c][i][j] for i, j in enumerate(choice)) > limits[c] + TOL for c in limits):
            continue
        if previous and any(sum(a == b for a, b in zip(choice, p)) > bound for p in previous):
            continue
        value = pair_value(scores, pairs, choice)
        best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_pair_terms_reach_the_brute_force_optimum(seed):
    rng = random.Random(5000 + seed)
    scores, costs, limits = random_instance(rng)
    pairs = random_pairs(rng, scores)
    k = rng.randint(1, 4)
    sols = solve(scores, costs, limits, k=k, max_overlap=0.5, pairs=pairs)
    bound = overlap_bound(len(scores), 0.5)
    for idx, sol in enumerate(sols):
        assert sol.objective == pytest.approx(pair_value(scores, pairs, sol.choice))
        best = brute_force_pairs(scores, costs, limits, pairs, [s.choice for s in sols[:idx]], bound)
        assert sol.objective == pytest.approx(best, rel=1e-4, abs=1e-6), idx


def test_a_sub_additive_pair_wins_over_two_cheaper_singles():
    # Two sublayers, candidates (keep, skip): each skip alone scores 1.0 and together they score 0.5 (pair
    # term -1.5). A third sublayer's skip scores 0.8. The budget allows two skips: without the pair term the
    # search skips sublayer 2 and one of 0 / 1 (1.8); with it, 0 and 1 together (0.5).
    scores = [[0.0, 1.0], [0.0, 1.0], [0.0, 0.8]]
    costs = {"latency": [[1.0, 0.0]] * 3}
    limits = {"latency": 1.0}
    [plain] = solve(scores, costs, limits)
    [paired] = solve(scores, costs, limits, pairs=[(0, 1, 1, 1, -1.5)])
    assert plain.choice[2] == 1 and plain.objective == pytest.approx(1.8)
    assert paired.choice == [1, 1, 0] and paired.objective == pytest.approx(0.5)


def test_pair_terms_on_unavailable_candidates_are_dropped_and_bad_ones_rejected():
    scores = [[0.0, math.nan], [0.0, 1.0]]
    costs = {"latency": [[1.0, 0.0], [1.0, 0.0]]}
    [sol] = solve(scores, costs, {"latency": 1.0}, pairs=[(0, 1, 1, 1, -5.0)])
    assert sol.choice == [0, 1] and sol.objective == pytest.approx(1.0)
    for bad, match in [((0, 0, 0, 1, -1.0), "two different"), ((0, 3, 1, 1, -1.0), "out of range"),
                       ((0, 0, 1, 1, math.nan), "finite")]:
        with pytest.raises(ValueError, match=match):
            solve(scores, costs, {"latency": 1.0}, pairs=[bad])
