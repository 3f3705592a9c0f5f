"""Stage 5, search: turn budgets (fractions of the teacher's cost) into the ILP of Eq. 3-4 and back."""

from __future__ import annotations

import math
from typing import Any

from unast_core.model.assemble import describe, layers_from_choice
from unast_core.model.ops import DISTILLED_OPS
from unast_core.config import SearchConfig
from unast_core.search.cost import calibrated_ratio, predict, table_fraction
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.search.ilp import min_reachable, solve


def _limits(lut: dict[str, Any], budget: dict[str, float]) -> dict[str, float]:
    """Budget fractions -> absolute limits on the sublayer costs: fraction * teacher - fixed part, where the
    fraction is first mapped back through the table's latency calibration."""
    limits = {}
    for name, fraction in budget.items():
        if name not in lut["costs"]:
            raise UnastError(f"no '{name}' cost was measured; budgets available: {', '.join(lut['costs'])}")
        limits[name] = table_fraction(lut, name, fraction) * lut["teacher"][name] - lut["fixed"][name]
    return limits


def _infeasible(lut: dict[str, Any], budget: dict[str, float], reachable_abs: dict[str, float]) -> InfeasibleBudget:
    reachable = {name: calibrated_ratio(lut, name, (value + lut["fixed"][name]) / lut["teacher"][name])
                 for name, value in reachable_abs.items()}
    asked = ", ".join(f"{n}={budget[n]:g}" for n in reachable)
    smallest = ", ".join(f"{n}={math.ceil(v * 1000) / 1000:g}" for n, v in reachable.items())
    return InfeasibleBudget(f"budget {asked} cannot be met with pool {lut['pool']}: the smallest reachable is "
                            f"{smallest}; raise the budget or widen the pool", reachable)


def check_reachable(lut: dict[str, Any], budget: dict[str, float]) -> None:
    """Fail before any scoring when even the cheapest candidate everywhere misses a budget."""
    limits = _limits(lut, budget)
    smallest = min_reachable({name: lut["costs"][name] for name in budget})
    missed = {name: smallest[name] for name in budget if smallest[name] > limits[name] + 1e-12}
    if missed:
        raise _infeasible(lut, budget, missed)


# Added to a floored score, so that a replacement that ties with the teacher does not win the tie: far below
# any real score difference (nats), far above the ILP's tolerance on the objective.
TIE_BREAK = 1e-6


def floored(scores: list[list[float]], pool: list[dict[str, Any]]) -> list[list[float]]:
    """Scores with every replacement (not the teacher operator) at least TIE_BREAK above 0, the teacher's own
    score; NaN (failed or not applicable) stays NaN."""
    teacher = [spec.get("op") == "teacher" for spec in pool]
    return [[e if teacher[j] or math.isnan(e) else max(e, TIE_BREAK) for j, e in enumerate(row)] for row in scores]


def scaled(scores: list[list[float]], pool: list[dict[str, Any]], factor: float) -> list[list[float]]:
    """Scores with every positive score of a distilled replacement multiplied by `factor` (a negative one, which
    only an unfloored search sees, is left alone: scaling it would make the replacement look better)."""
    fitted = [spec.get("op") in DISTILLED_OPS for spec in pool]
    return [[e * factor if fitted[j] and e > 0 else e for j, e in enumerate(row)] for row in scores]


def block_pairs(scores: list[list[float]], pool: list[dict[str, Any]], block_scores: list[float | None] | None,
                floor: bool) -> list[tuple[int, int, int, int, float]]:
    """The ILP's pair terms from the whole-block skip scores (`block_scores[i]` at each block's attention
    sublayer i, its MLP at i + 1): skipping both costs the block's score, not the sum of the two skips'
    (`scores` as the search sees them). NaN or missing scores give no term."""
    skip = next((j for j, spec in enumerate(pool) if spec.get("op") == "identity"), None)
    pairs = []
    for i, block in enumerate(block_scores or []):
        if block is None or skip is None or i + 1 >= len(scores):
            continue
        block = max(block, TIE_BREAK) if floor else block
        delta = block - scores[i][skip] - scores[i + 1][skip]
        if math.isfinite(delta):
            pairs.append((i, skip, i + 1, skip, delta))
    return pairs


def plan(scores: list[list[float]], lut: dict[str, Any], budget: dict[str, float], cfg: SearchConfig,
         weights: list[list[str | None]] | None = None,
         block_scores: list[float | None] | None = None) -> dict[str, Any]:
    """K diverse architectures under `budget` = {cost name: fraction of the teacher's cost} (Eq. 3-4).
    `weights[i][j]` is the trained weights file of candidate j at sublayer i (None if untrained);
    `block_scores` the whole-block skip scores (see `block_pairs`), None: the search adds single scores."""
    pool = lut["pool"]
    if cfg.floor_scores:
        scores = floored(scores, pool)
    if cfg.fitted_scale != 1.0:
        scores = scaled(scores, pool, cfg.fitted_scale)
    pairs = block_pairs(scores, pool, block_scores, cfg.floor_scores)
    limits = _limits(lut, budget)
    costs = {name: lut["costs"][name] for name in budget}
    try:
        solutions = solve(scores, costs, limits, k=cfg.k, max_overlap=cfg.max_overlap, time_limit_s=cfg.time_limit_s,
                          pairs=pairs)
    except InfeasibleBudget as exc:
        raise _infeasible(lut, budget, exc.reachable) from None
    architectures = [architecture(rank, sol.choice, lut, weights, sol.objective) for rank, sol in enumerate(solutions)]
    return {"budget": budget, "limits": limits, "architectures": architectures}


def architecture(rank: int, choice: list[int], lut: dict[str, Any], weights: list[list[str | None]] | None,
                 score_sum: float | None) -> dict[str, Any]:
    """One architecture as the search writes it (the fields of records.Architecture)."""
    pool, predicted = lut["pool"], predict(lut, choice)
    layers = layers_from_choice(choice, pool)
    return {"rank": rank, "choice": list(choice), "layers": layers, "summary": describe(layers), "score_sum": score_sum,
            "weights": {str(i): weights[i][j] for i, j in enumerate(choice) if weights and weights[i][j]},
            "predicted": predicted,
            "predicted_ratio": {n: calibrated_ratio(lut, n, predicted[n] / lut["teacher"][n]) for n in predicted},
            "table_ratio": {n: predicted[n] / lut["teacher"][n] for n in predicted}}


def best_under_budget(scores: list[list[float]], lut: dict[str, Any], budget: dict[str, float],
                      cfg: SearchConfig) -> list[int]:
    """The single best choice for `scores` taken as they are (no floor: a refine step's scores are measured
    around an architecture, where a negative one is a real gain), with the fitted prior, under `budget`."""
    if cfg.fitted_scale != 1.0:
        scores = scaled(scores, lut["pool"], cfg.fitted_scale)
    costs = {name: lut["costs"][name] for name in budget}
    try:
        found = solve(scores, costs, _limits(lut, budget), k=1, time_limit_s=cfg.time_limit_s)
    except InfeasibleBudget as exc:
        raise _infeasible(lut, budget, exc.reachable) from None
    return found[0].choice
