"""Stage 4, cost: the lookup table of each candidate's cost on the target device and regime.

Latency is measured in context, on the whole model, so that it includes everything a real forward
pays: for each kind (attention, MLP) and operator, the model with *every* sublayer of that kind set to
the operator is timed against the teacher, interleaved (median of repeats). Per sublayer,

    latency(kind, op) = (T[all kind = op] - T[all kind = identity]) / n_blocks,   latency(kind, identity) = 0

and the rest of the teacher's time (embedding, final norm, head, framework overhead) is the fixed part,
so the prediction fixed + sum_i latency(i, z_i) is exact for the teacher and the all-skipped extremes.
Parameters are counted exactly per sublayer.
"""

from __future__ import annotations

from typing import Any

import torch

from unast_core.adapters import Adapter
from unast_core.config import RegimeConfig
from unast_core.evaluate import interleaved_latency, prefill, regime_inputs


def build_lut(model: torch.nn.Module, pool: list[str], regime: RegimeConfig, warmup: int, repeats: int) -> dict[str, Any]:
    """Returns {"costs": {"latency": [[s per candidate] per sublayer], "params": [...]},
    "fixed": {"latency": s, "params": n}, "teacher": {"latency": s, "params": n}, "measured": {...}}."""
    adapter = Adapter(model)
    device = next(model.parameters()).device
    ids = regime_inputs(regime, model.config.vocab_size, device)
    variants: dict[str, dict[int, dict[str, str]]] = {"teacher": {}}
    for kind in ("attn", "mlp"):
        for op in dict.fromkeys([*pool, "identity"]):  # identity is the baseline of every difference
            if op != "teacher":
                variants[f"{kind}:{op}"] = {s.index: {"op": op} for s in adapter.sublayers if s.kind == kind}

    measured = interleaved_latency({name: _swapped_prefill(adapter, ids, c) for name, c in variants.items()},
                                   warmup, repeats)
    per_op = {kind: {op: _per_sublayer(measured, kind, op, adapter.n_blocks) for op in pool} for kind in ("attn", "mlp")}
    latency = [[per_op[s.kind][op] for op in pool] for s in adapter.sublayers]
    params = [[adapter.sublayer_params(s) if op == "teacher" else 0 for op in pool] for s in adapter.sublayers]
    teacher = {"latency": measured["teacher"], "params": adapter.total_params()}
    fixed = {"latency": teacher["latency"] - sum(row[0] for row in latency),
             "params": teacher["params"] - sum(row[0] for row in params)}
    return {"pool": pool, "regime": regime.model_dump(), "device": str(device), "costs": {"latency": latency, "params": params},
            "fixed": fixed, "teacher": teacher, "measured": measured}


def _swapped_prefill(adapter: Adapter, ids: torch.Tensor, choices: dict[int, dict[str, Any]]):
    """A zero-argument callable: one prefill of the adapter's model with `choices` swapped in."""
    def run() -> None:
        with adapter.swapped(choices):
            prefill(adapter.model, ids)
    return run


def _per_sublayer(measured: dict[str, float], kind: str, op: str, n_blocks: int) -> float:
    if op == "identity":
        return 0.0
    all_op = measured["teacher"] if op == "teacher" else measured[f"{kind}:{op}"]
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

    variants = {"teacher": _swapped_prefill(adapter, ids, {})}
    variants.update({f"arch{k}": _swapped_prefill(adapter, ids, choices(layers)) for k, layers in enumerate(layer_sets)})
    medians = interleaved_latency(variants, warmup, repeats)
    return [medians[f"arch{k}"] / medians["teacher"] for k in range(len(layer_sets))]


def corrected_budget(budget: dict[str, float], predicted: list[float], measured: list[float]) -> dict[str, float]:
    """Scale the latency budget by the median measured/predicted ratio, so that a systematic
    under-prediction of the table is paid for in the search instead of in a missed budget."""
    factor = sorted(m / p for m, p in zip(measured, predicted))[len(measured) // 2]
    return {**budget, "latency": budget["latency"] / max(factor, 1.0)}
