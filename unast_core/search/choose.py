"""How each method picks one architecture for a budget, and its starting weights: UNAST (search, hold the
measured budget, short-finetune the K, keep the best) and every baseline, all with one signature

    choose_<method>(budget, lut, config, tools) -> Shortlist

A shortlist is UNAST's K searched architectures (the select stage short-finetunes them and `pick_best`
keeps the best), or the one architecture a baseline settled on. `tools` are what a method may ask of the
pipeline (measure architectures, search, block importance, ...): the choose task binds them to the other
tasks' bodies, and a test binds them to plain functions and checks the decisions with numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from unast_core.config import DistillConfig, RunConfig
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.model.assemble import Layers, describe, layers_from_choice
from unast_core.model.modeling_unast import SUBLAYER_KINDS
from unast_core.records import Architecture, Choice, Distilled, Searched, Shortlist, Trained
from unast_core.search.baselines import DEPTH_CRITERIA, measured_depth_plan, measured_step, removal_order
from unast_core.search.budget import hold_latency_budget, within_budget
from unast_core.store import content_key


@dataclass(frozen=True)
class Tools:
    run_dir: str
    measure: Callable[[list[Layers]], dict[str, list[float]]]  # {"latency": measured, "params": exact} ratios
    search: Callable[[dict[str, float]], Searched]              # raises InfeasibleBudget
    importance: Callable[[str], dict[str, Any]]                 # block importance by method
    uniform_layers: Callable[[list[float]], list[Layers]]
    teacher_init: Callable[[list[tuple[int, dict]]], list[Distilled]]  # (sublayer, spec) -> init, no training
    scratch_init: Callable[[Layers], str]
    log: Callable[[str], None]
    # (architecture, the budget it was searched for) -> (refined architecture, what each step measured)
    refine: Callable[[Architecture, dict[str, float]], tuple[Architecture, dict[str, Any]]] | None = None


def _measured(tools: Tools, found: Searched) -> list[float]:
    return tools.measure([a.layers for a in found.architectures])["latency"]


def choose_unast(budget: dict[str, float], lut: dict[str, Any], config: RunConfig, tools: Tools) -> Shortlist:
    """Stage 5: search K architectures (Eq. 3-4) and hold the measured latency budget; stage 6 then
    short-finetunes each (`pick_best`)."""
    found = tools.search(budget)
    archs = found.architectures
    if "latency" in budget:
        held = hold_latency_budget(budget, config.search.latency_tolerance, found,
                                   [a.predicted_ratio["latency"] for a in archs],
                                   lambda f: _measured(tools, f), tools.search)
        for note in held.notes:
            tools.log(note)
        measured = [a.model_copy(update={"measured_ratio": m}) for a, m in zip(held.found.architectures, held.measured)]
        archs = [measured[k] for k in held.kept]
        found = held.found.model_copy(update={"architectures": measured, "kept": [a.rank for a in archs],
                                              "note": "; ".join(held.notes)})
    for a in archs:
        tools.log(f"architecture {a.rank}: {a.summary} predicted "
                  f"{ {k: round(v, 3) for k, v in a.predicted_ratio.items()} } measured latency "
                  f"{'-' if a.measured_ratio is None else round(a.measured_ratio, 3)}")
    stem = Path(found.path).stem
    choices = [Choice(arch=a, stem=stem, chart=str(Path(found.path).with_suffix(f".arch{a.rank}.png")),
                      candidates=a.weights, finetune=config.finetune,
                      results={"search_measured_latency_ratio": a.measured_ratio}) for a in archs]
    rank = max((a.rank for a in found.architectures), default=-1) + 1
    if config.search.refine_rounds and archs and tools.refine is not None:
        refined = _refined(budget, found, archs[0], config, tools, rank)
        choices += [refined] if refined else []
        rank += 1 if refined else 0
    if config.search.depth_seed:
        seed = _depth_seed(config.search.depth_seed, budget, lut, config, tools, [c.arch.layers for c in choices],
                           rank, found.path)
        choices += [seed] if seed else []
    return Shortlist(choices=choices, select=True, stages={"solutions": found.tracked()})


def _refined(budget: dict[str, float], found: Searched, arch: Architecture, config: RunConfig, tools: Tools,
             rank: int) -> Choice | None:
    """`search.refine_rounds`: the best searched architecture refined in its own context (unast_core.search.refine),
    as one more entry of select's shortlist when it changed and holds the measured latency budget."""
    try:
        refined, facts = tools.refine(arch, found.budget)
    except Exception as exc:  # noqa: BLE001 - an extra for select: the searched architectures stand without it
        tools.log(f"refine failed ({type(exc).__name__}: {exc}); select tries the searched architectures only")
        return None
    steps = sum(step["kept"] for step in facts["rounds"])
    if refined.layers == arch.layers:
        tools.log(f"refine: no step lowered the measured loss of architecture {arch.rank} ({facts['start_loss']:.4f})")
        return None
    loss = facts["loss"]
    refined = refined.model_copy(update={"rank": rank})
    if "latency" in budget:
        # The ILP holds the predicted latency; a refined architecture can measure over it. The kept steps before
        # the last are tried in turn, latest first (a fresh SmolLM2 store: the last of 3 steps measured 0.777 for
        # a 0.75 budget and the whole refine was lost).
        limit = budget["latency"] + config.search.latency_tolerance
        options = [(refined, loss)] + [(a.model_copy(update={"rank": rank}), before)
                                       for a, before in facts.get("earlier", [])]
        for k, (option, option_loss) in enumerate(options):
            measured = tools.measure([option.layers])["latency"][0]
            if measured <= limit:
                refined, loss = option.model_copy(update={"measured_ratio": measured}), option_loss
                steps -= k
                break
            tools.log(f"refine: step {steps - k} ({config.search.refine_metric} {option_loss:.4f}) measured latency "
                      f"{measured:.3f}, over {limit:.3f}: "
                      + ("the step before it next" if k + 1 < len(options) else "no refined architecture joins select"))
        else:
            return None
    tools.log(f"architecture {rank} (architecture {arch.rank} refined, {steps} steps, {config.search.refine_metric} "
              f"{facts['start_loss']:.4f} -> {loss:.4f}): {refined.summary} measured latency "
              f"{'-' if refined.measured_ratio is None else round(refined.measured_ratio, 3)}")
    return Choice(arch=refined, stem=Path(found.path).stem, chart=str(Path(found.path).with_suffix(f".arch{rank}.png")),
                  candidates=refined.weights, finetune=config.finetune,
                  results={"search_measured_latency_ratio": refined.measured_ratio,
                           "refined": {"from_rank": arch.rank, "start_loss": facts["start_loss"], "loss": loss,
                                       "steps_kept": steps, "metric": facts["metric"], "rounds": facts["rounds"]}})


