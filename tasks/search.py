from __future__ import annotations

from prefect import task

from unast_core.config import SearchConfig
from unast_core.records import Architecture, CostTable, Prepared, Searched, ScoreTable
from unast_core.search.plan import check_reachable, plan
from unast_core import faults
from unast_core.integrity import intact
from unast_core.locks import unit_lock
from unast_core.store import content_key, read_json, write_json


@task(name="search")
def search(prep: Prepared, scores: ScoreTable, lut: CostTable, budget: dict[str, float], cfg: SearchConfig) -> Searched:
    """Stage 5: K diverse architectures for one budget (Eq. 3-4); InfeasibleBudget when the pool cannot
    reach it."""
    # `fitted_scale` enters the key only when it is on, so stores written before it existed stay valid
    # the refine settings act after the search (tasks.refine keys them), so they stay out of its key
    skip = {"latency_tolerance", "refine_rounds", "refine_seqs", "refine_metric", "refine_score_seqs"}
    skip |= {"fitted_scale"} if cfg.fitted_scale == 1.0 else set()
    path = prep.store().search(content_key(scores.path, lut.path, budget, cfg.model_dump(exclude=skip)))
    with unit_lock(path):
        reused = intact(path)
        if not reused:
            table = read_json(scores.path)
            write_json(path, plan(table["scores"], read_json(lut.path), budget, cfg, table.get("weights"),
                                  table.get("block_scores")))
            faults.point("search")
    result = read_json(path)
    return Searched(path=str(path), budget=budget, reused=reused,
                    architectures=[Architecture(**a) for a in result["architectures"]])


@task(name="check-budget")
def check_budget(lut: CostTable, budget: dict[str, float]) -> None:
    """Stop before scoring when the budget is below what the pool can reach."""
    check_reachable(read_json(lut.path), budget)

