"""The methods UNAST is compared with, on the same teacher, data, cost table and finetune.

- Depth pruning removes whole blocks (attention and MLP both skipped), least important first, until the
  budget holds. Importance is Block Influence (ShortGPT: 1 - mean cosine similarity between the residual
  state entering and leaving the block) or the validation loss of the model without that one block
  (Shortened LLaMA's perplexity criterion; the higher the loss without it, the more the block matters).
  Both are read from the stored teacher states, so ranking all blocks costs one pass per block from its
  own input state onward.
- Uniform width pruning keeps the same share of KV groups (with all their query heads) and of MLP
  channels in every block (as Minitron / LLM-Pruner do), picked by importance from the teacher.
- Training from scratch draws every weight of a given architecture afresh.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from unast_core.train.activations import load_boundary
from unast_core.model.adapters import Adapter
from unast_core.model.assemble import Layers, layers_from_choice, student_config
from unast_core.config import AttentionCandidate
from unast_core.search.budget import within_budget
from unast_core.search.cost import calibrated_ratio, predict
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.model.modeling_unast import SUBLAYER_KINDS, UnastForCausalLM, teacher_dims
from unast_core.model.operators import attention_spec
from unast_core.search.scoring import block_loss

DEPTH_CRITERIA = {"shortgpt": "block influence", "shortened-llama": "validation loss without the block"}


@torch.inference_mode()
def block_influence(states_dir: Path, n_blocks: int, rows: int | None = None) -> list[float]:
    """ShortGPT's BI per block: 1 - mean over tokens (of the first `rows` sequences) of cos(state in, state out)."""
    influence = []
    entering = load_boundary(states_dir, 0)[:rows].double()
    for b in range(n_blocks):
        leaving = load_boundary(states_dir, 2 * b + 2)[:rows].double()
        cos = nn.functional.cosine_similarity(entering, leaving, dim=-1)
        influence.append(1.0 - cos.mean().item())
        entering = leaving
    return influence


def loss_without_block(model: nn.Module, tokens: torch.Tensor, states_dir: Path, batch_size: int,
                       on_block: Callable[[int, float], None] | None = None) -> list[float]:
    """Shortened LLaMA's criterion: validation LM loss (log-perplexity) of the teacher without block b,
    run from the stored state entering b."""
    adapter = Adapter(model)
    losses = []
    for b in range(adapter.n_blocks):
        skip = {s.index: {"op": "identity"} for s in adapter.sublayers if s.block == b}
        losses.append(block_loss(adapter, b, skip, tokens, states_dir, batch_size))
        if on_block:
            on_block(b, losses[-1])
    return losses


def removal_order(importance: list[float]) -> list[int]:
    """Blocks from least to most important; NaN (a failed measurement) counts as most important."""
    return sorted(range(len(importance)), key=lambda b: (math.isnan(importance[b]), importance[b], b))


