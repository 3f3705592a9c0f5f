"""What `compress` sequences: the run (tracking, wall time per stage, logging) and the fan-out stages.

Fan-out stages submit one task per unit of work to the flow's task runner (serial, or Dask workers) and
gather the records; every other stage runs in the flow's own process, and the stages that time latency
hold the host's exclusive timing lock (`tasks.common.timing`), so no compute task of any UNAST run on
that host shares it while they time.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from prefect import get_run_logger, unmapped

from flows.artifacts import prefect_tags, publish_family, publish_link, publish_results
from tasks.capture import capture_states
from tasks.common import peak_rss_mb, progress, reset_peak_rss, unit_lock
from tasks.distill import distill_candidate
from tasks.report import distill_report, export_model
from tasks.score import score, score_table
from tasks.tracking import Tracker
from tasks.train import train
from unast_core.config import RunConfig, budget_name
from unast_core.records import (
    Choice,
    Distilled,
    DistillReport,
    Evaluation,
    Prepared,
    Record,
    ScoreTable,
    Shortlist,
    States,
    Trained,
)


class Run:
    """One flow run: its MLflow parent run, the wall time and peak memory of each stage, and the log."""

    def __init__(self, config: RunConfig):
        self.config, self.log = config, get_run_logger()
        self.home = str(Path(config.home).resolve())
        self.tracker = Tracker(Path(self.home), config.tracking.uri)
        self.budgets = config.budgets()
        self.wall: dict[str, float] = {}
        self.rss: dict[str, float | None] = {}  # peak RSS of this process during each stage, MB
        self.models: list[dict[str, Any]] = []
        self.tracker.start(f"{config.method}-{config.preset}-{'+'.join(budget_name(b) for b in self.budgets)}",
                           config.model_dump(mode="json"), tags=prefect_tags())
        publish_link(self.tracker)
        if self.tracker.resumed:
            self.log.info("resuming after a run that died: MLflow run(s) %s marked KILLED",
                          ", ".join(self.tracker.resumed))

    def stage(self, name: str, fn: Callable[..., Any], *args: Any, wall: dict[str, float] | None = None) -> Any:
        """Run one stage, time it, and log its record(s) to the tracker under `name`."""
        start = reset_peak_rss() or time.perf_counter()
        result = fn(*args)
        (self.wall if wall is None else wall)[name.split("/")[-1]] = round(time.perf_counter() - start, 2)
        self.rss[name.split("/")[-1]] = peak_rss_mb()
        for record in result if isinstance(result, list) else [result]:
            if isinstance(record, Record) and record.describe():
                self.log.info(record.describe())
            if isinstance(record, Record) and type(record).tracked is not Record.tracked:
                self.tracker.record(name, record)
            if isinstance(record, Shortlist):
                for sub, tracked in record.stages.items():
                    self.tracker.stage(f"{name.rsplit('/', 1)[0]}/{sub}" if "/" in name else sub, **tracked)
        return result

    def out_dir(self, budget: dict[str, float]) -> str:
        return str(Path(self.config.output) / budget_name(budget) if len(self.budgets) > 1 else Path(self.config.output))

    def finish(self) -> dict[str, Any]:
        self.tracker.finish({"models": len(self.models), "wall_s": self.wall})
        if len(self.models) > 1:
            publish_family(self.models)
        best = self.models[0]
        return best if len(self.models) == 1 else {**best, "family": self.models}

    def failed(self) -> None:
        self.tracker.finish({"wall_s": self.wall}, status="FAILED")


def _gather(futures: list, desc: str, postfix: Callable[[Any], dict] | None = None) -> list:
    bar, results = progress(len(futures), desc), []
    for future in futures:
        results.append(future.result())
        bar.update(1)
        if postfix:
            bar.set_postfix(**postfix(results[-1]))
    bar.close()
    return results


def capture(prep: Prepared, config: RunConfig) -> list[States]:
    """Stage 1: teacher states on the validation split (scoring) and the calibration sequences (distillation)."""
    states = [capture_states(prep, "validation", config.score.batch_size),
              capture_states(prep, "calibration", config.score.batch_size, config.distill.seqs)]
    get_run_logger().info("teacher states %s (validation), %s (calibration)",
                          *("reused" if s.reused else "captured" for s in states))
    return states


def distill_all(prep: Prepared, calib: States, config: RunConfig) -> DistillReport:
    """Stage 2: one task per (sublayer, trained candidate), fanned out; gathered into the paper's Table 1."""
    pairs = prep.trained_pairs()
    futures = distill_candidate.map(unmapped(prep), unmapped(calib), [i for i, _ in pairs], [j for _, j in pairs],
                                    unmapped(config.distill), unmapped(config.pool.init), unmapped(config.seed),
                                    unmapped(config.cost.device))
    rows: list[Distilled] = _gather(list(futures), "distill candidates",
                                    lambda d: {"nmse": f"{d.metrics.get('nmse') or float('nan'):.3f}"})
    report = distill_report(prep, calib.dir, rows)
    get_run_logger().info("distilled %d candidates (%d reused, %d failed%s) on %s", len(rows), report.reused_count,
                          len(report.failed), "".join(f"; {f}" for f in report.failed[:3]), _workers(rows))
    return report


