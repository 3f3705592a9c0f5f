"""The comparison methods' core: block importance, depth plans, uniform widths, training from scratch."""

import math

import pytest
import torch

from tests.conftest import tiny_model
from unast_core.train.activations import capture
from unast_core.model.adapters import Adapter
from unast_core.model.assemble import build_student
from unast_core.search.baselines import (
    block_influence,
    depth_layers,
    depth_plan,
    loss_without_block,
    measured_depth_plan,
    measured_step,
    removal_order,
    scratch_student,
    uniform_layers,
)
from unast_core.errors import InfeasibleBudget, UnastError
from unast_core.train.losses import lm_loss

POOL = [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"}]


def _tokens(n=4, seq=16, vocab=97, seed=0):
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_block_influence_equals_the_cosine_definition(tmp_path):
    model = tiny_model("llama")
    tokens = _tokens()
    capture(model, tokens, tmp_path / "v", batch_size=2)
    influence = block_influence(tmp_path / "v", 3)
    with torch.no_grad():
        states = model(tokens, output_hidden_states=True, use_cache=False).hidden_states
    # hidden_states[b] enters block b (the last one is after the final norm, so compare blocks 0 and 1)
    for b in range(2):
        cos = torch.nn.functional.cosine_similarity(states[b].double(), states[b + 1].double(), dim=-1).mean().item()
        assert influence[b] == pytest.approx(1 - cos, abs=1e-5)
    assert all(0 <= x <= 2 for x in influence)


def test_loss_without_block_equals_the_naive_forward(tmp_path):
    model = tiny_model("qwen2")
    tokens = _tokens()
    capture(model, tokens, tmp_path / "v", batch_size=2)
    losses = loss_without_block(model, tokens, tmp_path / "v", batch_size=2)
    adapter = Adapter(model)
    for b in range(3):
        with adapter.swapped({2 * b: {"op": "identity"}, 2 * b + 1: {"op": "identity"}}):
            assert losses[b] == pytest.approx(lm_loss(model, tokens, 2), rel=1e-5)
    assert len(set(round(x, 6) for x in losses)) == 3


def test_removal_order_least_important_first_and_nan_last():
    assert removal_order([0.3, 0.1, math.nan, 0.2]) == [1, 3, 0, 2]


def _lut(n_blocks=4):
    # per block: attention 1.0 s, MLP 2.0 s; fixed 2.0 s; teacher 14 s. Params: attention 10, MLP 20, fixed 20.
    latency = [[1.0, 0.0, 0.5], [2.0, 0.0, 0.5]] * n_blocks
    params = [[10, 0, 5], [20, 0, 5]] * n_blocks
    return {"pool": POOL, "costs": {"latency": latency, "params": params}, "fixed": {"latency": 2.0, "params": 20},
            "teacher": {"latency": 2.0 + 3.0 * n_blocks, "params": 20 + 30 * n_blocks}}


def test_depth_plan_removes_least_important_blocks_until_the_budget_holds():
    lut = _lut()
    order = [2, 0, 3, 1]
    plan = depth_plan(lut, order, {"latency": 0.6})  # 14 s -> 8.4 s: two blocks out (8 s)
    assert plan["removed"] == [0, 2] and plan["predicted_ratio"]["latency"] == pytest.approx(8 / 14)
    assert [layer["attn"]["op"] for layer in plan["layers"]] == ["identity", "teacher", "identity", "teacher"]
    assert all(layer["attn"] == layer["mlp"] for layer in plan["layers"])  # whole blocks
    assert depth_plan(lut, order, {"latency": 0.6}, start=3)["removed"] == [0, 2, 3]  # at least `start`
    assert depth_plan(lut, order, {"latency": 0.6, "params": 0.5})["removed"] == [0, 2, 3]  # 140 -> 70 params
    # with a calibration saying the table over-predicts by 0.1, one block fewer is needed
    calibrated = {**lut, "calibration": {"latency": {"intercept": -0.1, "slope": 1.0}}}
    assert depth_plan(calibrated, order, {"latency": 0.7})["removed"] == [2]
    assert depth_plan(lut, order, {"latency": 0.7})["removed"] == [0, 2]
    with pytest.raises(InfeasibleBudget, match="removing every block reaches only latency=0.143"):
        depth_plan(lut, order, {"latency": 0.1})
    with pytest.raises(UnastError, match="identity"):
        depth_plan({**lut, "pool": [{"op": "teacher"}, {"op": "linear"}]}, order, {"latency": 0.5})


def test_uniform_layers_share_one_width():
    model = tiny_model("llama")  # 4 query heads / 2 KV heads, MLP 48
    half = uniform_layers(model.config, 0.5)
    assert len(half) == 3 and all(layer == half[0] for layer in half)
    assert half[0]["attn"] == {"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 8}
    assert half[0]["mlp"] == {"op": "mlp", "hidden": 24}
    wide = uniform_layers(model.config, 0.9)  # rounds to both KV groups: attention stays the teacher's
    assert wide[0]["attn"] == {"op": "teacher"} and wide[0]["mlp"] == {"op": "mlp", "hidden": 43}
    student = build_student(model, half)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in model.parameters())
    with pytest.raises(UnastError, match="uniform width"):
        uniform_layers(model.config, 1.0)


def test_scratch_student_copies_nothing_from_the_teacher():
    teacher = tiny_model("llama", seed=3)  # not the scratch seed: equal draws would look copied
    layers = uniform_layers(teacher.config, 0.5)
    scratch = scratch_student(teacher, layers, seed=0)
    again = scratch_student(teacher, layers, seed=0)
    warm = build_student(teacher, layers)
    state, warm_state = scratch.state_dict(), warm.state_dict()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())  # seeded
    embed = next(k for k in state if "embed_tokens" in k)
    assert not torch.equal(state[embed], warm_state[embed])
    ids = _tokens(1, 8)
    with torch.no_grad():
        assert torch.isfinite(scratch(ids).logits).all()


