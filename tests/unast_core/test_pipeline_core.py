"""Stages 1-4 and 6 of the core on tiny random models: capture, scoring, cost table, finetune."""

import math

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model
from unast_core.train.activations import capture, is_captured, load_boundary
from unast_core.model.adapters import Adapter
from unast_core.model.assemble import build_student, layers_from_choice
from unast_core.config import RegimeConfig, TrainConfig
from unast_core.search.cost import build_lut, predict
from unast_core.search.latency import colocate, interleaved_latency
from unast_core.train.losses import kl_to_teacher, lm_loss
from unast_core.train.finetune import Diverged, cosine_lr, finetune
from unast_core.search.scoring import score_sublayer

POOL = [{"op": "teacher"}, {"op": "identity"}]


def _tokens(n=4, seq=16, vocab=97, seed=0):
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_capture_writes_every_boundary(tmp_path):
    model = tiny_model("llama")
    tokens = _tokens()
    meta = capture(model, tokens, tmp_path / "v", batch_size=3)
    assert is_captured(tmp_path / "v") and meta["boundaries"] == 7 and meta["rows"] == 4
    assert load_boundary(tmp_path / "v", 6).shape == (4, 16, 32)
    assert meta["loss"] == pytest.approx(lm_loss(model, tokens, 4), rel=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt2"])
def test_scores_from_cached_state_equal_naive_swap(tmp_path, model_type):
    """Eq. 2 computed from the cached residual state equals a full forward of the swapped model."""
    model = tiny_model(model_type)
    tokens = _tokens()
    meta = capture(model, tokens, tmp_path / "v", batch_size=2)
    adapter = Adapter(model)
    for index in (0, 3, 5):
        result = score_sublayer(model, tokens, tmp_path / "v", index, [{"op": "teacher"}, {"op": "identity"}],
                                meta["loss"], batch_size=2)
        with adapter.swapped({index: {"op": "identity"}}):
            naive = lm_loss(model, tokens, 4) - meta["loss"]
        assert result["scores"][0] == 0.0
        assert result["scores"][1] == pytest.approx(naive, abs=1e-5)
        assert result["errors"] == [None, None]


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_block_score_equals_a_full_forward_with_the_whole_block_skipped(tmp_path, model_type):
    """An attention sublayer's block score is the loss change of the model with its block's attention and MLP both
    skipped; an MLP sublayer, or a pool that cannot skip, has none."""
    model = tiny_model(model_type)
    tokens = _tokens()
    meta = capture(model, tokens, tmp_path / "v", batch_size=2)
    adapter = Adapter(model)
    pool = [{"op": "teacher"}, {"op": "identity"}]
    for index in (0, 2):
        result = score_sublayer(model, tokens, tmp_path / "v", index, pool, meta["loss"], batch_size=2, block=True)
        with adapter.swapped({index: {"op": "identity"}, index + 1: {"op": "identity"}}):
            naive = lm_loss(model, tokens, 4) - meta["loss"]
        assert result["block_score"] == pytest.approx(naive, abs=1e-5)
        assert abs(result["block_score"] - result["scores"][1]) > 1e-6  # not the attention alone
    assert score_sublayer(model, tokens, tmp_path / "v", 3, pool, meta["loss"], 2, block=True)["block_score"] is None
    assert score_sublayer(model, tokens, tmp_path / "v", 2, pool[:1], meta["loss"], 2, block=True)["block_score"] is None
    assert "block_score" not in score_sublayer(model, tokens, tmp_path / "v", 2, pool, meta["loss"], 2)


def test_a_failing_candidate_scores_nan_and_others_survive(tmp_path):
    model = tiny_model("llama")
    tokens = _tokens()
    meta = capture(model, tokens, tmp_path / "v", batch_size=2)
    result = score_sublayer(model, tokens, tmp_path / "v", 2, [{"op": "teacher"}, {"op": "bogus"}, {"op": "identity"}],
                            meta["loss"], batch_size=2)
    assert result["scores"][0] == 0.0 and math.isnan(result["scores"][1]) and math.isfinite(result["scores"][2])
    assert "unknown operator" in result["errors"][1]


def test_lut_shape_and_exact_prediction_at_the_extremes():
    model = tiny_model("llama")
    lut = build_lut(model, POOL, RegimeConfig(batch_size=1, seq_len=16), warmup=1, repeats=3, calibration_samples=4)
    n = len(Adapter(model).sublayers)
    fit = lut["calibration"]["latency"]
    assert len(fit["points"]) == 5 and fit["points"][-1] == [1.0, 1.0]  # 4 samples + teacher
    # the stored line is the least-squares fit of the stored points (numpy, independently), or the identity
    # when that fit is flat or decreasing
    table_x, measured_y = zip(*fit["points"])
    slope, intercept = np.polyfit(table_x, measured_y, 1)
    if slope > 0:
        # (the stored points are rounded to 4 decimals)
        assert (fit["slope"], fit["intercept"]) == (pytest.approx(slope, abs=2e-3), pytest.approx(intercept, abs=2e-3))
    else:
        assert (fit["slope"], fit["intercept"]) == (1.0, 0.0)
    tables = [t for t, _ in fit["points"][:4]]
    assert tables[0] > tables[-1] and all(0 < t <= 1 for t in tables)  # from mostly-teacher to mostly-skipped
    assert len(lut["costs"]["latency"]) == n and all(len(row) == 2 for row in lut["costs"]["latency"])
    assert all(row[1] == 0 for row in lut["costs"]["params"])
    teacher = predict(lut, [0] * n)
    assert 0 < teacher["latency"] <= lut["teacher"]["latency"] * (1 + 1e-9)  # exact unless noise capped the fixed part
    assert teacher["params"] == lut["teacher"]["params"]
    # parameters are exact for any architecture
    choice = [1, 0] * (n // 2)
    student = build_student(model, layers_from_choice(choice, POOL))
    assert predict(lut, choice)["params"] == sum(p.numel() for p in student.parameters())


def test_interleaved_latency_ranks_a_slower_callable():
    import time

    medians = interleaved_latency({"fast": lambda: None, "slow": lambda: time.sleep(0.002)}, warmup=1, repeats=3)
    assert medians["slow"] > medians["fast"]


def test_colocate_moves_every_weight_once_and_changes_nothing_else():
    from unast_core.model.teacher import tiny_random_teacher

    model = tiny_random_teacher(0).model
    student = build_student(model, layers_from_choice([1, 0] * 4, POOL))
    shared = student.student.model.norm  # a module both sides hold: moved once, still shared
    model.model.norm = shared
    ids = _tokens(n=2, seq=8, vocab=model.config.vocab_size)
    with torch.no_grad():
        before = {"teacher": model(ids).logits, "student": student(ids).logits}
    values = {id(t): t.detach().clone() for m in (model, student) for t in [*m.parameters(), *m.buffers()]}
    pointers = {id(t): t.data_ptr() for m in (model, student) for t in [*m.parameters(), *m.buffers()]}
    colocate(model, student)
    for m in (model, student):
        for t in [*m.parameters(), *m.buffers()]:
            assert t.data_ptr() != pointers[id(t)] and torch.equal(t, values[id(t)])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied weights stay tied
    assert model.model.norm.weight.data_ptr() == student.student.model.norm.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before["teacher"]) and torch.equal(student(ids).logits, before["student"])



def test_student_latency_installs_the_students_own_modules_and_restores_the_teacher():
    from unast_core.search.latency import student_latency

    model = tiny_model("llama")
    ids = _tokens(n=1, seq=32, vocab=model.config.vocab_size)
    with torch.no_grad():
        before = model(ids).logits
    layers = layers_from_choice([1, 0, 1, 1, 0, 1], POOL)
    student = build_student(model, layers)
    seen = []
    student.student.model.layers[0].self_attn.register_forward_hook(lambda *_: seen.append(1))
    timed = student_latency(model, student.student, layers, RegimeConfig(seq_len=32), warmup=1, repeats=5)
    assert seen, "the student's own (replaced) module ran inside the teacher"
    assert timed["latency_ratio"] == pytest.approx(timed["student_s"] / timed["teacher_s"]) and timed["student_s"] > 0
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # the teacher got its own modules back
    assert not isinstance(model.model.layers[0].self_attn, type(student.student.model.layers[0].self_attn))


def test_lut_fixed_part_is_never_negative(monkeypatch):
    """Noise can make skipping attention alone and MLP alone each look cheaper than half the model: the
    table then scales the sublayers down instead of predicting a negative fixed part."""
    import unast_core.search.cost as cost

    def fake(variants, warmup, repeats):  # teacher 1.0; each kind skipped alone 0.3; everything skipped 0.2
        return {name: {"teacher": 1.0, "all:identity": 0.2}.get(name, 0.3) for name in variants}

    monkeypatch.setattr(cost, "interleaved_latency", fake)
    model = tiny_model("llama")
    lut = build_lut(model, POOL, RegimeConfig(batch_size=1, seq_len=16), warmup=0, repeats=1)
    n = len(Adapter(model).sublayers)
    assert lut["fixed"]["latency"] == 0.0
    assert all(row[0] > 0 and row[1] == 0 for row in lut["costs"]["latency"])
    assert predict(lut, [0] * n)["latency"] == pytest.approx(1.0)  # the teacher's prediction stays exact
    assert predict(lut, [1] * n)["latency"] == 0.0


def test_students_latency_times_several_students_side_by_side():
    from unast_core.search.latency import students_latency

    model = tiny_model("llama")
    ids = _tokens(n=1, seq=32, vocab=model.config.vocab_size)
    with torch.no_grad():
        before = model(ids).logits
    ran = {"a": 0, "b": 0}
    students = {}
    for name, choice in (("a", [1, 0, 1, 1, 0, 1]), ("b", [0, 1, 0, 0, 1, 0])):
        layers = layers_from_choice(choice, POOL)
        student = build_student(model, layers)
        first = student.student.model.layers[0]
        (first.self_attn if choice[0] else first.mlp).register_forward_hook(lambda *_, n=name: ran.__setitem__(n, ran[n] + 1))
        students[name] = (student.student, layers)
    medians = students_latency(model, students, RegimeConfig(seq_len=32), warmup=1, repeats=3)
    assert set(medians) == {"teacher", "a", "b"} and all(v > 0 for v in medians.values())
    assert ran["a"] >= 4 and ran["b"] >= 4  # each student's own replaced module ran (warmup + repeats)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    with pytest.raises(ValueError, match="rename"):
        students_latency(model, {"teacher": students["a"]}, RegimeConfig(seq_len=32), warmup=1, repeats=1)


def test_cosine_schedule_endpoints():
    cfg = TrainConfig(steps=10, lr_max=1e-3, lr_min=1e-4, warmup_steps=2)
    assert cosine_lr(0, cfg) == pytest.approx(5e-4)
    assert cosine_lr(2, cfg) == pytest.approx(1e-3)
    assert cosine_lr(10, cfg) == pytest.approx(1e-4)


def test_finetune_lowers_loss_and_kl():
    teacher = tiny_model("llama").requires_grad_(False)
    student = build_student(teacher, layers_from_choice([1, 0, 0, 1, 0, 0], POOL))
    train, val = _tokens(8, 16, seed=1), _tokens(4, 16, seed=2)
    kl_before = kl_to_teacher(student, teacher, val, 4)
    cfg = TrainConfig(steps=20, batch_size=4, lr_max=1e-3, lr_min=1e-4, lm_weight=0.0)
    result = finetune(student, teacher, train, val, cfg, seed=0)
    assert len(result["curve"]) == 20 and result["tokens"] == 20 * 4 * 16
    assert kl_to_teacher(student, teacher, val, 4) < 0.8 * kl_before  # held-out KL drops by a fifth or more
    # the teacher is untouched
    assert all(not p.requires_grad for p in teacher.parameters())


def test_trainable_replaced_moves_only_the_replaced_sublayers():
    from unast_core.model.assemble import freeze_kept

    teacher = tiny_model("llama").requires_grad_(False)
    layers = layers_from_choice([2, 0, 0, 1, 0, 0], POOL + [{"op": "linear"}])  # block 0: linear attention
    student = build_student(teacher, layers)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert freeze_kept(student, layers) > 0
    cfg = TrainConfig(steps=5, batch_size=4, lr_max=1e-3, lr_min=1e-4, lm_weight=0.0, trainable="replaced")
    finetune(student, teacher, _tokens(8, 16, seed=1), _tokens(4, 16, seed=2), cfg, seed=0)
    moved = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("student.model.layers.0.") for k in moved), moved
    assert not any("mlp" in k for k in moved)  # block 0's MLP is the teacher's: frozen
    # only skips replaced: nothing is left to train, and a zero-step finetune needs no optimizer
    skips = layers_from_choice([1, 0, 0, 1, 0, 0], POOL)
    student = build_student(teacher, skips)
    assert freeze_kept(student, skips) == 0
    result = finetune(student, teacher, _tokens(), _tokens(), cfg.model_copy(update={"steps": 0}))
    assert result["steps"] == 0


