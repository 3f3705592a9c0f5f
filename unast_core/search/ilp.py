"""Top-K architecture search as an integer linear program (paper Section 3, Eq. 2-4), solved with CBC.

Data: ``scores[i][j]`` is the Eq. 2 score of candidate j at sublayer i (lower is better) and
``costs[c][i][j]`` its additive cost c. Binary ``x[i, j] = 1`` picks candidate j at sublayer i:

    min   sum_{i,j} scores[i][j] * x[i, j]
    s.t.  sum_j x[i, j] == 1                                  for every sublayer i   (one-hot z_i)
          sum_{i,j} costs[c][i][j] * x[i, j] <= limits[c]     for every limited c    (Eq. 3)
          sum_i x[i, choice^k'_i] <= O                        for every earlier k'   (Eq. 4)

with O = floor(max_overlap * n_sublayers), capped at n_sublayers - 1 so that solutions differ.

Optional pair terms ``(i, a, i2, b, delta)`` add ``delta`` to the objective when candidate a is chosen at i
and b at i2, where the two do not add up (skipping a whole block costs less than skipping its attention and
its MLP one by one). Each is a continuous y in [0, 1] with y <= x[i, a], y <= x[i2, b] (delta < 0) or
y >= x[i, a] + x[i2, b] - 1 (delta > 0): at an optimum y is their product.

The model is built once; each found solution adds one Eq. 4 row before the next optimize. The
first solution gets the whole time budget. Proving later ones optimal is a hard combinatorial
problem on large pools (80 x 16: seconds each, mostly closing a <0.5% gap), so each later solve
gets a verified warm start (LP duals price Eq. 3/4 -> greedy repair -> 1-swap descent) and a
short CBC time slice; it is flagged "feasible" when CBC could not prove it optimal in that slice.
Small pools are solved to proven optimality. CBC runs quiet, single-threaded, with a fixed seed.
"""

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Iterator

import mip
import numpy as np
import torch
from mip import OptimizationStatus as S

from unast_core.errors import InfeasibleBudget, UnastError

# What solve() does with the status of one optimize() call (see status_action).
OPTIMAL, FEASIBLE, STOP = "optimal", "feasible", "stop"
RAISE_INFEASIBLE, RAISE_TIMEOUT, RAISE_ERROR = "raise_infeasible", "raise_timeout", "raise_error"
MIN_SLICE_S = 0.02  # branch-and-bound seconds of each later solution: max(this, time_limit_s / (15 k))
_TOL = 1e-9


@dataclass
class Solution:
    choice: list[int]  # chosen candidate index per sublayer
    objective: float  # sum of scores of the chosen candidates (and of the pair terms that apply)
    costs: dict[str, float]  # sum of each cost over the chosen candidates
    status: str = OPTIMAL  # "optimal", or "feasible" when not proven optimal (time slice / limit)


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


def min_reachable(costs: dict[str, list[list[float]]], scores=None) -> dict[str, float]:
    """Per cost name, the smallest achievable sum: min over the available candidates of each
    sublayer (all candidates when ``scores`` is None; else those with a finite score), summed."""
    out = {}
    for name, rows in costs.items():
        total = 0.0
        for i, row in enumerate(rows):
            ok = [c for j, c in enumerate(row) if scores is None or math.isfinite(scores[i][j])]
            total += min(ok) if ok else math.inf
        out[name] = total
    return out


def _validate(scores, costs, limits, k, max_overlap, time_limit_s) -> None:
    if len(scores) == 0:
        raise ValueError("scores is empty: need at least one sublayer")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 < max_overlap <= 1.0:
        raise ValueError(f"max_overlap must be in (0, 1], got {max_overlap}")
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
    for i, row in enumerate(scores):
        if not any(math.isfinite(s) for s in row):
            raise ValueError(f"sublayer {i} has no available candidate (every score is NaN/inf)")
    for name, rows in costs.items():
        if len(rows) != len(scores):
            raise ValueError(f"costs[{name!r}] has {len(rows)} sublayers, scores has {len(scores)}")
        for i, (row, srow) in enumerate(zip(rows, scores)):
            if len(row) != len(srow):
                raise ValueError(f"costs[{name!r}][{i}] has {len(row)} candidates, scores[{i}] has {len(srow)}")
            if any(math.isfinite(s) and not math.isfinite(c) for c, s in zip(row, srow)):
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