def test_measured_depth_plan_lands_on_the_fewest_blocks_whose_measurement_holds():
    lut, order = _lut(), [2, 0, 3, 1]
    assert depth_layers(lut, order, 3)["removed"] == [0, 2, 3]  # exactly that many, whatever the budget
    steps = []

    def measured(offset):  # the measurement = the table's prediction + offset, counting calls
        def measure(plan):
            steps.append(len(plan["removed"]))
            return {"latency": plan["predicted_ratio"]["latency"] + offset, "params": plan["predicted_ratio"]["params"]}
        return measure

    # the table predicts 2 blocks (8/14 = 0.571 <= 0.6); measured 0.15 lower, 1 block (0.786 - 0.15) also holds
    plan, costs = measured_depth_plan(lut, order, {"latency": 0.64}, measured(-0.15), 0.02)
    assert plan["removed"] == [2] and costs["latency"] == pytest.approx(11 / 14 - 0.15) and steps == [2, 1]
    # never back to no block removed (the teacher), whatever a noisy measurement says
    assert measured_depth_plan(lut, order, {"latency": 0.64}, measured(-0.5), 0.02)[0]["removed"] == [2]
    # measured 0.1 higher: 2 blocks measure 0.671 > 0.62, 3 blocks (0.357 + 0.1) hold
    steps.clear()
    plan, _ = measured_depth_plan(lut, order, {"latency": 0.6}, measured(0.1), 0.02)
    assert plan["removed"] == [0, 2, 3] and steps == [2, 3]
    # exact: the prediction holds and one block fewer does not (tolerance 0.02 < 0.214)
    steps.clear()
    assert measured_depth_plan(lut, order, {"latency": 0.6}, measured(0.0), 0.02)[0]["removed"] == [0, 2]
    # a params budget is held on the measured (exact) parameters too
    assert measured_depth_plan(lut, order, {"latency": 0.9, "params": 0.5}, measured(-0.5), 0.02)[0]["removed"] == [0, 2, 3]


def test_measured_step_finds_the_most_expensive_plan_whose_measurement_holds():
    latency = [0.95, 0.8, 0.7, 0.6, 0.4]  # plans from the most expensive to the cheapest (measured)
    calls, steps = [], []

    def measure(k):
        calls.append(k)
        return {"latency": latency[k]}

    def holds(costs):
        return costs["latency"] <= 0.72

    # predicted plan 3 holds: step back to 2 (holds), 1 does not
    assert measured_step(5, 3, measure, holds, lambda step, k, c: steps.append((step, k))) == (2, {"latency": 0.7})
    assert calls == [3, 2, 1] and steps == [("back", 2)]
    # predicted plan 0 does not hold: narrower until one holds
    calls.clear(), steps.clear()
    assert measured_step(5, 0, measure, holds, lambda step, k, c: steps.append((step, k)))[0] == 2
    assert calls == [0, 1, 2] and steps == [("more", 0), ("more", 1)]
    # nothing holds: the cheapest plan comes back with its (failing) costs; a start out of range is clamped
    assert measured_step(5, 9, measure, lambda c: c["latency"] < 0.1) == (4, {"latency": 0.4})
    assert measured_step(5, -1, measure, lambda c: True) == (0, {"latency": 0.95})