def _depth_seed(method: str, budget: dict[str, float], lut: dict[str, Any], config: RunConfig, tools: Tools,
                searched: list[Layers], rank: int, solutions: str) -> Choice | None:
    """`search.depth_seed`: the depth-pruned architecture `method` (ShortGPT, ...) would settle on for this
    budget, as one more entry of the shortlist that select short-finetunes, so the pick is never worse on
    validation than removing whole blocks. None when no block removal holds the budget or the search found it."""
    try:
        plan, costs, facts = _depth_plan(method, budget, lut, config, tools)
    except InfeasibleBudget as exc:
        tools.log(f"depth seed {method}: {exc}; select tries the searched architectures only")
        return None
    if plan["layers"] in searched:
        return None
    arch = Architecture(rank=rank, layers=plan["layers"], summary=describe(plan["layers"]),
                        predicted_ratio=plan["predicted_ratio"], measured_ratio=costs["latency"])
    tools.log(f"architecture {rank} (depth seed, {method}): {arch.summary} measured latency {costs['latency']:.3f}")
    return Choice(arch=arch, stem=Path(solutions).stem, chart=str(Path(solutions).with_suffix(f".arch{rank}.png")),
                  finetune=config.finetune, results={"search_measured_latency_ratio": costs["latency"],
                                                     "depth_seed": method, **facts})


def pick_best(shortlist: Shortlist, trials: list[Trained], ranked_on: str = "validation") -> Choice:
    """Stage 6: of the short-finetuned architectures, the best validation loss (measured on `ranked_on`: the
    validation split, or data.select_on's text) wins; it goes on from its short-finetuned weights. A
    baseline's single choice passes through."""
    if not shortlist.select:
        return shortlist.choices[0]
    ok = [(t, c) for t, c in zip(trials, shortlist.choices) if t.status == "ok"]
    if not ok:
        raise UnastError("every candidate architecture diverged in the short finetune; lower select.lr_max")
    best, choice = min(ok, key=lambda pair: pair[0].val_loss)
    select = [{"rank": c.arch.rank, "summary": c.arch.summary, "status": t.status, "val_loss": t.val_loss}
              for c, t in zip(shortlist.choices, trials)]
    return choice.model_copy(update={"init": best.weights,
                                      "results": {**choice.results, "select": select, "select_ranked_on": ranked_on}})


