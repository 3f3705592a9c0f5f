"""`unast run`: the UNAST pipeline as one Prefect flow. Stages 1-5 are paid once per teacher and data;
every artifact is content-keyed in the run store, so a rerun (or a crashed run) reuses finished work."""

from __future__ import annotations

import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows.methods import LATENCY_TOLERANCE, choose
from tasks.capture import capture_states
from tasks.common import progress
from tasks.cost import cost_table, measure_architectures, resolve_device
from tasks.distill import distill_candidate
from tasks.evaluate import evaluate, export
from tasks.prepare import prepare
from tasks.score import score, score_table
from tasks.search import check_budget, search
from tasks.tracking import Tracker
from tasks.train import train
from unast_core.config import PoolConfig, RunConfig, budget_name
from unast_core.cost import corrected_budget
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.figures import (
    architecture_chart,
    cost_score_scatter,
    spec_label,
    sublayer_error_chart,
)
from unast_core.findings import sensitivity_chart
from unast_core.modeling_unast import applies, candidate_name
from unast_core.operators import needs_training
from unast_core.report import distill_summary
from unast_core.store import (
    atomic_path,
    check_output_dir,
    copy_tree,
    read_json,
    write_json,
)


@contextmanager
def _timed(wall: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    wall[stage] = round(time.perf_counter() - start, 2)


def _hold_latency_budget(prep: dict, config: RunConfig, budget: dict[str, float], scores_path: str, lut_path: str,
                         found: dict, log) -> tuple[dict, list[dict]]:
    """Measure the searched architectures and keep those within the latency budget. If none holds (the
    table under-predicts), search once more with the budget corrected by the measured/predicted ratio."""
    target = budget["latency"] + LATENCY_TOLERANCE

    def measured(found: dict) -> list[dict]:
        ratios = measure_architectures(prep, config.teacher, [a["layers"] for a in found["architectures"]],
                                       config.cost)["latency"]
        return [{**arch, "measured_ratio": r} for arch, r in zip(found["architectures"], ratios)]

    archs = measured(found)
    if all(a["measured_ratio"] > target for a in archs):
        corrected = corrected_budget(budget, [a["predicted_ratio"]["latency"] for a in archs],
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


def _distill_all(prep: dict, calib: dict, config: RunConfig, log) -> tuple[list[list], list[dict]]:
    """Fan out one distillation task per (sublayer, trained candidate). Returns the weights matrix
    [sublayer][candidate] (a file, {"error": ...} for a failed candidate, None when untrained) and the rows."""
    pool = prep["pool"]
    kinds = [name.split(".")[1] for name in prep["sublayers"]]
    pairs = [(i, j) for i, kind in enumerate(kinds) for j, spec in enumerate(pool)
             if needs_training(spec) and applies(spec, kind)]
    weights: list[list] = [[None] * len(pool) for _ in kinds]
    if not pairs:
        return weights, []
    futures = distill_candidate.map(unmapped(prep), unmapped(calib), unmapped(config.teacher), [i for i, _ in pairs],
                                    [pool[j] for _, j in pairs], unmapped(config.distill), unmapped(config.pool.init),
                                    unmapped(config.seed))
    bar = progress(len(futures), "distill candidates")
    rows = []
    for (i, j), future in zip(pairs, futures):
        row = future.result()
        rows.append(row)
        weights[i][j] = row["weights"] if row["status"] == "ok" else {"error": row["error"]}
        bar.update(1)
        bar.set_postfix(nmse=f"{row.get('nmse') or float('nan'):.3f}")
    bar.close()
    failed = [r for r in rows if r["status"] != "ok"]
    log.info("distilled %d candidates (%d reused, %d failed%s)", len(rows), sum(r["reused"] for r in rows), len(failed),
             "".join(f"; {r['sublayer']}/{r['candidate']}: {r['error']}" for r in failed[:3]))
    return weights, rows


def _copy_figures(figures: dict[str, str], directory: Path) -> None:
    for path in figures.values():
        with atomic_path(directory / Path(path).name) as tmp:
            shutil.copyfile(path, tmp)


def _scatter_points(table: dict, lut: dict) -> list[dict]:
    """Figure 3's points: every scored candidate's latency and parameters relative to its teacher sublayer."""
    points = []
    for i, name in enumerate(table["sublayers"]):
        lat, par = lut["costs"]["latency"][i], lut["costs"]["params"][i]
        for j, spec in enumerate(lut["pool"]):
            score = table["scores"][i][j]
            if j and score is not None and math.isfinite(score):
                points.append({"label": spec_label(spec), "kind": name.split(".")[1], "score": score,
                               "latency": lat[j] / lat[0] if lat[0] else 0.0, "params": par[j] / par[0] if par[0] else 0.0})
    return points


def _choose_unast(prep: dict, config: RunConfig, budget: dict[str, float], name: str, scores_path: str, lut_path: str,
                  tracker: Tracker, log, device: str, wall: dict[str, float]) -> dict[str, Any]:
    """Stages 5-6 for one budget: search K architectures, hold the latency budget, short-finetune each,
    keep the best. Returns the finetune plan for `_finish_model`."""
    # Search
    with _timed(wall, "search"):
        found = search(prep, scores_path, lut_path, budget, config.search)
        archs = found["architectures"]
        if "latency" in budget:
            found, archs = _hold_latency_budget(prep, config, budget, scores_path, lut_path, found, log)
    for arch in archs:
        log.info("architecture %d: %s predicted %s (table %s) measured latency %.3f", arch["rank"], arch["summary"],
                 {k: round(v, 3) for k, v in arch["predicted_ratio"].items()},
                 {k: round(v, 3) for k, v in arch.get("table_ratio", {}).items() if k == "latency"},
                 arch.get("measured_ratio", float("nan")))
    tracker.stage(f"{name}/search", metrics={"solutions": len(archs)}, files=[found["path"]],
                  dicts={"architectures.json": archs})
    # Select: short finetune of each architecture, best validation loss wins
    with _timed(wall, "select"):
        trials = [train.submit(prep, config.teacher, a["layers"], a["weights"], None, config.select, config.seed,
                               config.evaluate.batch_size, f"select {a['rank']}", device, False) for a in archs]
        trials = [t.result() for t in trials]
    for arch, trial in zip(archs, trials):
        tracker.stage(f"{name}/select-{arch['rank']}", params={"summary": arch["summary"], "status": trial["status"]},
                      metrics={k: trial[k] for k in ("val_loss_before", "val_loss") if trial.get(k) is not None},
                      curve=trial.get("curve"))
    ok = [(t, a) for t, a in zip(trials, archs) if t["status"] == "ok"]
    if not ok:
        raise UnastError("every candidate architecture diverged in the short finetune; lower select.lr_max")
    best, best_arch = min(ok, key=lambda pair: pair[0]["val_loss"])
    log.info("selected architecture %d (val loss %.4f)", best_arch["rank"], best["val_loss"])
    return {"arch": best_arch, "init": best["weights"], "candidates": best_arch["weights"], "finetune": config.finetune,
            "chart": Path(found["path"]).with_suffix(f".arch{best_arch['rank']}.png"), "stem": Path(found["path"]).stem,
            "results": {"search_measured_latency_ratio": best_arch.get("measured_ratio"),
                        "select": [{"rank": a["rank"], "summary": a["summary"], "status": t["status"],
                                    "val_loss": t.get("val_loss")} for a, t in zip(archs, trials)]}}


def _finish_model(prep: dict, config: RunConfig, budget: dict[str, float], name: str, out_dir: Path, plan: dict,
                  summary: dict | None, figures: dict[str, str], tracker: Tracker, log, device: str,
                  wall: dict[str, float]) -> dict[str, Any]:
    """Stages 7-8 for one chosen architecture: finetune, evaluate, export to `out_dir` (every method)."""
    arch = plan["arch"]
    with _timed(wall, "finetune"):
        final = train(prep, config.teacher, arch["layers"], plan["candidates"], plan["init"], plan["finetune"],
                      config.seed, config.evaluate.batch_size, "finetune", device)
    if final["status"] != "ok":
        raise UnastError(f"the final finetune failed: {final['error']}")
    tracker.stage(f"{name}/finetune", metrics={k: final[k] for k in ("val_loss_before", "val_loss", "wall_s")},
                  curve=final["curve"])
    model_figures = {**figures, "architecture": architecture_chart(
        arch["layers"], prep["dims"], plan["chart"], f"{config.method} {name}: {arch['summary']}")}
    with _timed(wall, "evaluate"):
        measured = evaluate(prep, config.teacher, final, config.evaluate, config.cost)
    predicted = arch.get("predicted_ratio") or {}
    results = {
        "name": f"{'UNAST' if config.method == 'unast' else config.method} student of {prep['source']}",
        "method": config.method, "teacher_source": prep["source"], "preset": config.preset,
        "budget": budget, "pool": [candidate_name(spec) for spec in prep["pool"]], **measured,
        "distill": summary, "figures": {k: f"figures/{Path(v).name}" for k, v in model_figures.items()},
        "summary": arch["summary"], "layers": arch["layers"], "predicted_ratio": predicted,
        "table_ratio": arch.get("table_ratio"),
        "latency_prediction_error": measured["student"]["latency_ratio"] / predicted["latency"] - 1
        if "latency" in predicted else None,
        **plan["results"],
        "finetune": {k: final[k] for k in ("val_loss_before", "val_loss", "steps", "tokens")},
        "output": str(out_dir.resolve()), "run_dir": prep["run_dir"],
        "mlflow": {"tracking_uri": tracker.uri, "run_id": tracker.parent_id, "experiment": "unast"},
        "wall_s": wall,
    }
    with _timed(wall, "export"):
        final_dir = Path(prep["run_dir"]) / "final" / plan["stem"]
        exported = export(prep, config.teacher, final, results, str(final_dir), config.evaluate.generate_tokens)
        results["sample"] = exported["sample"]
        copy_tree(final_dir, out_dir)
        _copy_figures(model_figures, out_dir / "figures")
        write_json(out_dir / "results.json", results)
    tracker.stage(f"{name}/evaluate", metrics={"teacher": measured["teacher"], "student": measured["student"]},
                  dicts={"results.json": results}, dirs={"model": str(out_dir)})
    return results


def _distill_and_score(prep: dict, states: dict, calib: dict, config: RunConfig, lut: dict, tracker: Tracker, log,
                       wall: dict[str, float]) -> tuple[str, dict, dict[str, str]]:
    """Stages 2-3: distil every trained candidate, score every (sublayer, candidate). Returns the score
    table's path, the distillation summary and the figures made so far."""
    pool = prep["pool"]
    # Distill: one task per (sublayer, trained candidate)
    with _timed(wall, "distill"):
        weights, distilled = _distill_all(prep, calib, config, log)
    summary = distill_summary(distilled, prep["sublayers"])
    figures = {"sublayer_errors": sublayer_error_chart(
        summary["errors"], Path(prep["run_dir"]) / "reports" / f"errors-{Path(calib['dir']).name}.png",
        "Local normalized MSE per sublayer (Figure 4)")} if distilled else {}
    tracker.stage("distill", params={"reused": summary["reused"], "trained": summary["trained"],
                                     "failed": len(summary["failed"])},
                  dicts={"distill.json": distilled, "table1.md": summary["table1"]}, files=list(figures.values()))
    # Score (one task per sublayer, all its candidates)
    with _timed(wall, "score"):
        futures = score.map(unmapped(prep), unmapped(states), unmapped(config.teacher), range(len(prep["sublayers"])),
                            unmapped(pool), weights, unmapped(config.score))
        bar = progress(len(futures), "score sublayers")
        rows = []
        for future in futures:
            rows.append(future.result())
            bar.update(1)
        bar.close()
        scores_path = score_table(prep, rows, pool, weights)
    reused = sum(r["reused"] for r in rows)
    log.info("scored %d sublayers x %d candidates (%d reused)", len(rows), len(pool), reused)
    table = read_json(scores_path)
    figures["cost_vs_score"] = cost_score_scatter(
        _scatter_points(table, lut), Path(scores_path).with_suffix(".scatter.png"),
        f"Candidates: latency vs score ({lut['device']}, {lut['regime']['kind']})")
    tracker.stage("score", params={"reused_sublayers": reused},
                  files=[scores_path, scores_path.replace(".json", ".parquet"), figures["cost_vs_score"]])
    figures["sensitivity"] = sensitivity_chart(table, Path(scores_path).with_suffix(".sensitivity.png"),
                                               "Score of skipping (and linear) per block")
    return scores_path, summary, figures


# One worker: tasks share the in-process teacher and the CPU; scale-out swaps the task runner.
@flow(name="unast-compress", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def compress(config: RunConfig) -> dict[str, Any]:
    log = get_run_logger()
    home = str(Path(config.home).resolve())
    tracker = Tracker(Path(home))
    if config.method == "unast-depth":  # UNAST restricted to depth: keep or skip each sublayer
        config = config.model_copy(update={"pool": PoolConfig(ops=["teacher", "identity"], attention=[], mlp=[])})
    budgets = config.budgets()
    check_output_dir(Path(config.output))
    if len(budgets) > 1:
        for budget in budgets:
            check_output_dir(Path(config.output) / budget_name(budget))
    tracker.start(f"{config.method}-{config.preset}-{'+'.join(budget_name(b) for b in budgets)}",
                  config.model_dump(mode="json"))
    wall: dict[str, float] = {}
    device = resolve_device(config.cost.device)  # the target device: timing, training and evaluation run there
    try:
        # Prepare
        with _timed(wall, "prepare"):
            prep = prepare(config.teacher, config.data, config.cost, config.pool, home)
        pool = prep["pool"]
        log.info("teacher %s (%s, %d sublayers), run store %s", prep["source"], prep["model_type"],
                 len(prep["sublayers"]), prep["run_dir"])
        # Cost
        with _timed(wall, "cost"):
            lut_ref = cost_table(prep, config.teacher, pool, config.cost)
        lut = read_json(lut_ref["path"])
        log.info("cost table %s (%s, %s %dx%d)", "reused" if lut_ref["reused"] else "measured", lut["device"],
                 lut["regime"]["kind"], lut["regime"]["batch_size"], lut["regime"]["seq_len"])
        fit = lut.get("calibration", {}).get("latency")
        if fit:
            log.info("latency calibration: measured = %.3f + %.3f x table (%d architectures, largest residual %.3f)",
                     fit["intercept"], fit["slope"], len(fit["points"]), fit["max_abs_residual"])
        tracker.stage("cost", params={"reused": lut_ref["reused"]},
                      metrics={"teacher": lut["teacher"], "fixed": lut["fixed"],
                               **({"calibration": {k: fit[k] for k in ("intercept", "slope", "max_abs_residual")}}
                                  if fit else {})},
                      files=[lut_ref["path"]])
        for budget in budgets:
            check_budget(lut_ref["path"], budget)
        # Capture: validation states (scoring) and calibration states (distillation)
        with _timed(wall, "capture"):
            states = capture_states(prep, config.teacher, "validation", config.score.batch_size)
            calib = capture_states(prep, config.teacher, "calibration", config.score.batch_size, config.distill.seqs)
        log.info("teacher states %s (validation), %s (calibration)", "reused" if states["reused"] else "captured",
                 "reused" if calib["reused"] else "captured")
        tracker.stage("capture", metrics={"teacher_val_loss": states["loss"]},
                      params={"reused": states["reused"] and calib["reused"]})
        searches = config.method in ("unast", "unast-depth") or (
            config.method == "random-init" and config.baseline.architecture is None)
        scores_path, summary, figures = (_distill_and_score(prep, states, calib, config, lut, tracker, log, wall)
                                         if searches else (None, None, {}))
        if len(budgets) > 1:  # marks DIR as a family export before any model lands in it
            write_json(Path(config.output) / "family.json", {"budgets": budgets, "models": []})
        results = []
        for budget in budgets:
            name = budget_name(budget)
            out_dir = Path(config.output) / name if len(budgets) > 1 else Path(config.output)
            model_wall = dict(wall)
            if config.method in ("unast", "unast-depth"):
                plan = _choose_unast(prep, config, budget, name, scores_path, lut_ref["path"], tracker, log, device,
                                     model_wall)
            else:
                with _timed(model_wall, "search"):
                    plan = choose(prep, config, budget, lut, lut_ref["path"], states, calib, scores_path, log)
                tracker.stage(f"{name}/{config.method}", params={"summary": plan["arch"]["summary"]},
                              metrics={"measured_latency": plan["arch"]["measured_ratio"]},
                              dicts={"choice.json": plan["results"]})
            if scores_path:
                plan["results"]["scores_path"] = scores_path
            results.append(_finish_model(prep, config, budget, name, out_dir, plan, summary, figures, tracker, log,
                                         device, model_wall))
        if len(budgets) > 1:
            family = {"budgets": [r["budget"] for r in results], "models": [Path(r["output"]).name for r in results]}
            write_json(Path(config.output) / "family.json", family)
        best = results[0]
        tracker.finish({"models": len(results), "wall_s": wall})
        return best if len(results) == 1 else {**best, "family": results}
    except BaseException:
        tracker.finish({"wall_s": wall}, status="FAILED")
        raise