def _build(scores, costs, limits, pairs=()):
    """Data -> variables -> objective -> constraints; returns the model, x[i, j], the Eq. 3 rows and the
    pair variables {pair: y}."""
    model = mip.Model(sense=mip.MINIMIZE, solver_name=mip.CBC)
    model.verbose, model.threads, model.seed = 0, 1, 0
    n = len(scores)
    # Variables: x[i, j] = 1 iff candidate j is chosen at sublayer i; unavailable candidates get none.
    x = {(i, j): model.add_var(name=f"x_{i}_{j}", var_type=mip.BINARY)
         for i in range(n) for j, s in enumerate(scores[i]) if math.isfinite(s)}
    # Pair terms: y = x[i, a] * x[i2, b], bounded from the side the objective pushes it to.
    y = {}
    for p, (i, a, i2, b, delta) in enumerate(pairs):
        y[p] = var = model.add_var(name=f"y_{p}", lb=0.0, ub=1.0)
        if delta < 0:
            model += var <= x[i, a], f"pair_{p}_a"
            model += var <= x[i2, b], f"pair_{p}_b"
        else:
            model += var >= x[i, a] + x[i2, b] - 1, f"pair_{p}"
    # Objective: Eq. 2 linear approximation of the loss change, corrected by the pair terms.
    model.objective = mip.minimize(mip.xsum(scores[i][j] * x[i, j] for (i, j) in x)
                                   + mip.xsum(pairs[p][4] * var for p, var in y.items()))
    # One-hot: exactly one candidate per sublayer.
    for i in range(n):
        model += mip.xsum(x[i, j] for j in range(len(scores[i])) if (i, j) in x) == 1, f"onehot_{i}"
    # Eq. 3: every limited additive cost stays within its budget.
    budget = [model.add_constr(mip.xsum(costs[c][i][j] * x[i, j] for (i, j) in x) <= limit, f"budget_{c}")
              for c, limit in limits.items()]
    return model, x, budget, y


class _Pool:
    """Dense copy of the data (unavailable -> score inf, cost 0) for warm starts and exact checks."""

    def __init__(self, scores, costs, limits, overlap, pairs=()):
        self.n, m = len(scores), max(len(r) for r in scores)
        self.rows, self.overlap, self.pairs = np.arange(self.n), overlap, list(pairs)
        self.S = np.full((self.n, m), np.inf)
        self.C = np.zeros((len(limits), self.n, m))
        for i, row in enumerate(scores):
            ok = [j for j, s in enumerate(row) if math.isfinite(s)]
            self.S[i, ok] = [row[j] for j in ok]
            for c, name in enumerate(limits):
                self.C[c, i, ok] = [costs[name][i][j] for j in ok]
        self.B = np.array(list(limits.values()), dtype=float).reshape(-1)
        self.B_tol = _TOL * np.maximum(1.0, np.abs(self.B))

    def value(self, z) -> float:
        return float(self.S[self.rows, z].sum()) + sum(d for i, a, i2, b, d in self.pairs if z[i] == a and z[i2] == b)

    def pair_moves(self, z) -> np.ndarray:
        """What the pair terms add to the objective when sublayer i alone moves to candidate j, per (i, j)."""
        out = np.zeros_like(self.S)
        for i, a, i2, b, d in self.pairs:
            for (me, mine), (other, theirs) in (((i, a), (i2, b)), ((i2, b), (i, a))):
                if z[other] != theirs:
                    continue
                if z[me] == mine:
                    out[me] -= d  # leaving the pair
                    out[me, mine] += d
                else:
                    out[me, mine] += d  # completing it
        return out

    def feasible(self, z, P) -> bool:
        """Eq. 3 and Eq. 4 hold for choice z wrt the earlier choices P (one per row)."""
        return bool((self.C[:, self.rows, z].sum(1) <= self.B + self.B_tol).all()
                    and ((P == z).sum(1) <= self.overlap).all())

    def repair(self, z, pen, P):
        """Greedy: move sublayers to cheaper (in ``pen``) candidates until Eq. 3 and Eq. 4 hold."""
        z, r = z.copy(), self.rows
        for _ in range(4 * self.n):
            over, used = (P == z).sum(1) - self.overlap, self.C[:, r, z].sum(1)
            excess = used - self.B
            if (over <= 0).all() and (excess <= self.B_tol).all():
                return z
            gain = (P[over > 0] == z).sum(0)[:, None].astype(float)  # violated matches left
            arrive = np.zeros_like(self.S)  # matches gained on Eq. 4 rows already at their bound
            full = P[over >= 0]
            np.add.at(arrive, (np.tile(r, len(full)), full.ravel()), 1.0)
            delta = self.C[:, r, z][:, :, None] - self.C  # cost saved by each move, per cost
            hot = excess > self.B_tol
            gain = gain - arrive + (np.minimum(delta[hot] / excess[hot, None, None], 1.0)).sum(0)
            breaks = ((used[:, None, None] - delta > self.B[:, None, None] + self.B_tol[:, None, None])
                      & ~hot[:, None, None]).any(0)
            gain[breaks | ~np.isfinite(self.S)] = 0.0
            gain[r, z] = 0.0
            if not (gain > _TOL).any():
                return None
            dpen = np.maximum(pen - pen[r, z][:, None], 0.0) + _TOL  # price of each move
            ratio = np.where(gain > _TOL, dpen / np.maximum(gain, _TOL), np.inf)
            i, j = np.unravel_index(ratio.argmin(), ratio.shape)  # cheapest price per unit of repair
            z[i] = j
        return None

    def descend(self, z, P):
        """1-swap descent: apply the best score-lowering move that keeps Eq. 3 and Eq. 4."""
        z, r = z.copy(), self.rows
        for _ in range(2 * self.n):
            used = self.C[:, r, z].sum(1)
            ok = (used[:, None, None] - self.C[:, r, z][:, :, None] + self.C
                  <= self.B[:, None, None] + self.B_tol[:, None, None]).all(0)
            full = P[(P == z).sum(1) >= self.overlap]  # Eq. 4 rows with no slack left
            hits = np.zeros_like(self.S)
            np.add.at(hits, (np.tile(r, len(full)), full.ravel()), 1.0)
            moves = self.S - self.S[r, z][:, None] + (self.pair_moves(z) if self.pairs else 0.0)
            d = np.where(ok & (hits == 0), moves, np.inf)
            i, j = np.unravel_index(d.argmin(), d.shape)
            if not d[i, j] < -_TOL:
                return z
            z[i] = j
        return z


