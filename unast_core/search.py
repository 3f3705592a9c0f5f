"""Top-K architecture search as an integer linear program (paper Section 3, Eq. 2-4), solved with CBC.

Data: ``scores[i][j]`` is the Eq. 2 score of candidate j at sublayer i (lower is better) and
``costs[name][i][j]`` its additive cost. Binary ``x[i, j] = 1`` picks candidate j at sublayer i;

    min   sum_{i,j} scores[i][j] * x[i, j]
    s.t.  sum_j x[i, j] == 1                                  for every sublayer i   (one-hot z_i)
          sum_{i,j} costs[c][i][j] * x[i, j] <= limits[c]     for every limited c    (Eq. 3)
          sum_i x[i, choice^k'_i] <= O                        for every earlier k'   (Eq. 4)

with O = floor(max_overlap * n_sublayers), capped at n_sublayers - 1 so that solutions are distinct.
One model is built once; each found solution adds one Eq. 4 row before the next optimize.
"""

import math
import time
from dataclasses import dataclass

import mip
from mip import OptimizationStatus as S

from unast_core.errors import InfeasibleBudget, UnastError

# What solve() does with the status of one optimize() call (see status_action).
OPTIMAL, FEASIBLE, STOP = "optimal", "feasible", "stop"
RAISE_INFEASIBLE, RAISE_TIMEOUT, RAISE_ERROR = "raise_infeasible", "raise_timeout", "raise_error"


@dataclass
class Solution:
    choice: list[int]  # chosen candidate index per sublayer
    objective: float  # sum of scores of the chosen candidates
    costs: dict[str, float]  # sum of each cost over the chosen candidates
    status: str = OPTIMAL  # "optimal", or "feasible" when the time limit stopped CBC early


def status_action(status: S, first: bool) -> str:
    """Map a mip status to what solve() does. ``first`` is True for the first solution, whose
    failure is the user's problem (budget or time limit); later failures just end the Top-K list."""
    if status == S.OPTIMAL:
        return OPTIMAL
    if status == S.FEASIBLE:  # time limit hit, but with an incumbent that meets every constraint
        return FEASIBLE
    # The model is bounded (binary variables), so "infeasible or unbounded" means infeasible.
    if status in (S.INFEASIBLE, S.INT_INFEASIBLE, S.INF_OR_UNBD):
        return RAISE_INFEASIBLE if first else STOP
    if status == S.NO_SOLUTION_FOUND:  # time limit hit before any incumbent
        return RAISE_TIMEOUT if first else STOP
    # UNBOUNDED, ERROR, LOADED, CUTOFF, TRUNCATED, OTHER: cannot happen for this model.
    return RAISE_ERROR


def _available(score: float) -> bool:
    return math.isfinite(score)


def min_reachable(costs: dict[str, list[list[float]]], scores=None) -> dict[str, float]:
    """Per cost name, the smallest achievable sum: min over the available candidates of each
    sublayer (all candidates when ``scores`` is None; else those with a finite score), summed."""
    out = {}
    for name, rows in costs.items():
        total = 0.0
        for i, row in enumerate(rows):
            ok = [c for j, c in enumerate(row) if scores is None or _available(scores[i][j])]
            total += min(ok) if ok else math.inf
        out[name] = total
    return out


def _validate(scores, costs, limits, k, max_overlap) -> None:
    if len(scores) == 0:
        raise ValueError("scores is empty: need at least one sublayer")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 < max_overlap <= 1.0:
        raise ValueError(f"max_overlap must be in (0, 1], got {max_overlap}")
    for i, row in enumerate(scores):
        if not any(_available(s) for s in row):
            raise ValueError(f"sublayer {i} has no available candidate (every score is NaN/inf)")
    for name, rows in costs.items():
        if len(rows) != len(scores):
            raise ValueError(f"costs[{name!r}] has {len(rows)} sublayers, scores has {len(scores)}")
        for i, (row, srow) in enumerate(zip(rows, scores)):
            if len(row) != len(srow):
                raise ValueError(f"costs[{name!r}][{i}] has {len(row)} candidates, scores[{i}] has {len(srow)}")
            if any(_available(s) and not math.isfinite(c) for c, s in zip(row, srow)):
                raise ValueError(f"costs[{name!r}][{i}] has a non-finite cost for an available candidate")
    for name, limit in limits.items():
        if name not in costs:
            raise ValueError(f"limit on unknown cost {name!r}; known costs: {sorted(costs)}")
        if not math.isfinite(limit):
            raise ValueError(f"limit on {name!r} must be finite, got {limit}")


