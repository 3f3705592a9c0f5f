from __future__ import annotations

from prefect import task

from tasks.common import store_for
from unast_core.config import SearchConfig
from unast_core.plan import check_reachable, plan
from unast_core.store import content_key, read_json, write_json


@task(name="search")
def search(prep: dict, scores_path: str, lut_path: str, budget: dict[str, float], cfg: SearchConfig) -> dict:
    """Stage 5: K diverse architectures for one budget (Eq. 3-4)."""
    path = store_for(prep).search(content_key(scores_path, lut_path, budget, cfg.model_dump()))
    if path.exists():
        return {"path": str(path), "reused": True, **read_json(path)}
    table = read_json(scores_path)
    result = plan(table["scores"], read_json(lut_path), budget, cfg, table.get("weights"))
    write_json(path, result)
    return {"path": str(path), "reused": False, **result}


@task(name="check-budget")
def check_budget(lut_path: str, budget: dict[str, float]) -> None:
    """Stop before scoring when the budget is below what the pool can reach."""
    check_reachable(read_json(lut_path), budget)