class _Search:
    """The python-mip model of Eq. 3-4, grown by one Eq. 4 row per found solution."""

    def __init__(self, scores, costs, limits, overlap, pairs=()):
        self.data, self.overlap, self.pairs = (scores, costs, limits), overlap, list(pairs)
        self.model, self.x, self.budget, self.y = _build(scores, costs, limits, self.pairs)
        self.pool, self.overlap_rows, self.found = _Pool(scores, costs, limits, overlap, self.pairs), [], []

    def warm_start(self):
        """Best verified start for the next solution: LP duals price Eq. 3/4, then repair + descent
        from the LP argmin, the first and the last solution. None if the LP is infeasible or all fail."""
        pool, P = self.pool, np.array([s.choice for s in self.found])
        if self.model.optimize(relax=True) != S.OPTIMAL:
            return None
        pen = pool.S - np.tensordot([row.pi or 0.0 for row in self.budget], pool.C, 1)
        pis = np.array([row.pi or 0.0 for row in self.overlap_rows])
        np.add.at(pen, (np.tile(pool.rows, len(P)), P.ravel()), -np.repeat(pis, pool.n))
        best = None
        for z in (pen.argmin(1), P[0], P[-1]):
            z = pool.repair(z, pen, P)
            z = None if z is None else pool.descend(z, P)
            if z is not None and pool.feasible(z, P) and (best is None or pool.value(z) < pool.value(best)):
                best = z
        return best

    def next(self, seconds):
        """Optimize once more; the next Solution, None when there is none, or an error."""
        first, (scores, costs, limits) = not self.found, self.data
        warm = None if first else self.warm_start()
        if warm is not None:
            self.model.start = ([(self.x[i, int(j)], 1.0) for i, j in enumerate(warm)]
                                + [(var, float(warm[self.pairs[p][0]] == self.pairs[p][1]
                                              and warm[self.pairs[p][2]] == self.pairs[p][3]))
                                   for p, var in self.y.items()])
        status = self.model.optimize(max_seconds=max(seconds, 0.01))
        action = status_action(status, first)
        if action == RAISE_INFEASIBLE:
            raise _infeasible(costs, limits, scores)
        if action == RAISE_TIMEOUT:
            raise UnastError("the ILP found no architecture within the time limit; raise time_limit_s")
        if action == RAISE_ERROR:
            raise RuntimeError(f"unexpected ILP solver status {status.name} in the architecture search")
        if action == STOP and not (warm is not None and status == S.NO_SOLUTION_FOUND):
            return None
        choice = None if action == STOP else _read(self.x, self.pool.n)
        if choice is None or (warm is not None and self.pool.value(warm) < self.pool.value(choice) - _TOL):
            choice, action = warm, (OPTIMAL if action == OPTIMAL else FEASIBLE)  # CBC's slice ended first
        return _solution(choice, self.pool, costs, action)

    def add(self, sol: Solution) -> None:
        self.found.append(sol)
        # Eq. 4: the next solution shares at most `overlap` choices with this one.
        row = mip.xsum(self.x[i, j] for i, j in enumerate(sol.choice)) <= self.overlap
        self.overlap_rows.append(self.model.add_constr(row, f"overlap_{len(self.found)}"))


