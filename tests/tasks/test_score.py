import math

import pandas as pd

from tasks.distill import distill_candidate
from tasks.score import score, score_table
from unast_core.records import Scored, ScoreTable, weights_matrix
from unast_core.store import read_json


def _weights(store):
    distilled = [distill_candidate.fn(store.prep, store.calib, i, j, store.config.distill, "teacher", 0)
                 for i, j in store.prep.trained_pairs()]
    return weights_matrix(store.prep, distilled)


def test_record_reuse_and_table(store):
    weights = _weights(store)
    rows = [score.fn(store.prep, store.states, i, weights[i], store.config.score) for i in range(len(store.prep.sublayers))]
    assert all(isinstance(r, Scored) and not r.reused for r in rows)
    assert all(r.scores[0] == 0.0 for r in rows)  # the teacher's own sublayer changes nothing (Eq. 2)
    attn = rows[0]
    mlp_index = next(j for j, s in enumerate(store.prep.pool) if s["op"] == "mlp")
    assert math.isnan(attn.scores[mlp_index]) and attn.errors[mlp_index] is None  # does not apply: no error
    again = score.fn(store.prep, store.states, 0, weights[0], store.config.score)
    assert again.reused and again.scores == attn.scores
    table = score_table.fn(store.prep, rows, weights)
    assert isinstance(table, ScoreTable) and table.sublayers == len(rows) and table.reused_sublayers == 0
    frame = pd.read_parquet(table.parquet)
    assert set(frame["sublayer"]) == set(store.prep.sublayers)


def test_a_failed_candidate_scores_nan_with_its_error(store):
    weights = _weights(store)
    j = next(j for j, s in enumerate(store.prep.pool) if s["op"] == "linear")
    row = list(weights[1])
    row[j] = {"error": "diverged"}
    scored = score.fn(store.prep, store.states, 1, row, store.config.score)
    assert math.isnan(scored.scores[j]) and "diverged" in scored.errors[j]
    assert all(math.isfinite(s) for k, s in enumerate(scored.scores) if k != j and store.prep.pool[k]["op"] != "attention")


def test_block_scores_ride_with_the_attention_sublayers_and_leave_the_other_keys_alone(store):
    """score.blocks adds a whole-block score to each attention sublayer (a new key: rescored) and a
    block_scores column to the table; the MLP sublayers' records are reused as they are."""
    weights = _weights(store)
    cfg = store.config.score
    plain = [score.fn(store.prep, store.states, i, weights[i], cfg) for i in range(4)]
    on = cfg.model_copy(update={"blocks": True})
    blocks = [score.fn(store.prep, store.states, i, weights[i], on) for i in range(4)]
    assert [r.reused for r in blocks] == [False, True, False, True]  # attention rescored, MLP reused
    assert all(r.block_score is None for r in plain) and [r.block_score is None for r in blocks] == [False, True] * 2
    assert [r.scores for r in blocks] == [r.scores for r in plain]
    assert "block_scores" not in read_json(score_table.fn(store.prep, plain, weights[:4]).path)
    table = read_json(score_table.fn(store.prep, blocks, weights[:4]).path)
    assert table["block_scores"] == [blocks[0].block_score, None, blocks[2].block_score, None]
