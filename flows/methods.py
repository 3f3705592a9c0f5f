"""The comparison methods of `unast run --method`: each picks one architecture for a budget (and its
starting weights); `compress._finish_model` then finetunes, evaluates and exports it exactly as it does
UNAST's choice. Budgets are held the same way: predicted from the (calibrated) cost table where the table
covers the method's operators, and measured against the teacher before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import unmapped

from tasks.baselines import block_importance, scratch_init
from tasks.common import teacher_for
from tasks.cost import measure_architectures
from tasks.distill import distill_candidate
from tasks.search import search
from unast_core.assemble import describe
from unast_core.baselines import (
    DEPTH_CRITERIA,
    measured_depth_plan,
    measured_step,
    removal_order,
    uniform_layers,
    within_budget,
)
from unast_core.config import DistillConfig, RunConfig
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.modeling_unast import SUBLAYER_KINDS
from unast_core.store import content_key

LATENCY_TOLERANCE = 0.02  # every method: a measured ratio may exceed the budget by this much at search time


def _within(budget: dict[str, float], ratios: dict[str, float]) -> bool:
    return within_budget(budget, ratios, LATENCY_TOLERANCE)


def _measure_one(prep: dict, config: RunConfig, layers: list[dict]) -> dict[str, float]:
    """One architecture timed alone against the teacher: {"latency": measured ratio, "params": exact ratio}."""
    costs = measure_architectures(prep, config.teacher, [layers], config.cost)
    return {"latency": costs["latency"][0], "params": costs["params"][0]}


def _plan(config: RunConfig, layers: list[dict], predicted: dict[str, float], measured: float | None, stem: str,
          run_dir: str, extra: dict[str, Any], candidates: dict | None = None, init: str | None = None,
          finetune=None) -> dict[str, Any]:
    arch = {"layers": layers, "summary": describe(layers), "predicted_ratio": predicted, "measured_ratio": measured}
    return {"arch": arch, "candidates": candidates or {}, "init": init, "finetune": finetune or config.finetune,
            "chart": Path(run_dir) / "reports" / f"{stem}.png", "stem": stem,
            "results": {"search_measured_latency_ratio": measured, **extra}}


def choose_depth(prep: dict, config: RunConfig, budget: dict[str, float], lut: dict, states: dict, log) -> dict[str, Any]:
    """ShortGPT / Shortened LLaMA: rank blocks, drop the least important until the budget holds (predicted
    by the table, then measured): blocks go back while the measurement still holds the budget, one more
    block goes while it exceeds it. So each lands on the fewest blocks whose measurement holds the budget."""
    ranked = block_importance(prep, states, config.teacher, config.method, config.score.seqs, config.score.batch_size)
    order = removal_order(ranked["importance"])
    log.info("%s: %s per block %s (%s)", config.method, ranked["criterion"],
             [round(x, 4) for x in ranked["importance"]], "reused" if ranked["reused"] else "measured")

    def measure(plan: dict[str, Any]) -> dict[str, float]:
        return _measure_one(prep, config, plan["layers"])

    def on_step(step: str, removed: int, latency: float) -> None:
        if step == "back":
            log.info("removing %d blocks measures latency %.3f, within the budget: one block goes back", removed, latency)
        else:
            log.info("removing %d blocks measures latency %.3f, over the budget: one more block goes", removed, latency)

    plan, costs = measured_depth_plan(lut, order, budget, measure, LATENCY_TOLERANCE, on_step)
    measured = costs["latency"]
    log.info("%s removes blocks %s: predicted %s, measured latency %.3f", config.method, plan["removed"],
             {k: round(v, 3) for k, v in plan["predicted_ratio"].items()}, measured)
    return _plan(config, plan["layers"], plan["predicted_ratio"], measured,
                 f"{config.method}-{content_key(plan['layers'])}", prep["run_dir"],
                 {"removed_blocks": plan["removed"], "criterion": ranked["criterion"],
                  "block_importance": ranked["importance"]})


def choose_uniform(prep: dict, config: RunConfig, budget: dict[str, float], calib: dict, log) -> dict[str, Any]:
    """Uniform width: the widest of `baseline.widths` whose measured latency (and exact parameters) meet
    the budget (the grid is timed in one loop, then the choice is confirmed width by width, each timed alone
    against the teacher); its narrower heads / MLP channels start from the teacher (importance + least squares, the
    same init UNAST's candidates get, without the layer-wise training)."""
    if "memory" in budget:
        raise UnastError("the uniform method supports latency and params budgets; drop the memory budget")
    model_config = teacher_for(config.teacher).model.config
    widths = sorted(set(config.baseline.widths), reverse=True)
    layer_sets = [uniform_layers(model_config, w) for w in widths]
    costs = measure_architectures(prep, config.teacher, layer_sets, config.cost)
    rows = [{"width": w, "latency": lat, "params": par} for w, lat, par in zip(widths, costs["latency"], costs["params"])]
    log.info("uniform widths (measured latency, params): %s",
             ", ".join(f"{r['width']:g}: {r['latency']:.3f}/{r['params']:.3f}" for r in rows))
    # The grid's widest fit, then each step confirmed by timing that width alone against the teacher: one
    # loop over many widths read width 0.625 at 0.917 where timed alone it read 0.669 (a busy machine).
    start = next((k for k, r in enumerate(rows) if _within(budget, r)), len(rows) - 1)

    def measure(k: int) -> dict[str, float]:
        return _measure_one(prep, config, layer_sets[k])

    def on_step(step: str, k: int, costs: dict[str, float]) -> None:
        log.info("uniform width %g measures latency %.3f alone: %s", widths[k], costs["latency"],
                 "within the budget, trying wider" if step == "back" else "over the budget, trying narrower")

    index, alone = measured_step(len(rows), start, measure, lambda costs: _within(budget, costs), on_step)
    if not _within(budget, alone):
        raise InfeasibleBudget(f"the narrowest uniform width {widths[index]:g} measures latency={alone['latency']:.3f}, "
                               f"params={alone['params']:.3f}; add narrower baseline.widths or raise the budget",
                               {n: alone[n] for n in budget})
    row, layers = {**rows[index], "latency_in_grid": rows[index]["latency"], **alone}, layer_sets[index]
    # teacher init of every replaced sublayer: the distillation task with no training steps
    init_cfg = DistillConfig(**{**config.distill.model_dump(), "steps": 0})
    pairs = [(2 * b + k, layer[kind]) for b, layer in enumerate(layers) for k, kind in enumerate(SUBLAYER_KINDS)
             if layer[kind]["op"] != "teacher"]
    futures = distill_candidate.map(unmapped(prep), unmapped(calib), unmapped(config.teacher), [i for i, _ in pairs],
                                    [spec for _, spec in pairs], unmapped(init_cfg), unmapped("teacher"),
                                    unmapped(config.seed))
    inits = [f.result() for f in futures]
    failed = [r for r in inits if r["status"] != "ok"]
    if failed:
        raise UnastError(f"teacher init failed at {failed[0]['sublayer']}: {failed[0]['error']}")
    log.info("uniform width %g: %s, measured latency %.3f, params %.3f; %d sublayers initialised from the teacher",
             row["width"], describe(layers), row["latency"], row["params"], len(inits))
    return _plan(config, layers, {"params": row["params"]}, row["latency"], f"uniform-{content_key(layers)}",
                 prep["run_dir"], {"width": row["width"], "widths_measured": rows,
                                   "init_nmse": {r["sublayer"]: r["nmse"] for r in inits}},
                 candidates={str(r["index"]): r["weights"] for r in inits})


def _architecture_file(path: Path) -> dict[str, Any]:
    path = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(path.read_text())
        return {"layers": results["layers"], "predicted_ratio": results.get("predicted_ratio") or {},
                "source": str(path)}
    except (OSError, ValueError, KeyError) as exc:
        raise UnastError(f"baseline.architecture: cannot read an architecture from {path} ({exc}); point at the "
                         "results.json of a finished UNAST run") from None


def choose_scratch(prep: dict, config: RunConfig, budget: dict[str, float], scores_path: str | None, lut_path: str,
                   log) -> dict[str, Any]:
    """Training from scratch: UNAST's architecture (from `baseline.architecture`, else this run's best
    search solution) with every weight drawn afresh, trained for the select + finetune steps UNAST spends
    on it, at the paper's LR (a finetune LR is too small for a model that starts from nothing)."""
    if config.baseline.architecture is not None:
        chosen = _architecture_file(Path(config.baseline.architecture))
    else:
        found = search(prep, scores_path, lut_path, budget, config.search)
        best = found["architectures"][0]
        chosen = {"layers": best["layers"], "predicted_ratio": best["predicted_ratio"], "source": found["path"]}
    layers = chosen["layers"]
    costs = measure_architectures(prep, config.teacher, [layers], config.cost)
    init = scratch_init(prep, config.teacher, layers, config.seed)
    steps = config.finetune.steps + config.select.steps * config.search.k
    finetune = config.finetune.model_copy(update={"steps": steps, "lr_max": config.baseline.scratch_lr_max,
                                                   "lr_min": config.baseline.scratch_lr_min})
    log.info("random-init: %s from %s, measured latency %.3f, %d steps from scratch", describe(layers), chosen["source"],
             costs["latency"][0], steps)
    return _plan(config, layers, chosen["predicted_ratio"], costs["latency"][0], f"scratch-{content_key(layers)}",
                 prep["run_dir"], {"architecture_from": chosen["source"]}, init=init, finetune=finetune)


def choose(prep: dict, config: RunConfig, budget: dict[str, float], lut: dict, lut_path: str, states: dict,
           calib: dict, scores_path: str | None, log) -> dict[str, Any]:
    """The architecture and starting weights of a comparison method for one budget."""
    if config.method in DEPTH_CRITERIA:
        return choose_depth(prep, config, budget, lut, states, log)
    if config.method == "uniform":
        return choose_uniform(prep, config, budget, calib, log)
    if config.method == "random-init":
        return choose_scratch(prep, config, budget, scores_path, lut_path, log)
    raise UnastError(f"unknown method {config.method!r}")