def test_finetune_reports_divergence():
    teacher = tiny_model("llama").requires_grad_(False)
    student = build_student(teacher, layers_from_choice([0] * 6, POOL))
    with torch.no_grad():
        student.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(Diverged, match="diverged"):
        finetune(student, teacher, _tokens(), _tokens(), TrainConfig(steps=2, batch_size=2))


def test_measured_ratios_and_budget_correction():
    from unast_core.search.budget import corrected_budget
    from unast_core.search.latency import measure_ratios

    model = tiny_model("llama")
    all_skipped = layers_from_choice([1] * 6, POOL)
    teacher_layers = layers_from_choice([0] * 6, POOL)
    ratios = measure_ratios(model, [all_skipped, teacher_layers], RegimeConfig(seq_len=32), warmup=1, repeats=5)
    assert ratios[0] < ratios[1]
    # measured 10% above predicted: the latency budget shrinks by that factor; under-runs never loosen it
    assert corrected_budget({"latency": 0.66, "params": 0.9}, [0.6, 0.6, 0.6], [0.66, 0.65, 0.67]) == pytest.approx(
        {"latency": 0.6, "params": 0.9})
    assert corrected_budget({"latency": 0.5}, [0.5], [0.4]) == {"latency": 0.5}


@pytest.mark.parametrize("metric, model_type", [("kl", "llama"), ("hidden_nmse", "llama"), ("hidden_nmse", "gemma2"),
                                                ("hidden_nmse", "gpt2")])
