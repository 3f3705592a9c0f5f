"""UNAST's shortlist with a depth seed: the core's decision bound to plain functions (no model)."""

import pytest

from unast_core.config import RunConfig
from unast_core.errors import InfeasibleBudget
from unast_core.model.assemble import describe
from unast_core.records import Architecture, Searched
from unast_core.search.choose import Tools, choose_depth, choose_unast

POOL = [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"}]
BLOCKS = 4


def _lut():
    # per block: attention 1 s / 10 params, MLP 2 s / 20 params; 2 s and 20 params outside the blocks
    return {"pool": POOL, "costs": {"latency": [[1.0, 0.0, 0.5], [2.0, 0.0, 0.5]] * BLOCKS,
                                    "params": [[10, 0, 5], [20, 0, 5]] * BLOCKS},
            "fixed": {"latency": 2.0, "params": 20}, "teacher": {"latency": 2.0 + 3.0 * BLOCKS, "params": 20 + 30 * BLOCKS}}


def _tools(tmp_path, searched_layers, logs):
    def measure(layer_sets):  # exact: each whole block removed saves 3 s and 30 params
        kept = [sum(layer["attn"]["op"] != "identity" for layer in layers) for layers in layer_sets]
        return {"latency": [(2 + 3 * k) / 14 for k in kept], "params": [(20 + 30 * k) / 140 for k in kept]}

    def search(budget):
        arch = Architecture(rank=0, layers=searched_layers, summary=describe(searched_layers), weights={"1": "w.safetensors"})
        return Searched(path=str(tmp_path / "solutions.json"), budget=budget, architectures=[arch])

    def unused(*_):
        raise AssertionError("not a tool UNAST's shortlist uses")

    return Tools(run_dir=str(tmp_path), measure=measure, search=search,
                 importance=lambda method: {"importance": [0.3, 0.9, 0.1, 0.5], "criterion": "block influence"},
                 uniform_layers=unused, teacher_init=unused, scratch_init=unused, log=logs.append)


LINEAR_MLPS = [{"attn": {"op": "teacher"}, "mlp": {"op": "linear"}} for _ in range(BLOCKS)]


def _config(seed):
    config = RunConfig()
    return config.model_copy(update={"search": config.search.model_copy(update={"depth_seed": seed})})


def test_the_depth_seed_joins_the_searched_architectures_in_select(tmp_path):
    logs = []
    plain = choose_unast({"params": 0.6}, _lut(), _config(None), _tools(tmp_path, LINEAR_MLPS, logs))
    assert plain.select and [c.arch.summary for c in plain.choices] == [describe(LINEAR_MLPS)]
    short = choose_unast({"params": 0.6}, _lut(), _config("shortgpt"), _tools(tmp_path, LINEAR_MLPS, logs))
    assert len(short.choices) == 2 and short.choices[0] == plain.choices[0]
    seed = short.choices[1]
    # least important blocks first (2, then 0): two go for 80 of 140 params <= 0.6
    assert seed.results["depth_seed"] == "shortgpt" and seed.results["removed_blocks"] == [0, 2]
    assert seed.arch.summary == "-- TT -- TT" and seed.arch.rank == 1 and seed.candidates == {}
    assert seed.arch.measured_ratio == pytest.approx(8 / 14) and seed.stem == "solutions"


def test_the_depth_seed_is_left_out_when_searched_or_out_of_reach(tmp_path):
    logs = []
    depth = [{"attn": {"op": "identity" if b in (0, 2) else "teacher"}, "mlp": {"op": "identity" if b in (0, 2) else "teacher"}}
             for b in range(BLOCKS)]
    found = choose_unast({"params": 0.6}, _lut(), _config("shortgpt"), _tools(tmp_path, depth, logs))
    assert len(found.choices) == 1  # the search found it already: not tried twice
    tools = _tools(tmp_path, LINEAR_MLPS, logs)
    out_of_reach = choose_unast({"params": 0.05}, _lut(), _config("shortgpt"), tools)
    assert len(out_of_reach.choices) == 1 and "select tries the searched architectures only" in logs[-1]
    with pytest.raises(InfeasibleBudget):  # the baseline itself still says so
        choose_depth({"params": 0.05}, _lut(), _config(None).model_copy(update={"method": "shortgpt"}), tools)


def _refining(tools, refined_layers, calls, earlier=()):
    def refine(arch, budget):
        calls.append((arch.rank, budget))
        out = arch.model_copy(update={"layers": refined_layers, "summary": describe(refined_layers), "weights": {}})
        rounds = [{"round": 1, "kept": refined_layers != arch.layers}] + [{"round": 2 + k, "kept": True}
                                                                         for k in range(len(earlier))]
        steps = [(arch.model_copy(update={"layers": layers, "summary": describe(layers)}), loss)
                 for layers, loss in earlier]
        return out, {"start_loss": 2.0, "loss": 1.5, "metric": "kl", "rounds": rounds, "earlier": steps}

    def search(budget):  # the search predicts latency as it measures
        found = tools.search(budget)
        archs = [a.model_copy(update={"predicted_ratio": {"latency": tools.measure([a.layers])["latency"][0]}})
                 for a in found.architectures]
        return found.model_copy(update={"architectures": archs})
    return tools.__class__(**{**tools.__dict__, "refine": refine, "search": search})


def _refine_config(rounds):
    config = RunConfig()
    return config.model_copy(update={"search": config.search.model_copy(update={"refine_rounds": rounds})})


def _skipping(blocks):
    op = [{"op": "identity" if b in blocks else "teacher"} for b in range(BLOCKS)]
    return [{"attn": dict(op[b]), "mlp": dict(op[b])} for b in range(BLOCKS)]


def test_the_refined_architecture_joins_select_when_it_changed_and_holds_the_budget(tmp_path):
    logs, calls = [], []
    searched = _skipping({1})  # measured 11/14 = 0.786
    tools = _refining(_tools(tmp_path, searched, logs), _skipping({2}), calls)
    short = choose_unast({"latency": 0.8}, _lut(), _refine_config(2), tools)
    assert [c.arch.rank for c in short.choices] == [0, 1] and calls == [(0, {"latency": 0.8})]
    refined = short.choices[1]
    assert refined.arch.summary == "TT TT -- TT" and refined.arch.measured_ratio == pytest.approx(11 / 14)
    assert refined.results["refined"]["from_rank"] == 0 and refined.results["refined"]["loss"] == 1.5
    assert "architecture 0 refined, 1 steps, kl 2.0000 -> 1.5000" in logs[-1]
    # off: not run; unchanged or over the measured budget: not tried twice, not kept
    assert len(choose_unast({"latency": 0.8}, _lut(), _refine_config(0), tools).choices) == 1
    same = _refining(_tools(tmp_path, searched, logs), searched, calls)
    assert len(choose_unast({"latency": 0.8}, _lut(), _refine_config(2), same).choices) == 1
    assert "no step lowered the measured loss" in logs[-1]
    def broken(arch, budget):
        raise MemoryError("out of memory")
    failing = same.__class__(**{**same.__dict__, "refine": broken})
    assert len(choose_unast({"latency": 0.8}, _lut(), _refine_config(2), failing).choices) == 1
    assert "refine failed (MemoryError: out of memory); select tries the searched architectures only" in logs[-1]
    slow = _refining(_tools(tmp_path, searched, logs), _skipping(set()), calls)
    assert len(choose_unast({"latency": 0.8}, _lut(), _refine_config(2), slow).choices) == 1
    assert "step 1 (kl 1.5000) measured latency 1.000, over 0.820: no refined architecture joins select" in logs[-1]


def test_a_refined_architecture_over_the_measured_budget_falls_back_to_the_latest_earlier_step_that_holds(tmp_path):
    logs, calls = [], []
    searched = _skipping({1})  # measured 11/14 = 0.786; budget 0.8 + 0.02
    # three kept steps: the last (no skips, 1.0) and the one before (no skips either) miss it, the first holds
    steps = [(_skipping(set()), 1.7), (_skipping({3}), 1.9)]
    tools = _refining(_tools(tmp_path, searched, logs), _skipping(set()), calls, earlier=steps)
    short = choose_unast({"latency": 0.8}, _lut(), _refine_config(3), tools)
    assert [c.arch.rank for c in short.choices] == [0, 1]
    refined = short.choices[1]
    assert refined.arch.summary == "TT TT TT --" and refined.arch.measured_ratio == pytest.approx(11 / 14)
    assert refined.results["refined"]["loss"] == 1.9 and refined.results["refined"]["steps_kept"] == 1
    assert "step 3 (kl 1.5000) measured latency 1.000, over 0.820: the step before it next" in logs[-3]
    assert "step 2 (kl 1.7000) measured latency 1.000" in logs[-2]
    assert "architecture 1 (architecture 0 refined, 1 steps, kl 2.0000 -> 1.9000): TT TT TT --" in logs[-1]
    # none holds: left out
    none = _refining(_tools(tmp_path, searched, logs), _skipping(set()), calls, earlier=steps[:1])
    assert len(choose_unast({"latency": 0.8}, _lut(), _refine_config(3), none).choices) == 1
    assert "no refined architecture joins select" in logs[-1]