def _workers(records: list[Record]) -> str:
    """Where records were made: "host:pid x count, ..."."""
    return ", ".join(f"{w} x{n}" for w, n in Counter(r.worker for r in records).items()) or "no worker"


def score_all(prep: Prepared, states: States, distilled: DistillReport | None, config: RunConfig) -> ScoreTable:
    """Stage 3: Eq. 2 for every (sublayer, candidate): one task per sublayer, fanned out."""
    weights = distilled.weights if distilled else [[None] * len(prep.pool) for _ in prep.sublayers]
    futures = score.map(unmapped(prep), unmapped(states), list(range(len(prep.sublayers))), weights,
                        unmapped(config.score))
    scored = _gather(list(futures), "score sublayers")
    table = score_table(prep, scored, weights)
    get_run_logger().info("scored %d sublayers x %d candidates (%d reused) on %s", len(scored), len(prep.pool),
                          table.reused_sublayers, _workers(scored))
    return table


def select(prep: Prepared, shortlist: Shortlist, config: RunConfig) -> list[Trained]:
    """Stage 6: a short finetune of each shortlisted architecture, fanned out (a baseline's one is not)."""
    if not shortlist.select:
        return []
    choices = shortlist.choices
    futures = train.map(unmapped(prep), [c.arch.layers for c in choices], [c.candidates for c in choices],
                        unmapped(None), unmapped(config.select), unmapped(config.seed),
                        unmapped(config.evaluate.batch_size), [f"select {c.arch.rank}" for c in choices],
                        unmapped(config.cost.device), unmapped(False),
                        unmapped("select" if config.data.select_on is not None else "validation"))
    return _gather(list(futures), "select")


def finetune(prep: Prepared, choice: Choice, config: RunConfig) -> Trained:
    """Stage 7: the final finetune of the chosen architecture (one task)."""
    final = train(prep, choice.arch.layers, choice.candidates, choice.init, choice.finetune, config.seed,
                  config.evaluate.batch_size, "finetune", config.cost.device)
    return final.require_ok("the final finetune")


def export(run: Run, prep: Prepared, budget: dict[str, float], choice: Choice, final: Trained, measured: Evaluation,
           distilled: DistillReport | None, figures: dict[str, str], scores: ScoreTable | None,
           wall: dict[str, float]) -> dict[str, Any]:
    """Stage 8b: one model's checkpoint, figures and results.json in its output directory."""
    info = {"mlflow": {"tracking_uri": run.tracker.uri, "run_id": run.tracker.parent_id, "experiment": "unast"},
            "wall_s": wall, "peak_rss_mb": dict(run.rss)}
    # exclusive while a run swaps in and logs one output directory: two overlapping runs of a deployment would
    # otherwise interleave the swap of the checkpoint directory with the other's results.json
    with unit_lock(run.out_dir(budget)):
        results = export_model(prep, run.config, budget, choice, final, measured, distilled, figures,
                               scores.path if scores else None, run.out_dir(budget), info)
        run.tracker.stage(f"{budget_name(budget)}/export",
                          dicts={"results.json": results}, dirs={"model": run.out_dir(budget)})
    run.models.append(results)
    publish_results(results, budget_name(budget) if len(run.budgets) > 1 else "")
    return results
