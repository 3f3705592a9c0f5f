"""Refining a searched architecture in its own context: scores against full forwards, the step logic, the plan."""

import math

import pytest
import torch

from tests.conftest import tiny_model
from unast_core.model.adapters import Adapter
from unast_core.search.plan import best_under_budget
from unast_core.search.refine import Evaluator, penalised, refine
from unast_core.train.activations import capture
from unast_core.train.losses import kd_terms, lm_loss
from unast_core.config import SearchConfig

POOL = [{"op": "teacher"}, {"op": "identity"}, {"op": "mlp", "hidden": 24}]


def _tokens(n=4, seq=16, vocab=97, seed=0):
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def _available(adapter):
    return [[spec["op"] != "mlp" or sub.kind == "mlp" for spec in POOL] for sub in adapter.sublayers]


def _naive(model, adapter, tokens, choice, metric, teacher_logits):
    specs = {i: POOL[j] for i, j in enumerate(choice) if j}
    with torch.inference_mode(), adapter.swapped(specs):
        if metric == "lm_loss":
            return lm_loss(model, tokens, 4)
        return kd_terms(model(tokens).logits, teacher_logits).item() / tokens.numel()


@pytest.mark.parametrize("metric", ["kl", "lm_loss"])
@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_scores_in_context_equal_full_forwards_of_the_changed_architecture(tmp_path, model_type, metric):
    model = tiny_model(model_type)
    tokens = _tokens()
    capture(model, tokens, tmp_path / "v", batch_size=2)
    adapter = Adapter(model)
    with torch.inference_mode():
        teacher_logits = model(tokens).logits
    evaluator = Evaluator(model, tokens, tmp_path / "v", POOL, [], _available(adapter), batch_size=2, metric=metric)
    choice = [0, 2, 1, 0, 0, 1]  # block 0 narrow MLP, block 1 attention skipped, block 2 MLP skipped
    base, scores = evaluator.contextual(choice)
    assert base == pytest.approx(_naive(model, adapter, tokens, choice, metric, teacher_logits), abs=1e-5)
    assert evaluator.loss(choice) == pytest.approx(base, abs=1e-6)
    for i, row in enumerate(scores):
        for j, e in enumerate(row):
            if not _available(adapter)[i][j]:
                assert math.isnan(e)
            elif j == choice[i]:
                assert e == 0.0
            else:
                moved = choice[:i] + [j] + choice[i + 1:]
                naive = _naive(model, adapter, tokens, moved, metric, teacher_logits)
                assert e == pytest.approx(naive - base, abs=1e-5)
    if metric == "kl":
        assert evaluator.loss([0] * 6) == pytest.approx(0.0, abs=1e-6)
    # nothing stays installed: the teacher is the teacher again
    with torch.inference_mode():
        assert torch.equal(model(tokens).logits, teacher_logits)


@pytest.mark.parametrize("metric", ["kl", "lm_loss"])
def test_scores_in_context_on_fewer_rows_keep_the_loss_on_all_rows(tmp_path, metric):
    """`score_rows`: the candidates' scores run on the first rows only, as if the evaluator had only
    those rows, while the architecture's own loss (what a step is kept on) is still measured on every row."""
    model = tiny_model("llama")
    tokens = _tokens(n=6)
    capture(model, tokens, tmp_path / "v", batch_size=2)
    adapter = Adapter(model)
    choice = [0, 2, 1, 0, 0, 1]
    every, first, fewer = (Evaluator(model, rows, tmp_path / "v", POOL, [], _available(adapter), batch_size=2,
                                     metric=metric, score_rows=limit)
                           for rows, limit in ((tokens, None), (tokens[:2], None), (tokens, 2)))
    assert (every.scored_rows, fewer.scored_rows) == (6, 2)
    loss, scores = fewer.contextual(choice)
    assert loss == pytest.approx(every.contextual(choice)[0], abs=1e-6)
    assert loss == pytest.approx(fewer.loss(choice), abs=1e-6)
    expected = first.contextual(choice)[1]
    assert loss != pytest.approx(first.contextual(choice)[0], rel=1e-3)  # the rows do differ
    for row, want in zip(scores, expected):
        assert row == pytest.approx(want, rel=1e-4, abs=1e-7, nan_ok=True)
    # 3 rows: a batch of 2 and one row of the next, scored like an evaluator of those 3 rows alone
    three = Evaluator(model, tokens, tmp_path / "v", POOL, [], _available(adapter), batch_size=2, metric=metric,
                      score_rows=3)
    alone = Evaluator(model, tokens[:3], tmp_path / "v", POOL, [], _available(adapter), batch_size=2, metric=metric)
    assert three.scored_rows == 3
    for row, want in zip(three.contextual(choice)[1], alone.contextual(choice)[1]):
        assert row == pytest.approx(want, rel=1e-4, abs=1e-7, nan_ok=True)


