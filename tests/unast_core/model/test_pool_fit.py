"""The shipped pool fits every teacher of a supported family (1 KV head, odd head counts, MQA), while an
entry the user wrote that does not fit stays an error naming its field."""

import logging
from unittest import mock

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from unast_core.config import PRESETS, AttentionCandidate, MlpCandidate, PoolConfig, build_config
from unast_core.errors import UnastError
from unast_core.model.adapters import Adapter
from unast_core.model.assemble import build_student
from unast_core.model.operators import SublayerRunner, init_operator, resolve_pool


def _config(model_type: str, heads: int, kv: int, head_dim: int = 8, inner: int = 48):
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=97, n_embd=heads * head_dim, n_inner=inner, n_layer=2, n_head=heads)
    extra = {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 16} if model_type == "gemma3_text" else {}
    return AutoConfig.for_model(model_type, vocab_size=97, hidden_size=heads * head_dim, intermediate_size=inner, num_hidden_layers=2,
                                num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                                max_position_embeddings=128, **extra)


def _attention(pool):
    return [(s["heads"], s["kv_heads"], s["head_dim"]) for s in pool if s["op"] == "attention"]


@pytest.mark.parametrize("model_type, heads, kv, expected", [
    ("gemma3_text", 4, 1, (1, 1, 8)),   # Gemma 3 270M's shape: a third of one group is one query head
    ("llama", 4, 1, (1, 1, 8)),
    ("llama", 9, 3, (3, 1, 8)),         # SmolLM2: whole groups, as before
    ("llama", 5, 5, (2, 2, 8)),         # odd MHA: a third of 5 groups rounds to 2
    ("llama", 7, 1, (2, 1, 8)),         # MQA: a third of 7 query heads on the one KV head
    ("qwen3", 2, 1, (1, 1, 8)),
    ("gpt2", 3, 3, (1, 1, 8)),
])
def test_default_pool_fits_every_head_layout(model_type, heads, kv, expected, caplog):
    config = _config(model_type, heads, kv)
    with caplog.at_level(logging.WARNING, logger="unast"):
        pool = resolve_pool(build_config("cpu").pool, config, "cpu")
    assert _attention(pool) == [expected] and not [r for r in caplog.records if r.name == "unast"]
    assert [s for s in pool if s["op"] == "mlp"] == [{"op": "mlp", "hidden": 24}]


@pytest.mark.parametrize("preset, expected", [
    ("smoke", [(2, 1, 8)]),
    ("paper", [(2, 1, 8), (1, 1, 8), (4, 1, 4)]),  # heads 0.5, heads 0.25, head_dim 0.5
])
def test_preset_pools_count_as_shipped(preset, expected):
    pool = resolve_pool(build_config(preset).pool, _config("gemma3_text", 4, 1), preset)
    assert _attention(pool) == expected


def test_an_entry_with_no_smaller_size_is_dropped_with_one_warning(caplog):
    config = _config("llama", 1, 1, head_dim=2, inner=1)  # one head of two channels, an MLP of one channel
    lines = []
    pool = resolve_pool(build_config("paper").pool, config, "paper", warn=lines.append)
    assert pool == [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"}]
    assert len(lines) == 6 and all("dropped" in line for line in lines)  # 3 attention + 3 MLP entries
    assert "pool.attention.0 (heads=0.5)" in lines[0] and "pool.mlp.2 (hidden=0.25)" in lines[-1]
    with caplog.at_level(logging.WARNING, logger="unast"):
        resolve_pool(build_config("cpu").pool, config, "cpu")
    assert len(caplog.records) == 2 and "pool.attention.0" in caplog.records[0].getMessage()


def test_a_shipped_head_dim_entry_shrinks_to_a_smaller_even_size():
    pool = PoolConfig(attention=[AttentionCandidate(head_dim=0.75)], mlp=[MlpCandidate(hidden=0.75)])
    config = _config("llama", 2, 1, head_dim=4, inner=2)  # 0.75 of 4 channels rounds to 4 (pairs), of 2 to 2
    with mock.patch.dict(PRESETS, {"test": {"pool": pool.model_dump(include={"attention", "mlp"})}}):
        assert resolve_pool(pool, config, "test")[3:] == [{"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 2},
                                                          {"op": "mlp", "hidden": 1}]
    with pytest.raises(UnastError, match="invalid config field 'pool.attention.0': this is the teacher's own"):
        resolve_pool(pool, config, "cpu")  # the same list written by the user


@pytest.mark.parametrize("pool, field, words", [
    ({"attention": [{"heads": 0.25}]}, "pool.attention.0", "teacher's own"),       # a whole group of 1
    ({"attention": [{"heads": 1 / 3}, {"heads": 2}]}, "pool.attention.0", "teacher's own"),
    ({"attention": [{"heads": 0.5}]}, "pool.attention.0", "teacher's own"),        # smoke's entry, on cpu
    ({"attention": [{"heads": 3}]}, "pool.attention.0.heads", "whole groups"),
    ({"attention": [{"heads": 1, "kv_heads": 2}]}, "pool.attention.0.kv_heads", "larger than the teacher"),
    ({"attention": [{"head_dim": 7}]}, "pool.attention.0.head_dim", "even"),
    ({"mlp": [{"hidden": 48}]}, "pool.mlp.0.hidden", "not smaller"),
])
def test_user_entries_that_do_not_fit_are_errors(pool, field, words):
    cfg = build_config("cpu", overrides={f"pool.{k}": v for k, v in pool.items()})
    with pytest.raises(UnastError, match=f"invalid config field '{field}'.*{words}"):
        resolve_pool(cfg.pool, _config("gemma3_text", 4, 1), "cpu")


def test_without_a_preset_every_shipped_list_is_lenient():
    cfg = build_config("cpu", overrides={"pool.attention": [{"heads": 0.5}]})  # the smoke preset's list
    assert _attention(resolve_pool(cfg.pool, _config("llama", 4, 1))) == [(2, 1, 8)]


def test_default_pool_on_a_gemma3_shaped_teacher_builds_inits_and_runs():
    config = _config("gemma3_text", 4, 1)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    pool = resolve_pool(build_config("cpu").pool, teacher.config, "cpu")
    attn, mlp = [s for s in pool if s["op"] in ("attention", "mlp")]
    assert attn == {"op": "attention", "heads": 1, "kv_heads": 1, "head_dim": 8}
    adapter = Adapter(teacher)
    h = torch.randn(4, 12, teacher.config.hidden_size)
    modules = init_operator(SublayerRunner(adapter, 0), attn, h)  # importance + least squares init
    out = SublayerRunner(adapter, 0).delta(h, modules)
    assert out.shape == h.shape and torch.isfinite(out).all()
    student = build_student(teacher, [{"attn": attn, "mlp": mlp}, {"attn": {"op": "teacher"}, "mlp": {"op": "teacher"}}])
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        assert torch.isfinite(student(ids).logits).all()
        assert student.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 12)
