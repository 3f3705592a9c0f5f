import os

import pytest

from tasks.prepare import prepare
from tests.tasks.conftest import smoke_config
from unast_core.errors import UnastError
from unast_core.records import Prepared


def test_record_and_reuse(store):
    prep = store.prep
    assert isinstance(prep, Prepared) and prep.sublayers[:2] == ["00.attn", "00.mlp"]
    assert prep.pool[0] == {"op": "teacher"} and prep.teacher.model == "tiny-random-llama"
    assert f":{os.getpid()}" in prep.worker
    again = prepare.fn(store.config.teacher, store.config.data, store.config.cost, store.config.pool, prep.home)
    assert again.reused and again.data_path == prep.data_path and not prep.reused
    assert Prepared.model_validate_json(prep.model_dump_json()) == prep  # serialisable: travels to any worker


def test_a_sequence_longer_than_the_model_is_an_error(tmp_path):
    config = smoke_config(tmp_path, **{"data.seq_len": 4096})
    with pytest.raises(UnastError, match="longer than the model supports"):
        prepare.fn(config.teacher, config.data, config.cost, config.pool, str(tmp_path))
    assert not list((tmp_path / "runs").rglob("*.safetensors"))  # nothing half-written
