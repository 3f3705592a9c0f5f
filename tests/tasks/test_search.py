import pytest

from tasks.distill import distill_candidate
from tasks.score import score, score_table
from tasks.search import check_budget, search
from unast_core.errors import InfeasibleBudget
from unast_core.records import Searched, weights_matrix


@pytest.fixture(scope="module")
def scores(store):
    distilled = [distill_candidate.fn(store.prep, store.calib, i, j, store.config.distill, "teacher", 0)
                 for i, j in store.prep.trained_pairs()]
    weights = weights_matrix(store.prep, distilled)
    rows = [score.fn(store.prep, store.states, i, weights[i], store.config.score) for i in range(len(weights))]
    return score_table.fn(store.prep, rows, weights)


def test_record_and_reuse(store, scores):
    found = search.fn(store.prep, scores, store.lut, {"params": 0.6}, store.config.search)
    assert isinstance(found, Searched) and not found.reused and len(found.architectures) == store.config.search.k
    assert all(a.predicted_ratio["params"] <= 0.6 + 1e-9 for a in found.architectures)
    again = search.fn(store.prep, scores, store.lut, {"params": 0.6}, store.config.search)
    assert again.reused and again.architectures == found.architectures


def test_an_unreachable_budget_stops_with_the_smallest_reachable(store, scores):
    with pytest.raises(InfeasibleBudget, match="smallest reachable is params="):
        check_budget.fn(store.lut, {"params": 0.01})
    with pytest.raises(InfeasibleBudget):
        search.fn(store.prep, scores, store.lut, {"params": 0.01}, store.config.search)


def test_refine_keeps_the_budget_lowers_the_measured_loss_and_is_reused(store, scores):
    from tasks.refine import refine_architecture

    cfg = store.config.search.model_copy(update={"refine_rounds": 2, "refine_seqs": 2})
    found = search.fn(store.prep, scores, store.lut, {"params": 0.6}, cfg)
    arch, facts = refine_architecture.fn(store.prep, store.states, scores, store.lut, {"params": 0.6},
                                         found.architectures[0], cfg)
    assert facts["loss"] <= facts["start_loss"] and facts["seqs"] == 2
    assert facts["from"] == found.architectures[0].choice
    assert arch.choice == facts["choice"] and arch.predicted_ratio["params"] <= 0.6 + 1e-9
    assert all(step["kept"] == (step["measured"] < step["from"]) for step in facts["rounds"])
    # on the tiny teacher both rounds pay (KL 0.0101 -> 0.0049 -> 0.0032 with seed 0)
    assert len(facts["rounds"]) == 2 and all(step["kept"] for step in facts["rounds"])
    assert arch.choice != found.architectures[0].choice and facts["loss"] < facts["start_loss"]
    assert arch.rank == 0 and arch.score_sum is None and arch.summary != found.architectures[0].summary
    # the step before the last, for a caller whose measured budget the last one misses
    assert [s["choice"] for s in facts["steps"]][-1] == arch.choice and len(facts["steps"]) == 2
    (first, first_loss), = facts["earlier"]
    assert first.choice == facts["steps"][0]["choice"] and first_loss == facts["steps"][0]["loss"] > facts["loss"]
    assert first.predicted_ratio["params"] <= 0.6 + 1e-9 and first.rank == 0
    again, same = refine_architecture.fn(store.prep, store.states, scores, store.lut, {"params": 0.6},
                                         found.architectures[0], cfg)
    assert again == arch and same == facts
    # the refine settings do not touch the search's own record
    assert search.fn(store.prep, scores, store.lut, {"params": 0.6}, store.config.search).reused
    assert facts["score_seqs"] == 2
    # scores in context on one row of the two: a refine of its own (not the stored one), kept on both rows
    fewer = cfg.model_copy(update={"refine_score_seqs": 1})
    _, other = refine_architecture.fn(store.prep, store.states, scores, store.lut, {"params": 0.6},
                                      found.architectures[0], fewer)
    assert other["score_seqs"] == 1 and other["seqs"] == 2 and other["start_loss"] == facts["start_loss"]