def _infeasible(costs, limits, scores) -> InfeasibleBudget:
    reachable = min_reachable({c: costs[c] for c in limits}, scores)
    parts = [f"{c} <= {limits[c]:.3f} (smallest reachable: {reachable[c]:.3f})" for c in limits]
    return InfeasibleBudget(f"no architecture meets {', '.join(parts)}; raise the budget", reachable)


def _build(scores, costs, limits):
    """Data -> variables -> objective -> constraints; returns the model and x[i, j]."""
    model = mip.Model(sense=mip.MINIMIZE, solver_name=mip.CBC)
    model.verbose, model.threads, model.seed = 0, 1, 0
    n = len(scores)
    # Variables: x[i, j] = 1 iff candidate j is chosen at sublayer i; unavailable candidates get none.
    x = {(i, j): model.add_var(name=f"x_{i}_{j}", var_type=mip.BINARY)
         for i in range(n) for j, s in enumerate(scores[i]) if _available(s)}
    # Objective: Eq. 2 linear approximation of the loss change.
    model.objective = mip.minimize(mip.xsum(scores[i][j] * x[i, j] for (i, j) in x))
    # One-hot: exactly one candidate per sublayer.
    for i in range(n):
        model += mip.xsum(x[i, j] for j in range(len(scores[i])) if (i, j) in x) == 1, f"onehot_{i}"
    # Eq. 3: every limited additive cost stays within its budget.
    for c, limit in limits.items():
        model += mip.xsum(costs[c][i][j] * x[i, j] for (i, j) in x) <= limit, f"budget_{c}"
    return model, x


def _read(x, scores, costs, n, status) -> Solution:
    choice = [-1] * n
    for (i, j), var in x.items():
        if var.x is not None and var.x >= 0.5:
            choice[i] = j
    if -1 in choice:
        raise RuntimeError(f"CBC returned a solution with no candidate at sublayer {choice.index(-1)}")
    return Solution(
        choice=choice,
        objective=sum(scores[i][j] for i, j in enumerate(choice)),
        costs={c: sum(rows[i][j] for i, j in enumerate(choice)) for c, rows in costs.items()},
        status=status,
    )


def solve(scores: list[list[float]], costs: dict[str, list[list[float]]], limits: dict[str, float],
          k: int = 1, max_overlap: float = 0.7, time_limit_s: float = 30.0) -> list[Solution]:
    """Up to ``k`` architectures minimising the summed score under the budgets of Eq. 3, each
    sharing at most floor(max_overlap * n_sublayers) choices (capped at n - 1) with every earlier
    one (Eq. 4). NaN/inf scores mark unavailable candidates, never chosen. ``time_limit_s`` is the
    wall-clock budget of the whole call. Fewer than ``k`` come back when no further diverse
    solution exists or the time runs out after the first. Raises InfeasibleBudget when nothing
    meets the budget, UnastError when the time limit is hit before a first solution."""
    _validate(scores, costs, limits, k, max_overlap)
    n = len(scores)
    if any(r > limits[c] for c, r in min_reachable({c: costs[c] for c in limits}, scores).items()):
        raise _infeasible(costs, limits, scores)  # cheap pre-check, no solver needed
    overlap = min(math.floor(max_overlap * n + 1e-9), n - 1)
    model, x = _build(scores, costs, limits)
    deadline = time.monotonic() + time_limit_s
    found: list[Solution] = []
    while len(found) < k:
        first, remaining = not found, deadline - time.monotonic()
        if not first and remaining <= 0:
            break  # time budget spent: return the solutions found so far
        status = model.optimize(max_seconds=max(remaining, 0.01))
        action = status_action(status, first)
        if action == STOP:
            break
        if action == RAISE_INFEASIBLE:
            raise _infeasible(costs, limits, scores)
        if action == RAISE_TIMEOUT:
            raise UnastError(f"the ILP found no architecture within {time_limit_s:g} s; raise the time limit")
        if action == RAISE_ERROR:
            raise RuntimeError(f"unexpected ILP solver status {status.name} for the architecture search")
        sol = _read(x, scores, costs, n, action)
        found.append(sol)
        # Eq. 4: the next solution shares at most `overlap` choices with this one.
        model += mip.xsum(x[i, j] for i, j in enumerate(sol.choice)) <= overlap, f"overlap_{len(found)}"
    return found
