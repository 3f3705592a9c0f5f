import math

from safetensors.torch import load_file

from tasks.train import train
from unast_core.records import Trained


def _layers(store):
    n = len(store.prep.sublayers) // 2
    return [{"attn": {"op": "identity"}, "mlp": {"op": "teacher"}}] + [{"attn": {"op": "teacher"}, "mlp": {"op": "teacher"}}] * (n - 1)


def test_record_and_reuse(store):
    cfg = store.config.select
    first = train.fn(store.prep, _layers(store), {}, None, cfg, 0, 2, "select 0")
    assert isinstance(first, Trained) and first.status == "ok" and not first.reused and first.steps == cfg.steps
    assert math.isfinite(first.val_loss) and len(first.curve) == cfg.steps and load_file(first.weights)
    again = train.fn(store.prep, _layers(store), {}, None, cfg, 0, 2, "select 0")
    assert again.reused and again.weights == first.weights and again.val_loss == first.val_loss


def test_a_diverged_finetune_is_failed_not_cached(store):
    cfg = store.config.select.model_copy(update={"lr_max": 1e30, "lr_min": 1e29, "grad_clip": 1e30, "steps": 3})
    failed = train.fn(store.prep, _layers(store), {}, None, cfg, 0, 2, "select 1")
    assert failed.status == "failed" and "diverged" in failed.error and failed.weights is None
    assert not train.fn(store.prep, _layers(store), {}, None, cfg, 0, 2, "select 1").reused
