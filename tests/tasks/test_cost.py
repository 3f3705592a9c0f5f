from pathlib import Path

import pytest

from tasks.cost import cost_table, measure_architectures
from unast_core.records import CostTable
from unast_core.store import read_json


def test_record_and_reuse(store):
    lut = store.lut
    assert isinstance(lut, CostTable) and lut.device == "cpu" and lut.regime["seq_len"] == 64
    assert lut.teacher["params"] == store.prep.teacher_params and "cost table" in lut.describe()
    again = cost_table.fn(store.prep, store.config.cost)
    assert again.reused and again.path == lut.path and read_json(again.path)["teacher"] == lut.teacher


def test_measured_architectures_are_stored_and_reused(store):
    n_blocks = len(store.prep.sublayers) // 2
    skip_all = [{"attn": {"op": "identity"}, "mlp": {"op": "identity"}}] * n_blocks
    first = measure_architectures.fn(store.prep, [skip_all], store.config.cost)
    assert first["params"] == [pytest.approx(1 - sum(
        row[0] for row in read_json(store.lut.path)["costs"]["params"]) / store.prep.teacher_params)]
    assert 0 < first["latency"][0] < 1
    assert measure_architectures.fn(store.prep, [skip_all], store.config.cost) == first  # a rerun decides the same


def test_an_unusable_device_fails_and_stores_nothing(store):
    cfg = store.config.cost.model_copy(update={"device": "cuda:7", "repeats": 1})
    def stored():  # the lock file a task takes is no stored work
        return sorted(p.name for p in Path(store.lut.path).parent.iterdir() if not p.name.endswith(".lock"))

    before = stored()
    with pytest.raises((RuntimeError, AssertionError, ValueError)):
        cost_table.fn(store.prep, cfg)
    assert stored() == before