def test_refine_steps_only_while_the_measured_loss_falls():
    # Two sublayers, candidates 0 (keep) and 1 (cut); the budget allows one cut. Alone, cutting sublayer 0 costs
    # 1 and sublayer 1 costs 2, but a context score says otherwise for the architecture the search started from.
    true = {(1, 0): 1.0, (0, 1): 2.0}
    calls = []

    def contextual(choice):
        calls.append(list(choice))
        base = true[tuple(choice)]
        other = [1 - c for c in choice]
        return base, [[0.0 if j == c else true[tuple(other)] - base for j in range(2)] for c in choice]

    def solve(scores):  # exactly one cut: the cheaper total
        options = [[1, 0], [0, 1]]
        return min(options, key=lambda ch: sum(scores[i][j] for i, j in enumerate(ch)))

    out = refine([0, 1], contextual, lambda ch: true[tuple(ch)], solve, rounds=3)
    assert out.choice == [1, 0] and out.loss == 1.0 and out.start_loss == 2.0
    assert out.rounds[0]["kept"] and out.rounds[0]["changed"] == 2
    assert calls == [[0, 1], [1, 0]]  # the second round found nothing better and stopped
    assert out.steps == [{"choice": [1, 0], "loss": 1.0}]


def test_a_step_that_does_not_pay_is_retried_in_a_trust_region_then_given_up():
    losses = {(0, 0): 1.0, (1, 1): 5.0, (1, 0): 0.5}
    mus = []

    def solve(scores):
        # the penalty on leaving (0, 0) tells the ILP to change less: two changes at mu = 0, one after
        mu = scores[0][1] - (-1.0)
        mus.append(round(mu, 6))
        return [1, 1] if mu == 0 else [1, 0]

    out = refine([0, 0], lambda ch: (losses[tuple(ch)], [[0.0, -1.0], [0.0, -1.0]]), lambda ch: losses[tuple(ch)],
                 solve, rounds=1, mu0=0.05)
    assert out.choice == [1, 0] and out.loss == 0.5
    assert mus == [0.0, 0.05] and [r["kept"] for r in out.rounds] == [False, True]
    never = refine([0, 0], lambda ch: (1.0, [[0.0, -1.0], [0.0, -1.0]]), lambda ch: 9.0, lambda s: [1, 1],
                   rounds=2, tries=3)
    assert never.choice == [0, 0] and never.loss == 1.0 and len(never.rounds) == 3


def test_penalty_and_the_unfloored_plan():
    scores = [[0.0, -0.5, math.nan], [0.0, 0.2, 0.3]]
    near = penalised(scores, [0, 1], 0.1)
    assert near[0][1] == pytest.approx(-0.4) and math.isnan(near[0][2])
    assert penalised(scores, [0, 1], 0.1)[1] == pytest.approx([0.1, 0.2, 0.4])
    lut = {"pool": [{"op": "teacher"}, {"op": "identity"}, {"op": "linear"}],
           "costs": {"params": [[10, 0, 5], [10, 0, 5]]}, "fixed": {"params": 0}, "teacher": {"params": 20}}
    cfg = SearchConfig(fitted_scale=1.0)
    # a negative score is a gain around an architecture: taken even where the budget does not need it
    assert best_under_budget(scores, lut, {"params": 1.0}, cfg) == [1, 0]
    tight = [[0.0, 1.0, 0.1], [0.0, 0.9, 0.1]]
    assert best_under_budget(tight, lut, {"params": 0.5}, cfg) == [2, 2]
    assert best_under_budget(tight, lut, {"params": 0.5}, SearchConfig(fitted_scale=20.0)) == [0, 1]