def test_other_score_metrics_from_cached_state_equal_naive(tmp_path, metric, model_type):
    from unast_core.train.losses import kd_terms
    model = tiny_model(model_type)
    tokens = _tokens()
    meta = capture(model, tokens, tmp_path / "v", batch_size=2)
    adapter = Adapter(model)
    with torch.no_grad():
        teacher_logits = model(tokens, use_cache=False).logits
        final = load_boundary(tmp_path / "v", 6)
    for index in (0, 3):
        result = score_sublayer(model, tokens, tmp_path / "v", index, POOL, meta["loss"], 2, metric=metric)
        with adapter.swapped({index: {"op": "identity"}}), torch.no_grad():
            if metric == "kl":
                naive = kd_terms(model(tokens, use_cache=False).logits, teacher_logits).item() / tokens.numel()
            else:
                sink = {}
                handle = adapter.blocks[-1].register_forward_hook(
                    lambda m, a, o: sink.setdefault("h", o[0] if isinstance(o, tuple) else o))
                model(tokens, use_cache=False)
                handle.remove()
                norm = model.get_submodule(adapter.family["final_norm"])
                out, target = norm(sink["h"]), norm(final)
                naive = ((out - target).pow(2).sum() / target.pow(2).sum()).item()
        assert result["scores"][0] == 0.0 and result["metric"] == metric
        assert result["scores"][1] == pytest.approx(naive, rel=1e-4) and naive > 0


