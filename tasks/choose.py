"""Stages 5-6 around the core's decisions: a method's shortlist for one budget, and the pick after select."""

from __future__ import annotations

from prefect import task

from tasks.baselines import block_importance, scratch_init, uniform_grid
from tasks.common import run_logger
from tasks.cost import measure_architectures
from tasks.distill import distill_candidate
from tasks.refine import refine_architecture
from tasks.search import search
from unast_core.config import RunConfig
from unast_core.records import Choice, CostTable, Prepared, ScoreTable, Shortlist, States, Trained
from unast_core.search.choose import Tools, choose, pick_best, teacher_init_config
from unast_core.store import read_json


def _tools(prep: Prepared, states: States, calib: States, scores: ScoreTable | None, lut: CostTable,
           config: RunConfig, log) -> Tools:
    """The core's tools bound to the task bodies (run here, in this task's process: measuring, alone)."""

    def teacher_init(pairs: list[tuple[int, dict]]) -> list:
        pool = prep.pool + [spec for _, spec in pairs if spec not in prep.pool]
        here = prep.model_copy(update={"pool": pool})
        return [distill_candidate.fn(here, calib, i, pool.index(spec), teacher_init_config(config.distill), "teacher",
                                     config.seed) for i, spec in pairs]

    return Tools(run_dir=prep.run_dir,
                 measure=lambda layer_sets: measure_architectures.fn(prep, layer_sets, config.cost),
                 search=lambda budget: search.fn(prep, scores, lut, budget, config.search),
                 importance=lambda method: block_importance.fn(prep, states, method, config.score.seqs,
                                                               config.score.batch_size),
                 uniform_layers=lambda widths: uniform_grid.fn(prep, widths), teacher_init=teacher_init,
                 scratch_init=lambda layers: scratch_init.fn(prep, layers, config.seed), log=log.info,
                 refine=None if scores is None else
                 lambda arch, budget: refine_architecture.fn(prep, states, scores, lut, budget, arch, config.search))


@task(name="choose", tags=["unast-timing"])
def shortlist(prep: Prepared, states: States, calib: States, scores: ScoreTable | None, lut: CostTable,
              budget: dict[str, float], config: RunConfig) -> Shortlist:
    """Stage 5 for one budget: UNAST's K architectures held to the measured budget, or a baseline's choice
    (`unast_core.search.choose`). Its measurements hold the host's timing lock, so run it in the flow's
    process, not fanned out."""
    return choose(budget, read_json(lut.path), config, _tools(prep, states, calib, scores, lut, config,
                                                             run_logger()))


@task(name="pick")
def pick(candidates: Shortlist, trials: list[Trained], ranked_on: str = "validation") -> Choice:
    """Stage 6's decision: the best short-finetuned architecture (a baseline's choice passes through)."""
    return pick_best(candidates, trials, ranked_on)
