"""The bf16 path through the tasks: states stored in bf16, distillation and scoring under autocast."""

import math
from pathlib import Path

import torch

from tasks.capture import capture_states
from tasks.distill import distill_candidate
from tasks.prepare import prepare
from tasks.score import score
from tests.tasks.conftest import smoke_config
from unast_core.store import read_tensors


def test_bf16_states_distillation_and_scores(tmp_path):
    config = smoke_config(tmp_path, **{"compute.dtype": "bfloat16", "cost.dtype": "float32"})
    prep = prepare.fn(config.teacher, config.data, config.cost, config.pool, config.compute, str(tmp_path))
    assert (prep.compute_dtype, prep.deploy_dtype) == ("bfloat16", "float32")
    calib = capture_states.fn(prep, "calibration", 4, config.distill.seqs)
    states = capture_states.fn(prep, "validation", 4)
    assert calib.dir.endswith("-bfloat16") and not states.dir.endswith("-bfloat16")
    assert read_tensors(Path(calib.dir) / "boundary-000.safetensors")["h"].dtype == torch.bfloat16
    assert read_tensors(Path(states.dir) / "boundary-000.safetensors")["h"].dtype == torch.float32
    i, j = next((i, j) for i, j in prep.trained_pairs() if prep.pool[j]["op"] == "mlp")
    done = distill_candidate.fn(prep, calib, i, j, config.distill, "teacher", 0)
    assert done.status == "ok" and done.metrics["dtype"] == "bfloat16"
    assert done.metrics["nmse"] <= done.metrics["nmse_init"] + 1e-9 < 1.0
    weights = [None] * len(prep.pool)
    weights[j] = done.weights
    scored = score.fn(prep, states, i, weights, config.score)
    assert scored.scores[0] == 0.0 and math.isfinite(scored.scores[j])
    identity = prep.pool.index({"op": "identity"})
    assert scored.scores[identity] > 0  # skipping a sublayer of the teacher costs loss, under autocast too


def test_prepare_warns_when_auto_falls_back_to_fp32(tmp_path, monkeypatch, caplog):
    from unast_core.train import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))  # a CPU without fast bf16
    config = smoke_config(tmp_path, **{"compute.dtype": "auto"})
    with caplog.at_level("WARNING"):
        prep = prepare.fn(config.teacher, config.data, config.cost, config.pool, config.compute, str(tmp_path))
    assert prep.compute_dtype == "float32" and "compute float32" in prep.describe()
    assert any("neither AVX-512-BF16 nor AMX" in r.getMessage() for r in caplog.records)
