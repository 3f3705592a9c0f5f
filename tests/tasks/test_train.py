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


def test_select_ranks_on_select_on_text(tmp_path):
    """With data.select_on set, select's validation loss is the trained student's loss on that text's rows,
    and its checkpoint is stored apart from a run that validates on the validation split."""
    from safetensors.torch import load_model

    from tasks.common import splits, teacher_for
    from tasks.prepare import prepare
    from tests.tasks.conftest import smoke_config
    from unast_core.model.assemble import build_student
    from unast_core.train.losses import lm_loss

    config = smoke_config(tmp_path, **{"data.select_on": "enwiki", "data.select_on_seqs": 3})
    prep = prepare.fn(config.teacher, config.data, config.cost, config.pool, config.compute, str(config.home))
    layers = [{"attn": {"op": "identity"}, "mlp": {"op": "teacher"}}] + [
        {"attn": {"op": "teacher"}, "mlp": {"op": "teacher"}}] * (len(prep.sublayers) // 2 - 1)
    on_wiki = train.fn(prep, layers, {}, None, config.select, 0, 2, "select 0", validation="select")
    on_validation = train.fn(prep, layers, {}, None, config.select, 0, 2, "select 0")
    assert on_wiki.weights != on_validation.weights and on_wiki.val_loss != on_validation.val_loss
    student = build_student(teacher_for(prep.teacher).model, layers, None)
    load_model(student, on_wiki.weights)
    rows = splits(prep)["select"]
    assert rows.shape[0] == 3
    assert math.isclose(on_wiki.val_loss, lm_loss(student, rows, 2), rel_tol=1e-5)
