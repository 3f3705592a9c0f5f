import math

import pandas as pd

from tasks.distill import distill_candidate
from tasks.score import score, score_table
from unast_core.records import Scored, ScoreTable, weights_matrix


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