def _solution(choice, pool: _Pool, costs, status) -> Solution:
    def total(rows) -> float:
        return float(sum(rows[i][j] for i, j in enumerate(choice)))

    return Solution(choice=[int(j) for j in choice], objective=pool.value(choice),
                    costs={c: total(rows) for c, rows in costs.items()}, status=status)


def _read(x, n) -> list[int]:
    choice = [-1] * n
    for (i, j), var in x.items():
        if var.x is not None and var.x >= 0.5:
            choice[i] = j
    if -1 in choice:
        raise RuntimeError(f"CBC returned a solution with no candidate at sublayer {choice.index(-1)}")
    return choice


def solve(scores: list[list[float]], costs: dict[str, list[list[float]]], limits: dict[str, float],
          k: int = 1, max_overlap: float = 0.7, time_limit_s: float = 30.0,
          pairs: list[tuple[int, int, int, int, float]] = ()) -> list[Solution]:
    """Up to ``k`` architectures minimising the summed score under the budgets of Eq. 3, each
    sharing at most floor(max_overlap * n_sublayers) choices (capped at n - 1) with every earlier
    one (Eq. 4). NaN/inf scores mark unavailable candidates, never chosen. ``time_limit_s`` is the
    wall-clock budget of the whole call: the first solution may use all of it, each later one gets
    max(MIN_SLICE_S, time_limit_s / (15 k)) of branch and bound after its warm start. Fewer than
    ``k`` come back when no further diverse solution exists or the time runs out after the first.
    Raises InfeasibleBudget when nothing meets the budget, UnastError when the time limit is hit
    before a first solution, ValueError on malformed input. ``pairs`` are the pair terms of the module
    docstring; one whose candidates are unavailable never applies and is dropped."""
    _validate(scores, costs, limits, k, max_overlap, time_limit_s)
    pairs = _valid_pairs(scores, pairs)
    with torch_threads_kept():
        return _solve(scores, costs, limits, k, max_overlap, time_limit_s, pairs)


def _valid_pairs(scores, pairs) -> list[tuple[int, int, int, int, float]]:
    out = []
    for pair in pairs:
        i, a, i2, b, delta = pair
        if i == i2 or not (0 <= i < len(scores) and 0 <= i2 < len(scores)):
            raise ValueError(f"pair term {pair}: needs two different sublayers of the {len(scores)}")
        if not (0 <= a < len(scores[i]) and 0 <= b < len(scores[i2])):
            raise ValueError(f"pair term {pair}: candidate index out of range")
        if not math.isfinite(delta):
            raise ValueError(f"pair term {pair}: delta must be finite")
        if delta != 0 and math.isfinite(scores[i][a]) and math.isfinite(scores[i2][b]):
            out.append((int(i), int(a), int(i2), int(b), float(delta)))
    return out


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Give torch back its thread count. CBC sets the OpenMP thread count of the thread that optimizes to 1
    (whatever `model.threads` says), and torch shares that OpenMP runtime: without this, every torch op that
    ran in that thread afterwards used one core. In a run that was the final finetune (4.2 s per step on
    2 threads, 7.3 s on one) and the evaluation, whose latency was then timed on one core while the cost
    table had been timed on all."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _solve(scores, costs, limits, k, max_overlap, time_limit_s, pairs=()) -> list[Solution]:
    if any(r > limits[c] for c, r in min_reachable({c: costs[c] for c in limits}, scores).items()):
        raise _infeasible(costs, limits, scores)  # cheap pre-check, no solver needed
    n = len(scores)
    search = _Search(scores, costs, limits, overlap=min(math.floor(max_overlap * n + 1e-9), n - 1), pairs=pairs)
    deadline, slice_s = time.monotonic() + time_limit_s, max(MIN_SLICE_S, time_limit_s / (15 * k))
    while len(search.found) < k:
        remaining = deadline - time.monotonic()
        if search.found and remaining <= 0:
            break  # time budget spent: return the solutions found so far
        sol = search.next(remaining if not search.found else min(remaining, slice_s))
        if sol is None:
            break
        search.add(sol)
    return search.found
