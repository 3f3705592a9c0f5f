import os

import pytest

from tasks.common import splits
from tasks.prepare import prepare
from tests.tasks.conftest import smoke_config
from unast_core.errors import UnastError
from unast_core.records import Prepared


def test_record_and_reuse(store):
    prep = store.prep
    assert isinstance(prep, Prepared) and prep.sublayers[:2] == ["00.attn", "00.mlp"]
    assert prep.pool[0] == {"op": "teacher"} and prep.teacher.model == "tiny-random-llama"
    assert f":{os.getpid()}" in prep.worker
    again = prepare.fn(store.config.teacher, store.config.data, store.config.cost, store.config.pool, store.config.compute,
                       prep.home)
    assert again.reused and again.data_path == prep.data_path and not prep.reused
    assert Prepared.model_validate_json(prep.model_dump_json()) == prep  # serialisable: travels to any worker


def test_text_outside_the_calibration_data_keeps_the_data_key(store):
    """Setting select's text or changing the held-out set adds a file of its own: the splits every stage trains
    and scores on, and so the work keyed on them, stay."""
    cfg = store.config
    assert store.prep.outside_paths == {}  # the smoke preset has no held-out set
    data = cfg.data.model_copy(update={"heldout": "lee-news", "heldout_seqs": 4, "select_on": "enwiki",
                                       "select_on_seqs": 3})
    prep = prepare.fn(cfg.teacher, data, cfg.cost, cfg.pool, cfg.compute, store.prep.home)
    assert prep.reused and (prep.data_key, prep.data_path) == (store.prep.data_key, store.prep.data_path)
    assert set(prep.outside_paths) == {"heldout", "select"}
    rows = splits(prep)
    assert rows["select"].shape[0] == 3 and rows["heldout"].shape[0] == 4
    assert rows["calibration"].equal(splits(store.prep)["calibration"])
    more = prepare.fn(cfg.teacher, data.model_copy(update={"heldout_seqs": 5}), cfg.cost, cfg.pool, cfg.compute,
                      store.prep.home)
    assert more.data_key == prep.data_key and more.outside_paths["select"] == prep.outside_paths["select"]
    assert more.outside_paths["heldout"] != prep.outside_paths["heldout"] and splits(more)["heldout"].shape[0] == 5


def test_the_serving_target_restricts_the_pool(store):
    cfg = store.config
    prep = prepare.fn(cfg.teacher, cfg.data, cfg.cost, cfg.pool, cfg.compute, store.prep.home, "vllm")
    assert {"op": "linear"} in store.prep.pool and {"op": "linear"} not in prep.pool
    assert all(p["op"] != "attention" or p["heads"] == prep.dims["heads"] for p in prep.pool)
    assert prep.reused  # the data does not depend on the target


def test_a_sequence_longer_than_the_model_is_an_error(tmp_path):
    config = smoke_config(tmp_path, **{"data.seq_len": 4096})
    with pytest.raises(UnastError, match="longer than the model supports"):
        prepare.fn(config.teacher, config.data, config.cost, config.pool, config.compute, str(tmp_path))
    assert not list((tmp_path / "runs").rglob("*.safetensors"))  # nothing half-written


def test_teacher_samples_are_cached_and_keyed_by_their_settings(tmp_path, monkeypatch):
    import tasks.prepare as prepare_task

    calls = []
    real = prepare_task.sample_rows
    monkeypatch.setattr(prepare_task, "sample_rows", lambda *a, **k: calls.append(a[2:]) or real(*a, **k))
    config = smoke_config(tmp_path, **{"data.generated_fraction": 0.5})

    def run(cfg):
        return prepare.fn(cfg.teacher, cfg.data, cfg.cost, cfg.pool, cfg.compute, str(tmp_path))

    first = run(config)
    assert first.generated_key and len(calls) == 1 and calls[0][0] == 4 + 2  # half of 8 calibration + 4 validation
    stored = next((tmp_path / "runs").rglob(f"generated/{first.generated_key}.safetensors"))
    stamp = stored.stat().st_mtime_ns
    other_split = config.model_copy(update={"data": config.data.model_copy(update={"test_seqs": 3})})
    second = run(other_split)  # new splits, same samples: read back, not sampled again
    assert second.data_key != first.data_key and second.generated_key == first.generated_key
    assert len(calls) == 1 and stored.stat().st_mtime_ns == stamp
    hotter = run(config.model_copy(update={"data": config.data.model_copy(update={"generate_temperature": 0.7})}))
    assert hotter.generated_key != first.generated_key and len(calls) == 2
    opened = run(config.model_copy(update={"data": config.data.model_copy(update={"generate_start": "random-token"})}))
    assert opened.generated_key not in (first.generated_key, hotter.generated_key) and len(calls) == 3
    assert run(smoke_config(tmp_path)).generated_key is None  # the default smoke data has no samples
