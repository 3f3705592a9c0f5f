"""search.target: the pool keeps only what the serving engine runs, each dropped operator named."""

import pytest

from unast_core.errors import UnastError
from unast_core.model.modeling_unast import teacher_dims
from unast_core.model.targets import pool_for_target
from unast_core.model.teacher import tiny_random_config

POOL = [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"},
        {"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 16},
        {"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 8},
        {"op": "attention", "heads": 4, "kv_heads": 1, "head_dim": 16},
        {"op": "mlp", "hidden": 88}]


def kept(target, config=None):
    config = config or tiny_random_config()
    dropped = []
    pool = pool_for_target(POOL, target, config, teacher_dims(config), warn=dropped.append)
    return [p for p in pool], dropped


def test_torch_keeps_everything():
    assert kept("torch") == (POOL, [])


def test_llama_cpp_drops_smaller_head_dims():
    pool, dropped = kept("llama.cpp")
    assert pool == [p for p in POOL if p.get("head_dim") != 8]
    assert len(dropped) == 1 and "head dim 8" in dropped[0]


def test_vllm_keeps_kv_groups_and_no_ops_only():
    pool, dropped = kept("vllm")
    assert pool == [{"op": "teacher"}, {"op": "identity"}, POOL[5], POOL[6]]
    assert any("no linear" in d for d in dropped) and sum("query heads" in d for d in dropped) == 2


def test_other_families_are_refused():
    from tests.conftest import tiny_model

    config = tiny_model("gemma2").config
    with pytest.raises(UnastError, match="search.target=llama.cpp"):
        pool_for_target(POOL, "llama.cpp", config, teacher_dims(config))


def test_nemotron_export_needs_the_vllm_target():
    from unast_core.config import build_config

    with pytest.raises(UnastError, match="search.target=vllm"):
        build_config("smoke", None, {"export.nemotron_nas": True})
    assert build_config("smoke", None, {"export.nemotron_nas": True, "search.target": "vllm"}).export.nemotron_nas