def depth_choice(lut: dict[str, Any], order: list[int], removed: int) -> list[int]:
    """Pool indices per sublayer with the first `removed` blocks of `order` skipped."""
    skip = lut["pool"].index({"op": "identity"})
    gone = set(order[:removed])
    return [skip if i // 2 in gone else 0 for i in range(len(lut["costs"]["params"]))]


def depth_layers(lut: dict[str, Any], order: list[int], removed: int) -> dict[str, Any]:
    """The first `removed` blocks of `order` taken out: {"removed", "layers", "predicted_ratio"} (calibrated)."""
    choice = depth_choice(lut, order, removed)
    predicted = predict(lut, choice)
    return {"removed": sorted(order[:removed]), "layers": layers_from_choice(choice, lut["pool"]),
            "predicted_ratio": {n: calibrated_ratio(lut, n, predicted[n] / lut["teacher"][n]) for n in predicted}}


def depth_plan(lut: dict[str, Any], order: list[int], budget: dict[str, float], start: int = 0) -> dict[str, Any]:
    """Remove blocks in `order` (at least `start`) until every budgeted cost, as predicted by the
    (calibrated) table, is within its fraction of the teacher's."""
    if {"op": "identity"} not in lut["pool"]:
        raise UnastError("depth pruning needs 'identity' in pool.ops")

    for removed in range(start, len(order) + 1):
        plan = depth_layers(lut, order, removed)
        if within_budget(budget, plan["predicted_ratio"], 0.0) and set(budget) <= set(plan["predicted_ratio"]):
            return plan
    smallest = depth_layers(lut, order, len(order))["predicted_ratio"]
    raise InfeasibleBudget(f"removing every block reaches only {', '.join(f'{n}={smallest[n]:.3f}' for n in budget)}; "
                           "raise the budget", {n: smallest[n] for n in budget})


def measured_step(count: int, start: int, measure: Callable[[int], dict[str, float]], holds: Callable[[dict[str, float]], bool],
                  on_step: Callable[[str, int, dict[str, float]], None] | None = None) -> tuple[int, dict[str, float]]:
    """Plans 0..count-1 ordered from the most expensive to the cheapest; from plan `start` (a prediction),
    the most expensive plan whose *measured* costs hold: step to more expensive plans while their
    measurement holds, to cheaper ones while it does not. `on_step("back" | "more", index, costs)` reports
    each step. Returns (index, its measured costs); the cheapest plan when none holds."""
    index = min(max(start, 0), count - 1)
    costs = measure(index)
    if holds(costs):
        while index > 0:
            dearer = measure(index - 1)
            if not holds(dearer):
                break
            index, costs = index - 1, dearer
            if on_step:
                on_step("back", index, costs)
    while not holds(costs) and index < count - 1:
        if on_step:
            on_step("more", index, costs)
        index += 1
        costs = measure(index)
    return index, costs


def measured_depth_plan(lut: dict[str, Any], order: list[int], budget: dict[str, float],
                        measure: Callable[[dict[str, Any]], dict[str, float]], latency_tolerance: float,
                        on_step: Callable[[str, int, float], None] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """The fewest blocks of `order` whose *measured* costs (`measure(plan)` -> {"latency", "params"}) hold the
    budget (latency within `latency_tolerance`): start from the table's plan, put blocks back (the last
    removed first) while the measurement holds, remove more while it does not. The table's calibration line
    is fitted on mixed architectures and can be off for whole blocks in either direction. At least one block
    goes: removing none is the teacher, whose ratio is 1 by definition (a noisy measurement of it can come
    in under the budget on a tiny model)."""
    start = len(depth_plan(lut, order, budget)["removed"])
    # plan k removes k + 1 blocks: from the most expensive to the cheapest
    index, costs = measured_step(len(order), start - 1, lambda k: measure(depth_layers(lut, order, k + 1)),
                                 lambda costs: within_budget(budget, costs, latency_tolerance),
                                 (lambda step, k, costs: on_step(step, k + 1, costs["latency"])) if on_step else None)
    return depth_layers(lut, order, index + 1), costs


def uniform_layers(config: Any, fraction: float) -> Layers:
    """Every block with the same share `fraction` of KV groups (all their query heads) and MLP channels;
    a share that rounds to the teacher's size keeps the teacher's sublayer."""
    if not 0 < fraction < 1:
        raise UnastError(f"uniform width {fraction} must be in (0, 1)")
    dims = teacher_dims(config)
    try:
        attn = attention_spec(AttentionCandidate(heads=fraction), config, "baseline.widths")
    except UnastError:  # rounds to the teacher's own attention
        attn = {"op": "teacher"}
    hidden = max(1, round(fraction * dims["hidden"]))
    mlp = {"op": "mlp", "hidden": hidden} if hidden < dims["hidden"] else {"op": "teacher"}
    return [dict(zip(SUBLAYER_KINDS, (dict(attn), dict(mlp)))) for _ in range(config.num_hidden_layers)]


def scratch_student(teacher: nn.Module, layers: Layers, seed: int) -> UnastForCausalLM:
    """The architecture `layers` with every weight drawn afresh by the family's own initialisation
    (training from scratch): nothing is copied from the teacher."""
    torch.manual_seed(seed)
    student = UnastForCausalLM(student_config(teacher.config, layers))
    student.student.config._attn_implementation = teacher.config._attn_implementation
    return student.to(dtype=next(teacher.parameters()).dtype)
