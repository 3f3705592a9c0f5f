import math

import tasks.distill as distill_task
from tasks.distill import distill_candidate
from unast_core.records import Distilled


def _mlp_pair(store):
    return next((i, j) for i, j in store.prep.trained_pairs() if store.prep.pool[j]["op"] == "mlp")


def test_record_and_reuse(store):
    i, j = _mlp_pair(store)
    cfg = store.config.distill
    first = distill_candidate.fn(store.prep, store.calib, i, j, cfg, "teacher", 0)
    assert isinstance(first, Distilled) and first.status == "ok" and not first.reused
    assert first.weights.endswith(".safetensors") and first.candidate.startswith("mlp-")
    assert math.isfinite(first.metrics["nmse"]) and first.metrics["nmse"] <= first.metrics["nmse_init"] + 1e-9
    again = distill_candidate.fn(store.prep, store.calib, i, j, cfg, "teacher", 0)
    assert again.reused and again.weights == first.weights and again.metrics == first.metrics
    other_seed = distill_candidate.fn(store.prep, store.calib, i, j, cfg, "teacher", 1)
    assert not other_seed.reused and other_seed.weights != first.weights  # the key covers the settings


def test_a_crash_is_recorded_as_failed_and_retried_on_the_next_run(store, monkeypatch):
    i, j = _mlp_pair(store)
    cfg = store.config.distill.model_copy(update={"steps": 2})

    def crash(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(distill_task, "distill", crash)
    failed = distill_candidate.fn(store.prep, store.calib, i, j, cfg, "teacher", 0)
    assert failed.status == "failed" and "MemoryError: out of memory" in failed.error and failed.weights is None
    monkeypatch.undo()
    retried = distill_candidate.fn(store.prep, store.calib, i, j, cfg, "teacher", 0)
    assert retried.status == "ok" and not retried.reused  # a failure is never cached
