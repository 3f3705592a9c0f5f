from __future__ import annotations

import math

from prefect import task

from tasks.common import computing, progress, run_logger, splits, teacher_for
from unast_core import faults
from unast_core.config import SearchConfig
from unast_core.integrity import intact
from unast_core.locks import unit_lock
from unast_core.records import Architecture, CostTable, Prepared, ScoreTable, States
from unast_core.search.plan import architecture, best_under_budget
from unast_core.search.refine import Evaluator, refine
from unast_core.store import content_key, read_json, write_json

REFINE_FIELDS = ("refine_rounds", "refine_seqs", "refine_metric", "fitted_scale", "time_limit_s")


@task(name="refine", tags=["unast-compute"])
def refine_architecture(prep: Prepared, states: States, scores: ScoreTable, lut: CostTable, budget: dict[str, float],
                        arch: Architecture, cfg: SearchConfig) -> tuple[Architecture, dict]:
    """Stage 5b: re-linearise Eq. 2 around a searched architecture and step while the measured loss falls
    (unast_core.search.refine). Returns the refined architecture (rank kept; the searched one when no step paid)
    and what each step measured, with `earlier`: the architectures of the kept steps before the last and their
    losses, latest first."""
    table, costs = read_json(scores.path), read_json(lut.path)
    # refine_score_seqs enters the key only when set, so results stored before it existed stay valid
    fields = set(REFINE_FIELDS) | ({"refine_score_seqs"} if cfg.refine_score_seqs is not None else set())
    key = content_key(scores.path, lut.path, budget, arch.choice, cfg.model_dump(include=fields),
                      *prep.compute_key())
    path = prep.store().path("refine", key[:2], f"{key}.json")
    with unit_lock(path):
        if not intact(path):
            log = run_logger()
            with computing():
                tokens = splits(prep)["validation"][:cfg.refine_seqs]
                available = [[math.isfinite(s) for s in row] for row in table["scores"]]
                evaluator = Evaluator(teacher_for(prep.teacher).model, tokens, states.dir, prep.pool, table["weights"],
                                      available, metric=cfg.refine_metric, dtype=prep.compute_dtype,
                                      score_rows=cfg.refine_score_seqs)

                def contextual(choice: list[int]):
                    with progress(len(choice), "refine: scores in context") as bar:
                        return evaluator.contextual(choice, on_sublayer=lambda _: bar.update())

                found = refine(arch.choice, contextual, evaluator.loss,
                               lambda s: best_under_budget(s, costs, budget, cfg), cfg.refine_rounds, log=log.info)
            write_json(path, {"choice": found.choice, "loss": found.loss, "start_loss": found.start_loss,
                              "rounds": found.rounds, "steps": found.steps, "wall_s": found.wall_s,
                              "forwards": evaluator.forwards,
                              "metric": cfg.refine_metric, "seqs": len(tokens),
                              "score_seqs": evaluator.scored_rows,
                              "from": arch.choice})
            faults.point("refine")
    result = read_json(path)

    def as_architecture(choice: list[int]) -> Architecture:
        return Architecture(**architecture(arch.rank, choice, costs, table["weights"], None))

    # the kept steps before the last, latest first, for a caller whose budget the last one misses (a result stored
    # before steps were recorded has none)
    result["earlier"] = [(as_architecture(step["choice"]), step["loss"])
                         for step in reversed(result.get("steps", [])[:-1])]
    return (arch if result["choice"] == arch.choice else as_architecture(result["choice"])), result
