"""Reporting around the stages: the distillation summary, the score figures, and one model's export
(checkpoint, figures and results.json in the output directory)."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task

from tasks.evaluate import export
from unast_core.config import RunConfig, budget_name
from unast_core.records import Choice, CostTable, Distilled, DistillReport, Evaluation, Prepared, ScoreTable, Trained, weights_matrix
from unast_core.compress.export import compression_summary
from unast_core.report.card import distill_summary, student_results
from unast_core.report.figures import architecture_chart, cost_score_scatter, scatter_points, sublayer_error_chart
from unast_core.report.findings import sensitivity_chart
from unast_core import faults
from unast_core.report.tolerance import tolerance_chart
from unast_core.store import atomic_path, check_output_dir, copy_tree, read_json, write_json


@task(name="check-outputs")
def check_outputs(config: RunConfig) -> None:
    """Stop before any work when an output directory holds something that is not a UNAST export."""
    check_output_dir(Path(config.output))
    if len(config.budgets()) > 1:
        for budget in config.budgets():
            check_output_dir(Path(config.output) / budget_name(budget))


@task(name="distill-report")
def distill_report(prep: Prepared, calib_dir: str, distilled: list[Distilled]) -> DistillReport:
    """Table 1 and Figure 4 of the paper from the distilled candidates' local errors."""
    rows = [d.row() for d in distilled]
    summary = distill_summary(rows, prep.sublayers)
    figure = sublayer_error_chart(summary["errors"], Path(prep.run_dir) / "reports" / f"errors-{Path(calib_dir).name}.png",
                                  "Local normalized MSE per sublayer (Figure 4)") if rows else None
    return DistillReport(trained=summary["trained"], reused_count=summary["reused"], failed=summary["failed"],
                         errors=summary["errors"], table1=summary["table1"], rows=rows, figure=figure,
                         weights=weights_matrix(prep, distilled),
                         reused=bool(rows) and summary["reused"] == len(rows))


@task(name="score-figures")
def score_figures(scores: ScoreTable, lut: CostTable, distilled: DistillReport | None) -> dict[str, str]:
    """Figure 3 (candidates' latency vs score), the per-block sensitivity chart, and Figure 4 (local errors)."""
    table, costs = read_json(scores.path), read_json(lut.path)
    stem = Path(scores.path).with_suffix("")
    errors = {"sublayer_errors": distilled.figure} if distilled and distilled.figure else {}
    return {**errors, "cost_vs_score": cost_score_scatter(scatter_points(table, costs), f"{stem}.scatter.png",
                                                f"Candidates: latency vs score ({lut.device}, {lut.regime['kind']})"),
            "sensitivity": sensitivity_chart(table, f"{stem}.sensitivity.png", "Score of skipping (and linear) per block"),
            **({"compression_tolerance": tolerance_chart(table, f"{stem}.tolerance.png", "Compressed teacher "
                "sublayers: score per block (Appendix H)")} if any(s["op"] == "compressed" for s in table["pool"]) else {})}


@task(name="export-model")
def export_model(prep: Prepared, config: RunConfig, budget: dict[str, float], choice: Choice, final: Trained,
                 measured: Evaluation, distilled: DistillReport | None, figures: dict[str, str], scores_path: str | None,
                 out_dir: str, run_info: dict) -> dict:
    """Stage 8b: the architecture chart, results.json, and the HF checkpoint, copied into `out_dir`."""
    figures = {**figures, "architecture": architecture_chart(
        choice.arch.layers, prep.dims, choice.chart, f"{config.method} {budget_name(budget)}: {choice.arch.summary}")}
    results = student_results(prep, config, budget, choice, final, measured, distilled, figures, scores_path, out_dir,
                              run_info)
    final_dir = Path(prep.run_dir) / "final" / choice.stem
    results["sample"] = export.fn(prep, final, results, str(final_dir), config.evaluate.generate_tokens).sample
    if final.compression:
        results["compression"] = compression_summary(final.compression, final_dir / "model.safetensors")
    faults.point("export")
    copy_tree(final_dir, Path(out_dir))
    if config.export.gguf or config.export.nemotron_nas:
        from unast_core.report.formats import engine_exports

        results["exports"] = engine_exports(Path(out_dir), config.export)
    for path in figures.values():
        with atomic_path(Path(out_dir) / "figures" / Path(path).name) as tmp:
            shutil.copyfile(path, tmp)
    write_json(Path(out_dir) / "results.json", results)
    return results


@task(name="write-family")
def write_family(output: str, results: list[dict], budgets: list[dict[str, float]]) -> None:
    """DIR/family.json: the budgets of a family and the sub-directory of each model (written first empty,
    so that DIR counts as a family export before any model lands in it)."""
    write_json(Path(output) / "family.json", {"budgets": [r["budget"] for r in results] or budgets,
                                              "models": [Path(r["output"]).name for r in results]})