def _cache_bytes_per_token(model, ids, layer):
    cache = model(ids, use_cache=True).cache
    kv = cache.layers[layer]
    return (kv.keys.numel() * kv.keys.element_size() + kv.values.numel() * kv.values.element_size()) / ids.numel()


def test_decode_lut_and_memory_costs():
    """The table's memory cost of each attention candidate is what a real student holds: its weights, plus
    the KV cache it actually fills, read from the cache after a forward (not the table's own formula)."""
    from unast_core.search.latency import measure_ratios
    model = tiny_model("llama")
    pool = POOL + [{"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 8}, {"op": "mlp", "hidden": 24}]
    regime = RegimeConfig(kind="decode", batch_size=2, seq_len=12)
    lut = build_lut(model, pool, regime, warmup=1, repeats=3)
    assert lut["regime"]["kind"] == "decode" and lut["teacher"]["latency"] > 0
    ids = _tokens(n=regime.batch_size, seq=regime.seq_len, vocab=model.config.vocab_size)
    tokens, teacher_layer = ids.numel(), {"attn": {"op": "teacher"}, "mlp": {"op": "teacher"}}
    for j, spec in enumerate(pool[:3]):  # teacher, skipped and downsized attention in block 0
        student = build_student(model, [{"attn": spec, "mlp": {"op": "teacher"}}, teacher_layer, teacher_layer])
        with torch.no_grad():
            cache = _cache_bytes_per_token(student, ids, 0)
        own = Adapter(student.student)
        weights = sum(p.numel() * p.element_size() for m in own.modules_of(own.sublayers[0]).values() for p in m.parameters())
        assert lut["kv_bytes_per_token"][0][j] == cache, spec
        assert lut["costs"]["memory"][0][j] == weights + cache * tokens, spec
    assert lut["kv_bytes_per_token"][1] == [0, 0, 0, 0]  # MLPs hold no cache
    assert predict(lut, [0] * 6)["memory"] == pytest.approx(lut["teacher"]["memory"])
    assert measure_ratios(model, [layers_from_choice([1, 1] * 3, pool)], regime, 1, 3)[0] > 0


def test_one_pass_comparison_equals_separate_measures():
    from unast_core.train.losses import compare_to_teacher
    teacher = tiny_model("llama")
    student = build_student(teacher, layers_from_choice([1, 0, 0, 1, 0, 0], POOL))
    tokens = _tokens()
    both = compare_to_teacher(student, teacher, tokens, 3)
    assert both["teacher_loss"] == pytest.approx(lm_loss(teacher, tokens, 4), rel=1e-5)
    assert both["student_loss"] == pytest.approx(lm_loss(student, tokens, 4), rel=1e-5)
    assert both["kl"] == pytest.approx(kl_to_teacher(student, teacher, tokens, 4), rel=1e-5) and both["kl"] > 0
