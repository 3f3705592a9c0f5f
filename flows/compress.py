"""`unast run`: the UNAST pipeline as one Prefect flow, in the order of the paper's Figure 2.

Stages 0-4 are paid once per teacher and data; every artifact is content-keyed in the run store, so a
rerun (or a crashed run) reuses finished work. Distill, score and select fan out on the flow's task runner
(`flows.runners`); the stages that time latency (cost, search's measurements, evaluate) run in this
process, alone on the host.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import configured_runner
from flows.stages import Run, capture, distill_all, export, finetune, score_all, select
from tasks.choose import pick, shortlist
from tasks.cost import cost_table
from tasks.disk import check_disk
from tasks.evaluate import evaluate
from tasks.prepare import prepare
from tasks.ptq import check_ptq, post_compress
from tasks.report import check_outputs, score_figures, write_family
from tasks.search import check_budget
from unast_core.config import RunConfig, budget_name


@flow(name="unast-compress", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def compress(config: RunConfig) -> dict[str, Any]:
    """Compress the teacher under the budget(s) of `config` and export the student(s)."""
    with configured_runner(config.orchestration):  # a deployment's run fans out on the runner it names
        return pipeline(config)


def pipeline(config: RunConfig) -> dict[str, Any]:
    run, cfg = Run(config), config
    try:
        check_outputs(cfg)
        prep = run.stage("prepare", prepare, cfg.teacher, cfg.data, cfg.cost, cfg.method_pool(), cfg.compute,
                         run.home, cfg.search.target)
        check_disk(prep, cfg)                                                       # a warning when short
        check_ptq(prep, cfg.ptq_settings())                                          # an n:m that fits
        lut = run.stage("cost", cost_table, prep, cfg.cost)                       # alone on the host
        for budget in run.budgets:                                                   # unreachable: stop now
            check_budget(lut, budget)
        states, calib = run.stage("capture", capture, prep, cfg)
        searches = cfg.needs_scores()                                                 # UNAST, not a baseline
        distilled = run.stage("distill", distill_all, prep, calib, cfg) if searches else None   # fanned out
        scores = run.stage("score", score_all, prep, states, distilled, cfg) if searches else None  # fanned out
        figures = score_figures(scores, lut, distilled) if searches else {}
        if len(run.budgets) > 1:
            write_family(cfg.output, [], run.budgets)
        for budget in run.budgets:
            name, wall = budget_name(budget), dict(run.wall)
            short = run.stage(f"{name}/search", shortlist, prep, states, calib, scores, lut, budget, cfg, wall=wall)
            trials = run.stage(f"{name}/select", select, prep, short, cfg, wall=wall)              # fanned out
            choice = pick(short, trials, cfg.data.select_on or "validation")
            final = run.stage(f"{name}/finetune", finetune, prep, choice, cfg, wall=wall)
            if cfg.ptq_settings():                                                    # Section 5.3: on top
                final = run.stage(f"{name}/ptq", post_compress, prep, final, cfg.ptq_settings(),
                                  cfg.evaluate.batch_size, wall=wall)
            measured = run.stage(f"{name}/evaluate", evaluate, prep, final, cfg.evaluate, cfg.cost, wall=wall)
            run.stage(f"{name}/export", export, run, prep, budget, choice, final, measured, distilled, figures, scores,
                      wall, wall=wall)
        if len(run.budgets) > 1:
            write_family(cfg.output, run.models, run.budgets)
        return run.finish()
    except BaseException:
        run.failed()
        raise
