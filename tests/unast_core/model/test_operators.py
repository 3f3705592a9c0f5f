"""Candidate operators: every operator in every family (shapes, parameter counts, generation, export),
the pool's validation against the teacher, teacher vs random init, and layer-wise distillation."""

import math

import pytest
import torch

from tests.conftest import assert_export_reloads, tiny_model
from unast_core.train.activations import capture
from unast_core.model.adapters import Adapter
from unast_core.model.assemble import build_student, describe
from unast_core.config import (
    AttentionCandidate,
    DistillConfig,
    MlpCandidate,
    PoolConfig,
    build_config,
)
from unast_core.train.distill import distill, local_error
from unast_core.errors import UnastError
from unast_core.model.modeling_unast import teacher_dims
from unast_core.model.ops import OpSpec
from unast_core.model.operators import SublayerRunner, candidate_state, resolve_pool
from unast_core.search.scoring import score_sublayer
from unast_core.store import write_tensors

ATTN_SMALL = {"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 8}   # tiny configs: 4 heads / 2 KV, dim 8
ATTN_NARROW = {"op": "attention", "heads": 4, "kv_heads": 2, "head_dim": 4}
MLP_HALF = {"op": "mlp", "hidden": 24}
FAST = DistillConfig(seqs=10, eval_seqs=2, steps=12, batch_size=4, eval_every=4, patience=3, lr_max=2e-3)


def _attn_for(model_type):
    return ({**ATTN_SMALL, "kv_heads": 2}, {**ATTN_NARROW, "kv_heads": 4}) if model_type == "gpt2" else (ATTN_SMALL, ATTN_NARROW)


def _mlp_for(model):
    return {"op": "mlp", "hidden": teacher_dims(model.config)["hidden"] // 2}


def _expected_params(spec, kind, dims, bias_attn, bias_mlp, n_norm):
    H = dims["hidden_size"]
    if spec["op"] == "linear":
        return H * H + H + n_norm
    if spec["op"] == "mlp":
        m = spec["hidden"]
        return (3 * H * m if not bias_mlp else 2 * H * m + m + H) + 2 * n_norm
    q, kv, d = spec["heads"], spec["kv_heads"], spec["head_dim"]
    weights = H * q * d * 2 + H * kv * d * 2
    biases = (q * d + 2 * kv * d + H) if bias_attn else 0
    return weights + biases


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma2", "gpt2"])
def test_operator_shapes_and_parameter_counts(model_type):
    model = tiny_model(model_type)
    adapter = Adapter(model)
    dims = teacher_dims(model.config)
    attn_a, attn_b = _attn_for(model_type)
    h = torch.randn(2, 5, dims["hidden_size"])
    gpt2 = model_type == "gpt2"
    for index in (0, 1):
        runner = SublayerRunner(adapter, index)
        kind = adapter.sublayers[index].kind
        norm_params = sum(p.numel() for p in runner.teacher_modules()[runner.names["pre"]].parameters())
        for spec in ({"op": "linear"}, attn_a, attn_b, _mlp_for(model)):
            if not OpSpec.of(spec).applies(kind):
                continue
            modules = adapter.build(index, spec)
            out = runner.delta(h, modules)
            assert out.shape == h.shape and torch.isfinite(out).all()
            n = sum(p.numel() for name, m in modules.items() if name == runner.op_name() for p in m.parameters())
            if spec["op"] == "linear":
                n += norm_params
            q_norms = sum(p.numel() for k in ("q_norm", "k_norm") if hasattr(modules[runner.op_name()], k)
                          for p in getattr(modules[runner.op_name()], k).parameters())
            expected = _expected_params(spec, kind, dims, gpt2 or model_type == "qwen2", gpt2, norm_params)
            if spec["op"] == "mlp":
                expected -= 2 * norm_params
            assert n - q_norms == expected, (spec, n, expected)


def _all_ops_layers(model_type, n_blocks=3):
    attn_a, attn_b = _attn_for(model_type)
    model = tiny_model(model_type)
    mlp = _mlp_for(model)
    return [{"attn": attn_a, "mlp": {"op": "linear"}}, {"attn": {"op": "linear"}, "mlp": mlp},
            {"attn": attn_b, "mlp": {"op": "identity"}}][:n_blocks]


def _weights_for(teacher, layers, tmp_path):
    """Candidate files built from the teacher's structure, perturbed so that loading them matters."""
    adapter = Adapter(teacher)
    weights = {}
    torch.manual_seed(1)
    for sub in adapter.sublayers:
        spec = layers[sub.block][sub.kind]
        if spec["op"] in ("linear", "attention", "mlp"):
            state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                     for k, v in candidate_state(adapter.build(sub.index, spec)).items()}
            weights[str(sub.index)] = str(write_tensors(tmp_path / f"c{sub.index}.safetensors", state))
    return weights


@torch.no_grad()
def test_every_operator_generates_with_cache_in_every_family(family_model, tmp_path):
    layers = _all_ops_layers(family_model.config.model_type)
    student = build_student(family_model, layers, _weights_for(family_model, layers, tmp_path))
    ids = torch.randint(1, 97, (1, 7), generator=torch.Generator().manual_seed(0))
    cached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 13) and torch.equal(cached, uncached)
    assert describe(layers) == "aL Lm a-"


