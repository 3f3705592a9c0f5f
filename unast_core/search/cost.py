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

from unast_core.model.adapters import Adapter
from unast_core.model.assemble import layers_from_choice
from unast_core.config import RegimeConfig
from unast_core.search.llama_cpp import gguf_ratios
from unast_core.search.latency import built_variants, interleaved_latency, measure_ratios, regime_inputs, swapped_runs
from unast_core.model.modeling_unast import teacher_dims
from unast_core.model.ops import OpSpec

def build_lut(model: torch.nn.Module, pool: list[dict[str, Any]], regime: RegimeConfig, warmup: int,
              repeats: int, calibration_samples: int = 0, seed: int = 0,
              measure: Callable[[dict[str, dict[int, dict[str, Any]]]], dict[str, float]] | None = None) -> dict[str, Any]:
    """Returns {"costs": {"latency": [[s per candidate] per sublayer], "params": [...]},
    "fixed": {"latency": s, "params": n}, "teacher": {"latency": s, "params": n}, "measured": {...}}.
    A candidate that cannot replace a sublayer of some kind costs 0 there (the search never picks it).
    `measure` times {variant: {sublayer: spec}} in another engine (`llama_cpp.gguf_measure`); default: PyTorch."""
    adapter = Adapter(model)
    device = next(model.parameters()).device
    ids = regime_inputs(regime, model.config.vocab_size, device)
    variants: dict[str, dict[int, dict[str, Any]]] = {"teacher": {}, "all:identity": {
        s.index: {"op": "identity"} for s in adapter.sublayers}}
    names = [OpSpec.of(spec).name for spec in pool]
    for kind in ("attn", "mlp"):
        for spec in [*pool, {"op": "identity"}]:  # identity is the baseline of every difference
            if spec["op"] != "teacher" and OpSpec.of(spec).applies(kind):
                variants[f"{kind}:{OpSpec.of(spec).name}"] = {s.index: spec for s in adapter.sublayers if s.kind == kind}
    if measure is None:
        built = {name: built_variants(adapter, choices) for name, choices in variants.items()}
        measured = interleaved_latency(swapped_runs(adapter, ids, built, regime.kind), warmup, repeats)
    else:
        measured = measure(variants)
    latency = [[_per_sublayer(measured, s.kind, name, adapter.n_blocks) if OpSpec.of(spec).applies(s.kind) else 0.0
                 for spec, name in zip(pool, names)] for s in adapter.sublayers]
    params = [[_params(adapter, s, spec) if OpSpec.of(spec).applies(s.kind) else 0 for spec in pool] for s in adapter.sublayers]
    width = next(model.parameters()).element_size()
    kv = [[_kv_bytes_per_token(spec, s.kind, model.config, width) if OpSpec.of(spec).applies(s.kind) else 0 for spec in pool]
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
    add_size_costs(lut, model)
    if calibration_samples > 0:
        choices = calibration_choices(lut, adapter, calibration_samples, seed)
        table = [predict(lut, c)["latency"] / teacher["latency"] for c in choices]
        if measure is None:
            ratios = measure_ratios(model, [layers_from_choice(c, pool) for c in choices], regime, warmup, repeats)
        else:
            ratios = gguf_ratios(measure, [layers_from_choice(c, pool) for c in choices])
        lut["calibration"]["latency"] = fit_calibration([*table, 1.0], [*ratios, 1.0])
    return lut


def calibration_choices(lut: dict[str, Any], adapter: Adapter, n: int, seed: int) -> list[list[int]]:
    """`n` random architectures, the k-th keeping each teacher sublayer with probability from 0.9 down to
    0.05 and otherwise taking a uniformly random applicable candidate: predicted ratios spread across the
    range the searches land in."""
    rng = random.Random(seed)
    usable = [[j for j, spec in enumerate(lut["pool"]) if j and OpSpec.of(spec).applies(s.kind)] for s in adapter.sublayers]
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


def add_size_costs(lut: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """The `size` cost (Appendix D stored bytes: 16 bits per weight, a compressed candidate's compressed
    linears at their bits or non-zeros) per sublayer and candidate, its fixed part and the teacher's, added
    to `lut` in place (also to a table stored before sizes existed: they need no timing)."""
    adapter = Adapter(model)
    size = [[_size(adapter, s, spec) if OpSpec.of(spec).applies(s.kind) else 0.0 for spec in lut["pool"]]
            for s in adapter.sublayers]
    lut["costs"]["size"] = size
    lut["teacher"]["size"] = 2.0 * adapter.total_params()
    lut["fixed"]["size"] = lut["teacher"]["size"] - sum(row[0] for row in size)
    return lut


def _size(adapter: Adapter, sub: Any, spec: dict[str, Any]) -> float:
    from unast_core.compress.candidates import linears_of, size_bytes

    modules = adapter.build(sub.index, spec)
    params = sum(p.numel() for m in modules.values() for p in m.parameters())
    squeezed = sum(m.weight.numel() for m in linears_of(modules[adapter.family[sub.kind]], spec["linears"]).values()) \
        if spec["op"] == "compressed" else 0
    return size_bytes(params, squeezed, spec)


def _params(adapter: Adapter, sub: Any, spec: dict[str, Any]) -> int:
    modules = adapter.build(sub.index, spec)
    return sum(p.numel() for m in modules.values() for p in m.parameters())


def _per_sublayer(measured: dict[str, float], kind: str, name: str, n_blocks: int) -> float:
    if name == "identity":
        return 0.0
    all_op = measured["teacher"] if name == "teacher" else measured[f"{kind}:{name}"]
    return max(all_op - measured[f"{kind}:identity"], 0.0) / n_blocks


def predict(lut: dict[str, Any], choice: list[int]) -> dict[str, float]:
    """Predicted absolute cost of an architecture (fixed part + chosen candidates)."""
    return {name: lut["fixed"][name] + sum(rows[i][j] for i, j in enumerate(choice))
            for name, rows in lut["costs"].items()}