def _baseline(config: RunConfig, tools: Tools, layers: Layers, predicted: dict[str, float], measured: float | None,
              stem: str, results: dict[str, Any], **weights: Any) -> Shortlist:
    arch = Architecture(layers=layers, summary=describe(layers), predicted_ratio=predicted, measured_ratio=measured)
    choice = Choice(arch=arch, stem=stem, chart=str(Path(tools.run_dir) / "reports" / f"{stem}.png"),
                    finetune=weights.pop("finetune", config.finetune),
                    results={"search_measured_latency_ratio": measured, **results}, **weights)
    return Shortlist(choices=[choice], stages={config.method: choice.tracked()})


def _one(tools: Tools, layers: Layers) -> dict[str, float]:
    costs = tools.measure([layers])
    return {"latency": costs["latency"][0], "params": costs["params"][0]}


def _depth_plan(method: str, budget: dict[str, float], lut: dict[str, Any], config: RunConfig,
                tools: Tools) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """The blocks `method` ranks least important, removed until the measured budget holds: (plan, its
    measured costs, what results.json records of the choice: the blocks removed and the ranking)."""
    ranked = tools.importance(method)
    order = removal_order(ranked["importance"])
    tools.log(f"{method}: {ranked['criterion']} per block {[round(x, 4) for x in ranked['importance']]}")

    def on_step(step: str, removed: int, latency: float) -> None:
        tools.log(f"removing {removed} blocks measures latency {latency:.3f}, "
                  + ("within the budget: one block goes back" if step == "back" else "over the budget: one more block goes"))

    plan, costs = measured_depth_plan(lut, order, budget, lambda p: _one(tools, p["layers"]),
                                      config.search.latency_tolerance, on_step)
    tools.log(f"{method} removes blocks {plan['removed']}: measured latency {costs['latency']:.3f}")
    return plan, costs, {"removed_blocks": plan["removed"], "criterion": ranked["criterion"],
                         "block_importance": ranked["importance"]}


def choose_depth(budget: dict[str, float], lut: dict[str, Any], config: RunConfig, tools: Tools) -> Shortlist:
    """ShortGPT / Shortened LLaMA: rank blocks, drop the least important until the budget holds (predicted
    by the table, then measured): blocks go back while the measurement still holds the budget, one more
    block goes while it exceeds it. So each lands on the fewest blocks whose measurement holds the budget."""
    plan, costs, facts = _depth_plan(config.method, budget, lut, config, tools)
    return _baseline(config, tools, plan["layers"], plan["predicted_ratio"], costs["latency"],
                     f"{config.method}-{content_key(plan['layers'])}", facts)


def choose_uniform(budget: dict[str, float], lut: dict[str, Any], config: RunConfig, tools: Tools) -> Shortlist:
    """Uniform width: the widest of `baseline.widths` whose measured latency (and exact parameters) meet
    the budget. The grid is timed in one loop, then the choice is confirmed width by width, each timed alone
    against the teacher: one loop over many widths read width 0.625 at 0.917 where, timed alone, it read
    0.669 (a busy machine). Its narrower heads / MLP channels start from the teacher (importance + least
    squares, the init UNAST's candidates get, without the layer-wise training)."""
    if "memory" in budget:
        raise UnastError("the uniform method supports latency and params budgets; drop the memory budget")
    tolerance = config.search.latency_tolerance
    widths = sorted(set(config.baseline.widths), reverse=True)
    layer_sets = tools.uniform_layers(widths)
    costs = tools.measure(layer_sets)
    rows = [{"width": w, "latency": lat, "params": par} for w, lat, par in zip(widths, costs["latency"], costs["params"])]
    tools.log("uniform widths (measured latency/params): "
              + ", ".join(f"{r['width']:g}: {r['latency']:.3f}/{r['params']:.3f}" for r in rows))
    start = next((k for k, r in enumerate(rows) if within_budget(budget, r, tolerance)), len(rows) - 1)
    index, alone = measured_step(len(rows), start, lambda k: _one(tools, layer_sets[k]),
                                 lambda c: within_budget(budget, c, tolerance))
    if not within_budget(budget, alone, tolerance):
        raise InfeasibleBudget(f"the narrowest uniform width {widths[index]:g} measures latency={alone['latency']:.3f}, "
                               f"params={alone['params']:.3f}; add narrower baseline.widths or raise the budget",
                               {n: alone[n] for n in budget})
    row, layers = {**rows[index], "latency_in_grid": rows[index]["latency"], **alone}, layer_sets[index]
    pairs = [(2 * b + k, layer[kind]) for b, layer in enumerate(layers) for k, kind in enumerate(SUBLAYER_KINDS)
             if layer[kind]["op"] != "teacher"]
    inits = tools.teacher_init(pairs)
    failed = [r for r in inits if r.status != "ok"]
    if failed:
        raise UnastError(f"teacher init failed at {failed[0].sublayer}: {failed[0].error}")
    tools.log(f"uniform width {row['width']:g}: {describe(layers)}, measured latency {row['latency']:.3f}, "
              f"params {row['params']:.3f}; {len(inits)} sublayers initialised from the teacher")
    return _baseline(config, tools, layers, {"params": row["params"]}, row["latency"], f"uniform-{content_key(layers)}",
                     {"width": row["width"], "widths_measured": rows,
                      "init_nmse": {r.sublayer: r.metrics.get("nmse") for r in inits}},
                     candidates={str(r.index): r.weights for r in inits})


