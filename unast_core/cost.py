"""Stage 4, cost: the lookup table of each candidate's cost on the target device and regime.

Latency is measured in context, on the whole model, so that it includes everything a real forward
pays: for each kind (attention, MLP) and operator, the model with *every* sublayer of that kind set to
the operator is timed against the teacher, interleaved (median of repeats). Per sublayer,

    latency(kind, op) = (T[all kind = op] - T[all kind = identity]) / n_blocks,   latency(kind, identity) = 0

and the rest of the teacher's time (embedding, final norm, head, framework overhead) is the fixed part,
so the prediction fixed + sum_i latency(i, z_i) is exact for the teacher and the all-skipped extremes
(the fixed part is capped by the directly measured all-skipped model, which noise can otherwise exceed).
The regime is a prefill (batch x prompt) or a decode step (batch, with a KV cache of seq_len tokens).
Parameters and weight bytes are exact per sublayer; KV-cache bytes per token too; "memory" is weights
plus the KV cache at the regime's batch x seq_len tokens.

In between, the sum is a model, not a measurement. So the table also times `calibration_samples` random
architectures spread from mostly-teacher to mostly-replaced, fits measured = intercept + slope * predicted
(least squares, teacher included), and the search budgets and reports the calibrated prediction; the raw
table ratio is kept next to it (SmolLM2-135M on CPU: slope 0.993, intercept -0.004, largest residual 0.012).
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch

from unast_core.adapters import Adapter
from unast_core.assemble import layers_from_choice
from unast_core.config import RegimeConfig
from unast_core.evaluate import colocate, interleaved_latency, regime_inputs, regime_runner
from unast_core.modeling_unast import applies, candidate_name, teacher_dims

# Part of every stored latency's key: tables and measurements taken before the weights of timed variants
# were colocated (see `evaluate.colocate`) are measured afresh instead of reused.
MEASUREMENT = "colocated-1"


def build_lut(model: torch.nn.Module, pool: list[dict[str, Any]], regime: RegimeConfig, warmup: int,
              repeats: int, calibration_samples: int = 0, seed: int = 0) -> dict[str, Any]:
    """Returns {"costs": {"latency": [[s per candidate] per sublayer], "params": [...]},
    "fixed": {"latency": s, "params": n}, "teacher": {"latency": s, "params": n}, "measured": {...}}.
    A candidate that cannot replace a sublayer of some kind costs 0 there (the search never picks it)."""
    adapter = Adapter(model)
    device = next(model.parameters()).device
    ids = regime_inputs(regime, model.config.vocab_size, device)
    variants: dict[str, dict[int, dict[str, Any]]] = {"teacher": {}, "all:identity": {
        s.index: {"op": "identity"} for s in adapter.sublayers}}
    names = [candidate_name(spec) for spec in pool]
    for kind in ("attn", "mlp"):
        for spec in [*pool, {"op": "identity"}]:  # identity is the baseline of every difference
            if spec["op"] != "teacher" and applies(spec, kind):
                variants[f"{kind}:{candidate_name(spec)}"] = {s.index: spec for s in adapter.sublayers if s.kind == kind}
    built = {name: _built(adapter, choices) for name, choices in variants.items()}
    measured = interleaved_latency(_swapped_runs(adapter, ids, built, regime.kind), warmup, repeats)
    latency = [[_per_sublayer(measured, s.kind, name, adapter.n_blocks) if applies(spec, s.kind) else 0.0
                 for spec, name in zip(pool, names)] for s in adapter.sublayers]
    params = [[_params(adapter, s, spec) if applies(spec, s.kind) else 0 for spec in pool] for s in adapter.sublayers]
    width = next(model.parameters()).element_size()
    kv = [[_kv_bytes_per_token(spec, s.kind, model.config, width) if applies(spec, s.kind) else 0 for spec in pool]
          for s in adapter.sublayers]
    tokens = regime.batch_size * regime.seq_len
    costs = {"latency": latency, "params": params,
             "memory": [[p * width + k * tokens for p, k in zip(prow, krow)] for prow, krow in zip(params, kv)]}
    teacher = {"latency": measured["teacher"], "params": adapter.total_params(),
               "memory": adapter.total_params() * width + sum(row[0] for row in kv) * tokens}
    fixed = {name: teacher[name] - sum(row[0] for row in rows) for name, rows in costs.items()}
    # On a noisy machine the per-kind differences can over-count; the fixed part is never more than the
    # model with every sublayer skipped, which is measured directly.
    fixed["latency"] = min(fixed["latency"], measured["all:identity"])
    if fixed["latency"] < 0:
        # Nor less than nothing: skipping attention alone and MLP alone each saved so much that together they
        # would save more than the whole model takes (noise on a tiny or busy model). The teacher's sublayers
        # are scaled down to add up to the teacher, so its prediction stays exact and no cost goes negative.
        scale = teacher["latency"] / sum(row[0] for row in latency)
        costs["latency"] = latency = [[c * scale for c in row] for row in latency]
        fixed["latency"] = 0.0
    lut = {"pool": pool, "names": names, "regime": regime.model_dump(), "device": str(device), "costs": costs,
           "weight_bytes": [[p * width for p in row] for row in params], "kv_bytes_per_token": kv,
           "fixed": fixed, "teacher": teacher, "measured": measured, "calibration": {}}
    if calibration_samples > 0:
        choices = calibration_choices(lut, adapter, calibration_samples, seed)
        table = [predict(lut, c)["latency"] / teacher["latency"] for c in choices]
        ratios = measure_ratios(model, [layers_from_choice(c, pool) for c in choices], regime, warmup, repeats)
        lut["calibration"]["latency"] = fit_calibration([*table, 1.0], [*ratios, 1.0])
    return lut


def calibration_choices(lut: dict[str, Any], adapter: Adapter, n: int, seed: int) -> list[list[int]]:
    """`n` random architectures, the k-th keeping each teacher sublayer with probability from 0.9 down to
    0.05 and otherwise taking a uniformly random applicable candidate: predicted ratios spread across the
    range the searches land in."""
    rng = random.Random(seed)
    usable = [[j for j, spec in enumerate(lut["pool"]) if j and applies(spec, s.kind)] for s in adapter.sublayers]
    keep = [0.9 - 0.85 * k / max(n - 1, 1) for k in range(n)]
    return [[0 if not options or rng.random() < p else rng.choice(options) for options in usable] for p in keep]


def fit_calibration(table: list[float], measured: list[float]) -> dict[str, Any]:
    """Least-squares line measured = intercept + slope * table, with its points and largest residual.
    A fit that does not increase (too few or too noisy points) falls back to the identity."""
    n = len(table)
    mean_t, mean_m = sum(table) / n, sum(measured) / n
    var = sum((t - mean_t) ** 2 for t in table)
    slope = sum((t - mean_t) * (m - mean_m) for t, m in zip(table, measured)) / var if var > 0 else 1.0
    intercept = mean_m - slope * mean_t
    if slope <= 0:
        slope, intercept = 1.0, 0.0
    residual = max(abs(m - (intercept + slope * t)) for t, m in zip(table, measured))
    return {"intercept": intercept, "slope": slope, "max_abs_residual": residual,
            "points": [[round(t, 4), round(m, 4)] for t, m in zip(table, measured)]}


def calibrated_ratio(lut: dict[str, Any], name: str, table_ratio: float) -> float:
    """The table's predicted fraction of the teacher's cost, corrected by the measured calibration."""
    fit = lut.get("calibration", {}).get(name)
    return fit["intercept"] + fit["slope"] * table_ratio if fit else table_ratio


def table_fraction(lut: dict[str, Any], name: str, fraction: float) -> float:
    """The table ratio whose calibrated value is `fraction` (the inverse of `calibrated_ratio`)."""
    fit = lut.get("calibration", {}).get(name)
    return (fraction - fit["intercept"]) / fit["slope"] if fit else fraction


def _kv_bytes_per_token(spec: dict[str, Any], kind: str, config: Any, width: int) -> int:
    """KV-cache bytes one token adds at this sublayer: keys + values of its KV heads; a replaced attention
    keeps a one-number placeholder per token (so the cache length stays right); MLPs keep nothing."""
    if kind != "attn":
        return 0
    if spec["op"] == "teacher":
        dims = teacher_dims(config)
        return 2 * dims["kv_heads"] * dims["head_dim"] * width
    if spec["op"] == "attention":
        return 2 * spec["kv_heads"] * spec["head_dim"] * width
    return 2 * width


def architecture_params(model: torch.nn.Module, layers: list[dict[str, Any]]) -> int:
    """Exact parameter count of the teacher with its sublayers replaced as `layers` says."""
    adapter = Adapter(model)
    total = adapter.total_params()
    for sub in adapter.sublayers:
        spec = layers[sub.block][sub.kind]
        if spec["op"] != "teacher":
            total += _params(adapter, sub, spec) - adapter.sublayer_params(sub)
    return total


def _params(adapter: Adapter, sub: Any, spec: dict[str, Any]) -> int:
    modules = adapter.build(sub.index, spec)
    return sum(p.numel() for m in modules.values() for p in m.parameters())


def _swapped_runs(adapter: Adapter, ids: torch.Tensor, variants: dict[str, dict[int, dict[str, torch.nn.Module]]],
                  kind: str) -> dict[str, Callable[[], None]]:
    """Zero-argument callables, one per variant: one unit of the regime (prefill, or a decode step) of the
    adapter's model with the variant's prebuilt {sublayer: {attribute: module}} swapped in. Any KV cache is
    built once, outside the timed calls, and the model's and the replacements' weights are re-placed side
    by side in memory (`colocate`) so that no variant is timed on faster memory than another."""
    colocate(adapter.model, *(torch.nn.ModuleList(m for _, parts in sorted(built.items()) for m in parts.values())
                              for built in variants.values()))

    def runner(built: dict[int, dict[str, torch.nn.Module]]) -> Callable[[], None]:
        with adapter.installed(built):
            step = regime_runner(adapter.model, ids, kind)

        def run() -> None:
            with adapter.installed(built):
                step()
        return run
    return {name: runner(built) for name, built in variants.items()}


def _built(adapter: Adapter, choices: dict[int, dict[str, Any]]) -> dict[int, dict[str, torch.nn.Module]]:
    return {index: adapter.build(index, spec) for index, spec in choices.items()}


def _per_sublayer(measured: dict[str, float], kind: str, name: str, n_blocks: int) -> float:
    if name == "identity":
        return 0.0
    all_op = measured["teacher"] if name == "teacher" else measured[f"{kind}:{name}"]
    return max(all_op - measured[f"{kind}:identity"], 0.0) / n_blocks


def predict(lut: dict[str, Any], choice: list[int]) -> dict[str, float]:
    """Predicted absolute cost of an architecture (fixed part + chosen candidates)."""
    return {name: lut["fixed"][name] + sum(rows[i][j] for i, j in enumerate(choice))
            for name, rows in lut["costs"].items()}


def measure_ratios(model: torch.nn.Module, layer_sets: list[list[dict[str, Any]]], regime: RegimeConfig, warmup: int,
                   repeats: int) -> list[float]:
    """Measured latency of each architecture (the teacher with its sublayers swapped) over the teacher's,
    all timed interleaved in one loop: the check that a prediction from the table holds."""
    adapter = Adapter(model)
    ids = regime_inputs(regime, model.config.vocab_size, next(model.parameters()).device)

    def choices(layers: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        return {s.index: layers[s.block][s.kind] for s in adapter.sublayers if layers[s.block][s.kind]["op"] != "teacher"}

    variants = {"teacher": {}, **{f"arch{k}": _built(adapter, choices(layers)) for k, layers in enumerate(layer_sets)}}
    medians = interleaved_latency(_swapped_runs(adapter, ids, variants, regime.kind), warmup, repeats)
    return [medians[f"arch{k}"] / medians["teacher"] for k in range(len(layer_sets))]


def student_latency(teacher: torch.nn.Module, student: torch.nn.Module, layers: list[dict[str, Any]],
                    regime: RegimeConfig, warmup: int, repeats: int) -> dict[str, float]:
    """A built student's latency against the teacher's, by the procedure of the table and the architecture
    check: the student's own (trained) modules of every replaced sublayer installed in the teacher, timed
    interleaved with the teacher, weights colocated. Kept sublayers cost what the teacher's do (same shapes),
    so this is the student's computation; it leaves out where a separately built model's memory happens to
    sit, which on a virtual machine moved readings by up to 0.1 (see `evaluate.colocate`)."""
    medians = students_latency(teacher, {"student": (student, layers)}, regime, warmup, repeats)
    return {"teacher_s": medians["teacher"], "student_s": medians["student"],
            "latency_ratio": medians["student"] / medians["teacher"]}


def students_latency(teacher: torch.nn.Module, students: dict[str, tuple[torch.nn.Module, list[dict[str, Any]]]],
                     regime: RegimeConfig, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of the teacher ("teacher") and of each student {name: (its decoder, its layers)}, all
    timed in one interleaved loop as in `student_latency`: the side-by-side reading of several models."""
    if "teacher" in students:
        raise ValueError("'teacher' names the reference timing; rename that student")
    adapter = Adapter(teacher)
    variants: dict[str, dict[int, dict[str, torch.nn.Module]]] = {"teacher": {}}
    for name, (student, layers) in students.items():
        own = Adapter(student)
        variants[name] = {s.index: own.modules_of(own.sublayers[s.index]) for s in adapter.sublayers
                          if layers[s.block][s.kind]["op"] != "teacher"}
    ids = regime_inputs(regime, teacher.config.vocab_size, next(teacher.parameters()).device)
    return interleaved_latency(_swapped_runs(adapter, ids, variants, regime.kind), warmup, repeats)


def corrected_budget(budget: dict[str, float], predicted: list[float], measured: list[float]) -> dict[str, float]:
    """Scale the latency budget by the median measured/predicted ratio, so that a systematic
    under-prediction of the table is paid for in the search instead of in a missed budget."""
    factor = sorted(m / p for m, p in zip(measured, predicted))[len(measured) // 2]
    return {**budget, "latency": budget["latency"] / max(factor, 1.0)}