def test_build_student_loads_each_candidate_file(tmp_path):
    teacher = tiny_model("llama")
    layers = _all_ops_layers("llama")
    weights = _weights_for(teacher, layers, tmp_path)
    student = build_student(teacher, layers, weights)
    from safetensors.torch import load_file
    state = load_file(weights["0"])
    assert torch.equal(student.student.model.layers[0].self_attn.q_proj.weight, state["self_attn.q_proj.weight"])
    with pytest.raises(RuntimeError, match="no trained weights"):
        build_student(teacher, layers, {})


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt2"])
def test_export_with_every_operator_reloads_without_unast(tmp_path, model_type):
    teacher = tiny_model(model_type)
    layers = _all_ops_layers(model_type)
    student = build_student(teacher, layers, _weights_for(teacher, layers, tmp_path))
    assert_export_reloads(student, tmp_path)


# --- the pool against the teacher -------------------------------------------------------------------

def test_pool_fractions_resolve_against_the_teacher():
    smol = type("C", (), {"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9,
                          "num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536})()
    pool = resolve_pool(PoolConfig(attention=[AttentionCandidate(heads=1 / 3), AttentionCandidate(head_dim=0.5)],
                                   mlp=[MlpCandidate(hidden=0.5), MlpCandidate(hidden=768)]), smol)
    assert pool == [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"},
                    {"op": "attention", "heads": 3, "kv_heads": 1, "head_dim": 64},
                    {"op": "attention", "heads": 9, "kv_heads": 3, "head_dim": 32}, {"op": "mlp", "hidden": 768}]


@pytest.mark.parametrize("model_type, pool, field, words", [
    ("llama", {"attention": [{"heads": 3}]}, "pool.attention.0.heads", "whole groups"),
    ("llama", {"attention": [{"heads": 3, "kv_heads": 2}]}, "pool.attention.0.heads", "divide evenly"),
    ("llama", {"attention": [{"heads": 8}]}, "pool.attention.0.heads", "larger than the teacher"),
    ("llama", {"attention": [{"head_dim": 5}]}, "pool.attention.0.head_dim", "even"),
    ("llama", {"attention": [{"head_dim": 16}]}, "pool.attention.0.head_dim", "larger"),
    ("llama", {"attention": [{"heads": 4}]}, "pool.attention.0", "teacher's own"),
    ("llama", {"mlp": [{"hidden": 48}]}, "pool.mlp.0.hidden", "not smaller"),
    ("llama", {"mlp": [{"hidden": 1000}]}, "pool.mlp.0.hidden", "not smaller"),
    ("llama", {"mlp": [{"hidden": 2.5}]}, "pool.mlp.0.hidden", "whole count"),
    ("gpt2", {"attention": [{"heads": 2, "kv_heads": 1}]}, "pool.attention.0.kv_heads", "GPT-2"),
])
def test_bad_candidate_grid_names_the_field(model_type, pool, field, words):
    cfg = build_config("smoke", overrides={f"pool.{k}": v for k, v in pool.items()})
    with pytest.raises(UnastError, match=f"invalid config field '{field}'.*{words}"):
        resolve_pool(cfg.pool, tiny_model(model_type).config)


@pytest.mark.parametrize("field, value", [("pool.mlp", [{"hidden": 0}]), ("pool.attention", [{"heads": -1}]),
                                          ("pool.init", "zeros"), ("distill.loss", "huber"), ("distill.eval_seqs", 40)])
def test_static_pool_and_distill_errors(field, value):
    with pytest.raises(UnastError, match=f"invalid config field '{field.split('.')[0]}"):
        build_config("smoke", overrides={field: value})


# --- init and distillation -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A trained-looking tiny Llama is not available offline, so the teacher is random; states of 10 rows."""
    model = tiny_model("llama").requires_grad_(False)
    tokens = torch.randint(0, 97, (10, 24), generator=torch.Generator().manual_seed(0))
    directory = tmp_path_factory.mktemp("calib")
    capture(model, tokens, directory, 4)
    return model, directory


@pytest.mark.parametrize("index, spec", [(0, ATTN_SMALL), (2, ATTN_NARROW), (1, MLP_HALF), (5, MLP_HALF), (3, {"op": "linear"})])
def test_distillation_beats_init_beats_skip_and_teacher_init_beats_random(captured, index, spec):
    model, directory = captured
    adapter = Adapter(model)
    modules, teacher_m = distill(adapter, index, spec, directory, FAST, "teacher")
    _, random_m = distill(adapter, index, spec, directory, FAST, "random")
    assert teacher_m["status"] == "ok" and teacher_m["nmse_identity"] == 1.0
    assert teacher_m["nmse"] <= teacher_m["nmse_init"]
    if spec["op"] != "linear":  # least squares on 8 rows overfits the held-out rows of a random teacher
        assert teacher_m["nmse_init"] < 1.0
        assert teacher_m["nmse"] < random_m["nmse"]
    # The reported error is the held-out error of the returned modules.
    from unast_core.train.activations import load_boundary
    h, out = load_boundary(directory, index), load_boundary(directory, index + 1)
    err = local_error(SublayerRunner(adapter, index), modules, h[-2:], (out - h)[-2:])
    assert err == pytest.approx(teacher_m["nmse"], rel=1e-5)
    # Distillation never touched the teacher.
    assert torch.equal(adapter.blocks[0].input_layernorm.weight, tiny_model("llama").model.layers[0].input_layernorm.weight)


def test_trained_candidate_improves_on_its_init_with_enough_steps(captured):
    model, directory = captured
    cfg = FAST.model_copy(update={"steps": 40, "eval_every": 10})
    _, m = distill(Adapter(model), 1, MLP_HALF, directory, cfg, "random")
    assert m["nmse"] < 0.8 * m["nmse_init"] and m["steps"] > 0 and m["curve"]


@pytest.mark.parametrize("loss", ["mse", "l1", "cosine"])
def test_other_losses_train(captured, loss):
    model, directory = captured
    _, m = distill(Adapter(model), 1, MLP_HALF, directory, FAST.model_copy(update={"loss": loss}), "random")
    assert m["status"] == "ok" and m["loss_name"] == loss and m["nmse"] < m["nmse_init"]


def test_non_finite_states_fail_the_candidate_not_the_run(captured, tmp_path):
    model, directory = captured
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(directory, bad)
    from unast_core.train.activations import boundary_file, load_boundary
    h = load_boundary(directory, 2)
    h[0, 0, 0] = float("nan")
    write_tensors(boundary_file(bad, 2), {"h": h})
    _, m = distill(Adapter(model), 1, MLP_HALF, bad, FAST, "random")
    assert m["status"] == "failed" and "non-finite" in m["error"]


def test_scores_use_trained_weights_and_skip_inapplicable(captured, tmp_path):
    model, directory = captured
    adapter = Adapter(model)
    tokens = torch.randint(0, 97, (4, 24), generator=torch.Generator().manual_seed(0))
    vdir = tmp_path / "v"
    meta = capture(model, tokens, vdir, 4)
    modules, _ = distill(adapter, 1, MLP_HALF, directory, FAST, "teacher")
    path = str(write_tensors(tmp_path / "m.safetensors", candidate_state(modules)))
    pool = [{"op": "teacher"}, {"op": "identity"}, ATTN_SMALL, MLP_HALF, MLP_HALF]
    result = score_sublayer(model, tokens, vdir, 1, pool, meta["loss"], 4, [None, None, None, path, {"error": "diverged"}])
    scores, errors = result["scores"], result["errors"]
    assert scores[0] == 0 and scores[1] > 0 and math.isnan(scores[2]) and errors[2] is None
    assert 0 < scores[3] < scores[1]  # the distilled half-width MLP hurts less than skipping it
    assert math.isnan(scores[4]) and "diverged" in errors[4]