def teacher_init_config(cfg: DistillConfig) -> DistillConfig:
    """The distillation settings that only initialise a candidate from the teacher (no training steps)."""
    return cfg.model_copy(update={"steps": 0})


def _architecture_file(path: Path) -> dict[str, Any]:
    path = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(path.read_text())
        return {"layers": results["layers"], "predicted_ratio": results.get("predicted_ratio") or {},
                "source": str(path)}
    except (OSError, ValueError, KeyError) as exc:
        raise UnastError(f"baseline.architecture: cannot read an architecture from {path} ({exc}); point at the "
                         "results.json of a finished UNAST run") from None


def choose_scratch(budget: dict[str, float], lut: dict[str, Any], config: RunConfig, tools: Tools) -> Shortlist:
    """Training from scratch: UNAST's architecture (from `baseline.architecture`, else this run's best
    search solution) with every weight drawn afresh, trained for the select + finetune steps UNAST spends
    on it, at the paper's LR (a finetune LR is too small for a model that starts from nothing)."""
    if config.baseline.architecture is not None:
        chosen = _architecture_file(Path(config.baseline.architecture))
    else:
        found = tools.search(budget)
        best = found.architectures[0]
        chosen = {"layers": best.layers, "predicted_ratio": best.predicted_ratio, "source": found.path}
    layers = chosen["layers"]
    measured = _one(tools, layers)["latency"]
    steps = config.finetune.steps + config.select.steps * config.search.k
    finetune = config.finetune.model_copy(update={"steps": steps, "lr_max": config.baseline.scratch_lr_max,
                                                   "lr_min": config.baseline.scratch_lr_min})
    tools.log(f"random-init: {describe(layers)} from {chosen['source']}, measured latency {measured:.3f}, "
              f"{steps} steps from scratch")
    return _baseline(config, tools, layers, chosen["predicted_ratio"], measured, f"scratch-{content_key(layers)}",
                     {"architecture_from": chosen["source"]}, init=tools.scratch_init(layers), finetune=finetune)


def choose_teacher(budget: dict[str, float], lut: dict[str, Any], config: RunConfig, tools: Tools) -> Shortlist:
    """GPTQ / SparseGPT / round-to-nearest on the teacher alone (Table 5): the teacher's architecture and
    weights, no finetune; the compression itself runs after it (`ptq_settings`, tasks.ptq). The budget does
    not steer it: these methods have no latency knob."""
    layers = layers_from_choice([0] * len(lut["costs"]["params"]), lut["pool"])
    cfg = config.ptq_settings()
    tools.log(f"{config.method}: the teacher compressed with {cfg.model_dump(exclude={'method'})}")
    return _baseline(config, tools, layers, {"params": 1.0}, None, f"{config.method}-teacher",
                     {"compression": cfg.model_dump(mode="json")},
                     finetune=config.finetune.model_copy(update={"steps": 0}))


CHOOSERS = {"unast": choose_unast, "gptq": choose_teacher, "sparsegpt": choose_teacher, "rtn": choose_teacher, "unast-depth": choose_unast, "uniform": choose_uniform,
            "random-init": choose_scratch, **{m: choose_depth for m in DEPTH_CRITERIA}}


def choose(budget: dict[str, float], lut: dict[str, Any], config: RunConfig, tools: Tools) -> Shortlist:
    """The architecture and starting weights of `config.method` for one budget."""
    if config.method not in CHOOSERS:
        raise UnastError(f"unknown method {config.method!r}")
    return CHOOSERS[config.method](budget, lut, config, tools)
