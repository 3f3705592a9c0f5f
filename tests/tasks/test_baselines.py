from pathlib import Path

from tasks.baselines import block_importance, scratch_init, uniform_grid


def test_block_importance_record_and_reuse(store):
    first = block_importance.fn(store.prep, store.states, "shortgpt", 3, 2)
    assert not first["reused"] and len(first["importance"]) == len(store.prep.sublayers) // 2
    assert block_importance.fn(store.prep, store.states, "shortgpt", 3, 2) == {**first, "reused": True}
    loss = block_importance.fn(store.prep, store.states, "shortened-llama", 3, 2)
    assert loss["criterion"].startswith("validation loss") and all(v > store.states.mean_loss(3) - 1 for v in loss["importance"])


def test_uniform_grid_and_scratch_init_reuse(store):
    (half,) = uniform_grid.fn(store.prep, [0.5])
    assert all(layer == half[0] for layer in half) and half[0]["mlp"]["op"] == "mlp"
    path = scratch_init.fn(store.prep, half, 0)
    stamp = Path(path).stat().st_mtime_ns
    assert scratch_init.fn(store.prep, half, 0) == path and Path(path).stat().st_mtime_ns == stamp  # not rewritten
