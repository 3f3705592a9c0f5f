import json

import pytest

from tasks.evaluate import evaluate, export
from tasks.train import train
from unast_core.records import Evaluation, Exported


@pytest.fixture(scope="module")
def trained(store):
    n = len(store.prep.sublayers) // 2
    layers = [{"attn": {"op": "identity"}, "mlp": {"op": "identity"}}] + [{"attn": {"op": "teacher"}, "mlp": {"op": "teacher"}}] * (n - 1)
    return train.fn(store.prep, layers, {}, None, store.config.finetune, 0, 2, "finetune")


def test_record(store, trained):
    measured = evaluate.fn(store.prep, trained, store.config.evaluate, store.config.cost)
    assert isinstance(measured, Evaluation) and measured.regime["device"] == "cpu"
    assert measured.student["params"] < measured.teacher["params"] == store.prep.teacher_params
    assert measured.student["param_ratio"] == pytest.approx(measured.student["params"] / store.prep.teacher_params)
    assert measured.student["kl_to_teacher"] > 0 and measured.test_tokens == 4 * 64


def test_a_missing_checkpoint_is_an_error(store, trained, tmp_path):
    gone = trained.model_copy(update={"weights": str(tmp_path / "nothing.safetensors")})
    with pytest.raises(Exception, match="nothing.safetensors|No such file"):
        evaluate.fn(store.prep, gone, store.config.evaluate, store.config.cost)


def test_export_writes_a_loadable_checkpoint(store, trained, tmp_path):
    out = tmp_path / "model"
    measured = evaluate.fn(store.prep, trained, store.config.evaluate, store.config.cost)
    results = {"budget": {"params": 0.8}, "method": "unast", "layers": trained.layers, "teacher": measured.teacher,
               "student": measured.student, "regime": measured.regime}
    exported = export.fn(store.prep, trained, results, str(out), 4)
    assert isinstance(exported, Exported) and exported.dir == str(out) and exported.sample
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_unast.UnastForCausalLM"
    assert (out / "modeling_unast.py").exists() and (out / "README.md").exists()
    assert json.loads((out / "results.json").read_text())["sample"] == exported.sample
