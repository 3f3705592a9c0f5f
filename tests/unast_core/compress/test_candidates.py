"""Compressed-teacher candidates (Appendix H) on a tiny random Llama: calibrated on stored states, sized."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import TINY_CONFIGS, tiny_model
from unast_core.config import CompressedCandidate, PoolConfig
from unast_core.errors import UnastError
from unast_core.model.adapters import Adapter
from unast_core.model.operators import SublayerRunner, init_operator, resolve_pool
from unast_core.model.ops import OpSpec
from unast_core.search.cost import add_size_costs
from unast_core.train.distill import _nmse64, _predict


def _setup(index: int):
    model = tiny_model("llama")
    runner = SublayerRunner(Adapter(model), index)
    h = torch.randn(6, 16, 32, generator=torch.Generator().manual_seed(0))
    return model, runner, h


def _error(runner, modules, h):
    return _nmse64(_predict(runner, None, h), _predict(runner, modules, h))


def test_gptq_candidate_compresses_only_its_linears_and_beats_round_to_nearest():
    model, runner, h = _setup(0)  # block 0's attention
    errors = {}
    for method in ("rtn", "gptq"):
        spec = CompressedCandidate(method=method, bits=3, linears="first").spec()
        modules = init_operator(runner, spec, h)
        attn, teacher = modules["self_attn"], model.model.layers[0].self_attn
        assert torch.equal(attn.o_proj.weight, teacher.o_proj.weight)        # second: untouched
        assert not torch.equal(attn.q_proj.weight, teacher.q_proj.weight)
        assert len(torch.unique(attn.k_proj.weight[0])) <= 8                  # 3 bits: at most 8 levels a row
        assert attn is not teacher and modules["input_layernorm"] is not model.model.layers[0].input_layernorm
        errors[method] = _error(runner, modules, h)
    assert 0 < errors["gptq"] < errors["rtn"], errors


def test_sparse_candidate_two_four_on_the_second_linear():
    model, runner, h = _setup(1)  # block 0's MLP
    modules = init_operator(runner, CompressedCandidate(method="sparsegpt", sparsity="2:4", linears="second").spec(), h)
    down = modules["mlp"].down_proj.weight
    assert torch.equal((down == 0).reshape(32, -1, 4).sum(2), torch.full((32, 12), 2))
    assert torch.equal(modules["mlp"].up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert _error(runner, modules, h) < 0.5


def test_pool_specs_names_and_size_costs():
    model = tiny_model("llama")
    pool = resolve_pool(PoolConfig(attention=[], mlp=[], compressed=[
        CompressedCandidate(method="gptq", bits=4, linears="both"),
        CompressedCandidate(method="sparsegpt", sparsity="2:4", linears="first")]), model.config)
    names = [OpSpec.of(s).name for s in pool]
    assert names == ["teacher", "identity", "linear", "gptq4-both", "sparsegpt2of4-first"]
    assert OpSpec.of(pool[4]).label == "sparsegpt 2:4 first" and OpSpec.of(pool[3]).applies("attn")
    lut = add_size_costs({"pool": pool, "costs": {}, "teacher": {}, "fixed": {}}, model)
    attn, mlp = lut["costs"]["size"][0], lut["costs"]["size"][1]
    # attention: q 32x32, k 16x32, v 16x32, o 32x32 (3072 weights) + its norm (32); MLP: 3 x 48x32 + norm (32)
    assert attn[:3] == [2 * 3104, 0, 2 * (32 * 32 + 32 + 32)]
    assert attn[3] == 2 * 32 + 3072 * 4 / 8 and mlp[3] == 2 * 32 + 4608 * 4 / 8
    assert attn[4] == 2 * 32 + 2 * 1024 + 2 * 2048 / 2  # q, k, v at half their weights, o_proj whole
    assert lut["teacher"]["size"] == 2 * sum(p.numel() for p in model.parameters())
    assert lut["fixed"]["size"] + sum(row[0] for row in lut["costs"]["size"]) == lut["teacher"]["size"]


def test_pattern_that_does_not_divide_a_width_names_the_field():
    config = AutoConfig.for_model("llama", **{**TINY_CONFIGS["llama"], "intermediate_size": 50})
    model = AutoModelForCausalLM.from_config(config)
    bad = PoolConfig(compressed=[CompressedCandidate(method="sparsegpt", sparsity="3:4", linears="second")])
    with pytest.raises(UnastError, match=r"pool.compressed.0.sparsity.*multiple of 4; it is 50"):
        resolve_pool(bad, model.config)
    resolve_pool(PoolConfig(compressed=[CompressedCandidate(method="sparsegpt", sparsity="3:4", linears="first")]),
                 model.config)  # the first linears read the model width 32: fine


def test_compressed_linears_stay_frozen_in_the_student():
    from unast_core.model.assemble import build_student, describe

    spec = CompressedCandidate(method="gptq", bits=4, linears="second").spec()
    layers = [{"attn": spec, "mlp": {"op": "teacher"}}] + [{"attn": {"op": "teacher"}, "mlp": {"op": "teacher"}}] * 2
    from unast_core.config import TrainConfig
    from unast_core.train.finetune import finetune

    teacher = tiny_model("llama")
    student = build_student(teacher, layers)
    attn = student.student.model.layers[0].self_attn
    assert not attn.o_proj.weight.requires_grad and attn.q_proj.weight.requires_grad
    assert student.student.model.layers[1].self_attn.o_proj.weight.requires_grad
    assert describe(layers) == "cT TT TT"
    o_before, q_before = attn.o_proj.weight.detach().clone(), attn.q_proj.weight.detach().clone()
    tokens = torch.randint(1, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    finetune(student, teacher, tokens, tokens[:2], TrainConfig(steps=2, batch_size=2, lr_max=1e-2, lr_min=1e-3),
             measure_before=False)
    assert torch.equal(attn.o_proj.weight, o_before) and not torch.equal(attn.q_proj.weight, q_before)
