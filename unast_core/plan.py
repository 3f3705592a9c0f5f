"""Stage 5, search: turn budgets (fractions of the teacher's cost) into the ILP of Eq. 3-4 and back."""

from __future__ import annotations

import math
from typing import Any

from unast_core.assemble import describe, layers_from_choice
from unast_core.config import SearchConfig
from unast_core.cost import predict
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.search import solve


def plan(scores: list[list[float]], lut: dict[str, Any], budget: dict[str, float], cfg: SearchConfig) -> dict[str, Any]:
    """K diverse architectures under `budget` = {cost name: fraction of the teacher's cost}.

    The ILP constrains the sublayer costs: sum_i cost(i, z_i) <= fraction * teacher - fixed part.
    """
    pool = lut["pool"]
    limits = {}
    for name, fraction in budget.items():
        if name not in lut["costs"]:
            raise UnastError(f"no '{name}' cost was measured; budgets available: {', '.join(lut['costs'])}")
        limits[name] = fraction * lut["teacher"][name] - lut["fixed"][name]
    costs = {name: lut["costs"][name] for name in budget}
    try:
        solutions = solve(scores, costs, limits, k=cfg.k, max_overlap=cfg.max_overlap, time_limit_s=cfg.time_limit_s)
    except InfeasibleBudget as exc:
        reachable = {name: (value + lut["fixed"][name]) / lut["teacher"][name] for name, value in exc.reachable.items()}
        asked = ", ".join(f"{n}={budget[n]:g}" for n in reachable)
        smallest = ", ".join(f"{n}={math.ceil(v * 1000) / 1000:g}" for n, v in reachable.items())
        raise InfeasibleBudget(f"budget {asked} cannot be met with pool {pool}: the smallest reachable is "
                               f"{smallest}; raise the budget or widen the pool", reachable) from None
    architectures = []
    for rank, sol in enumerate(solutions):
        predicted = predict(lut, sol.choice)
        architectures.append({
            "rank": rank, "choice": sol.choice, "layers": layers_from_choice(sol.choice, pool),
            "summary": describe(layers_from_choice(sol.choice, pool)), "score_sum": sol.objective,
            "predicted": predicted,
            "predicted_ratio": {n: predicted[n] / lut["teacher"][n] for n in predicted},
        })
    return {"budget": budget, "limits": limits, "architectures": architectures}
