"""`unast run`: the UNAST pipeline as one Prefect flow. Stages 1-5 are paid once per teacher and data;
every artifact is content-keyed in the run store, so a rerun (or a crashed run) reuses finished work."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.capture import capture_states
from tasks.common import progress
from tasks.cost import cost_table, resolve_device, verify_latency
from tasks.evaluate import evaluate, export
from tasks.prepare import prepare
from tasks.score import score, score_table
from tasks.search import check_budget, search
from tasks.tracking import Tracker
from tasks.train import train
from unast_core.config import RunConfig
from unast_core.cost import corrected_budget
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.store import check_output_dir, copy_tree, read_json, write_json


@contextmanager
def _timed(wall: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    wall[stage] = round(time.perf_counter() - start, 2)


LATENCY_TOLERANCE = 0.02  # measured ratio may exceed the budget by this much at search time


def _hold_latency_budget(prep: dict, config: RunConfig, scores_path: str, lut_path: str, found: dict,
                         log) -> tuple[dict, list[dict]]:
    """Measure the searched architectures and keep those within the latency budget. If none holds (the
    table under-predicts), search once more with the budget corrected by the measured/predicted ratio."""
    target = config.budget["latency"] + LATENCY_TOLERANCE

    def measured(found: dict) -> list[dict]:
        ratios = verify_latency(prep, config.teacher, found["path"], config.cost)
        return [{**arch, "measured_ratio": r} for arch, r in zip(found["architectures"], ratios)]

    archs = measured(found)
    if all(a["measured_ratio"] > target for a in archs):
        corrected = corrected_budget(config.budget, [a["predicted_ratio"]["latency"] for a in archs],
                                     [a["measured_ratio"] for a in archs])
        log.info("measured latency %s exceeds predicted %s: searching again with latency=%.3f",
                 [round(a["measured_ratio"], 3) for a in archs],
                 [round(a["predicted_ratio"]["latency"], 3) for a in archs], corrected["latency"])
        try:
            retry = search(prep, scores_path, lut_path, corrected, config.search)
        except InfeasibleBudget:  # the correction overshot what the pool can reach: keep the measured ones
            log.info("corrected budget latency=%.3f is unreachable; keeping the fastest measured architecture",
                     corrected["latency"])
        else:
            found, archs = retry, measured(retry)
    kept = [a for a in archs if a["measured_ratio"] <= target] or [min(archs, key=lambda a: a["measured_ratio"])]
    return found, kept


# One worker: tasks share the in-process teacher and the CPU; scale-out swaps the task runner.
@flow(name="unast-compress", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def compress(config: RunConfig) -> dict[str, Any]:
    log = get_run_logger()
    check_output_dir(Path(config.output))
    home = str(Path(config.home).resolve())
    tracker = Tracker(Path(home))
    tracker.start(f"{config.preset}-{'-'.join(f'{k}{v:g}' for k, v in config.budget.items())}", config.model_dump(mode="json"))
    wall: dict[str, float] = {}
    pool = config.pool.ops
    device = resolve_device(config.cost.device)  # the target device: timing, training and evaluation run there
    try:
        # Prepare
        with _timed(wall, "prepare"):
            prep = prepare(config.teacher, config.data, config.cost, home)
        log.info("teacher %s (%s, %d sublayers), run store %s", prep["source"], prep["model_type"],
                 len(prep["sublayers"]), prep["run_dir"])
        # Cost
        with _timed(wall, "cost"):
            lut_ref = cost_table(prep, config.teacher, pool, config.cost)
        lut = read_json(lut_ref["path"])
        tracker.stage("cost", params={"reused": lut_ref["reused"]}, metrics={"teacher": lut["teacher"], "fixed": lut["fixed"]},
                      files=[lut_ref["path"]])
        check_budget(lut_ref["path"], config.budget)
        # Capture
        with _timed(wall, "capture"):
            states = capture_states(prep, config.teacher, "validation", config.score.batch_size)
        tracker.stage("capture", metrics={"teacher_val_loss": states["loss"]}, params={"reused": states["reused"]})
        # Score (one task per sublayer, all its candidates)
        with _timed(wall, "score"):
            futures = score.map(unmapped(prep), unmapped(states), unmapped(config.teacher), range(len(prep["sublayers"])),
                                unmapped(pool), unmapped(config.score))
            bar = progress(len(futures), "score sublayers")
            rows = []
            for future in futures:
                rows.append(future.result())
                bar.update(1)
            bar.close()
            scores_path = score_table(prep, rows, pool)
        reused = sum(r["reused"] for r in rows)
        log.info("scored %d sublayers x %d candidates (%d reused)", len(rows), len(pool), reused)
        tracker.stage("score", params={"reused_sublayers": reused}, files=[scores_path, scores_path.replace(".json", ".parquet")])
        # Search
        with _timed(wall, "search"):
            found = search(prep, scores_path, lut_ref["path"], config.budget, config.search)
            archs = found["architectures"]
            if "latency" in config.budget:
                found, archs = _hold_latency_budget(prep, config, scores_path, lut_ref["path"], found, log)
        for arch in archs:
            log.info("architecture %d: %s predicted %s measured latency %.3f", arch["rank"], arch["summary"],
                     {k: round(v, 3) for k, v in arch["predicted_ratio"].items()}, arch.get("measured_ratio", float("nan")))
        tracker.stage("search", metrics={"solutions": len(archs)}, files=[found["path"]],
                      dicts={"architectures.json": archs})
        # Select: short finetune of each architecture, best validation loss wins
        with _timed(wall, "select"):
            trials = [train.submit(prep, config.teacher, a["layers"], None, config.select, config.seed,
                                   config.evaluate.batch_size, f"select {a['rank']}", device) for a in archs]
            trials = [t.result() for t in trials]
        for arch, trial in zip(archs, trials):
            tracker.stage(f"select-{arch['rank']}", params={"summary": arch["summary"], "status": trial["status"]},
                          metrics={k: trial[k] for k in ("val_loss_before", "val_loss") if k in trial},
                          curve=trial.get("curve"))
        ok = [(t, a) for t, a in zip(trials, archs) if t["status"] == "ok"]
        if not ok:
            raise UnastError("every candidate architecture diverged in the short finetune; lower select.lr_max")
        best, best_arch = min(ok, key=lambda pair: pair[0]["val_loss"])
        log.info("selected architecture %d (val loss %.4f)", best_arch["rank"], best["val_loss"])
        # Finetune the winner
        with _timed(wall, "finetune"):
            final = train(prep, config.teacher, best_arch["layers"], best["weights"], config.finetune, config.seed,
                          config.evaluate.batch_size, "finetune", device)
        if final["status"] != "ok":
            raise UnastError(f"the final finetune failed: {final['error']}")
        tracker.stage("finetune", metrics={k: final[k] for k in ("val_loss_before", "val_loss", "wall_s")}, curve=final["curve"])
        # Evaluate + export
        with _timed(wall, "evaluate"):
            measured = evaluate(prep, config.teacher, final, config.evaluate, config.cost)
        results = {
            "name": f"UNAST student of {prep['source']}", "teacher_source": prep["source"], "preset": config.preset,
            "budget": config.budget, "pool": pool, **measured,
            "summary": best_arch["summary"], "layers": best_arch["layers"], "predicted_ratio": best_arch["predicted_ratio"],
            "search_measured_latency_ratio": best_arch.get("measured_ratio"),
            "select": [{"rank": a["rank"], "summary": a["summary"], "status": t["status"], "val_loss": t.get("val_loss")}
                       for a, t in zip(archs, trials)],
            "finetune": {k: final[k] for k in ("val_loss_before", "val_loss", "steps", "tokens")},
            "output": str(Path(config.output).resolve()), "run_dir": prep["run_dir"],
            "mlflow": {"tracking_uri": tracker.uri, "run_id": tracker.parent_id, "experiment": "unast"},
            "wall_s": wall,
        }
        with _timed(wall, "export"):
            final_dir = Path(prep["run_dir"]) / "final" / Path(found["path"]).stem
            exported = export(prep, config.teacher, final, results, str(final_dir), config.evaluate.generate_tokens)
            results["sample"] = exported["sample"]
            copy_tree(final_dir, Path(config.output))
            write_json(Path(config.output) / "results.json", results)
        tracker.stage("evaluate", metrics={"teacher": measured["teacher"], "student": measured["student"]},
                      dicts={"results.json": results}, dirs={"model": str(Path(config.output))})
        tracker.finish({"student": measured["student"], "teacher": measured["teacher"], "wall_s": wall})
        return results
    except BaseException:
        tracker.finish({"wall_s": wall}, status="FAILED")
        raise
