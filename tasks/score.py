from __future__ import annotations

from prefect import task

from tasks.common import computing, splits, teacher_for
from unast_core.config import ScoreConfig
from unast_core.model.ops import OpSpec
from unast_core.records import Prepared, Scored, ScoreTable, States
from unast_core.search.scoring import carries_block_score, score_sublayer
from unast_core import faults
from unast_core.integrity import intact
from unast_core.locks import unit_lock
from unast_core.store import atomic_path, content_key, read_json, write_json


@task(name="score", tags=["unast-compute"])
def score(prep: Prepared, states: States, index: int, weights: list, cfg: ScoreConfig) -> Scored:
    """Stage 3 for one sublayer: Eq. 2 scores of every candidate (a failed candidate scores NaN);
    `weights[j]` is candidate j's trained weights at this sublayer (see `score_sublayer`)."""
    # A block's whole-skip score rides with its attention sublayer; `blocks` enters only that key, so the
    # MLP sublayers' scores (and every score of a store written before it existed) stay valid.
    block = cfg.blocks and carries_block_score(prep.sublayers[index].split(".")[1], prep.pool)
    key = content_key(prep.data_key, prep.pool, weights, cfg.model_dump(exclude={"blocks"}), index,
                      *prep.compute_key(), *(("block",) if block else ()))
    path = prep.store().path("scores", key[:2], f"{key}.json")
    with unit_lock(path):
        reused = intact(path)
        if not reused:
            with computing():
                tokens = splits(prep)["validation"][:cfg.seqs]
                result = score_sublayer(teacher_for(prep.teacher).model, tokens, states.dir, index, prep.pool,
                                        states.mean_loss(cfg.seqs), cfg.batch_size, weights, metric=cfg.metric,
                                        dtype=prep.compute_dtype, block=block)
            write_json(path, {**result, "index": index, "name": prep.sublayers[index], "pool": prep.pool})
            faults.point("score")
        result = read_json(path)
        return Scored(index=index, name=prep.sublayers[index], path=str(path), scores=result["scores"],
                      losses=result["losses"], errors=result["errors"], block_score=result.get("block_score"),
                      reused=reused)


@task(name="score-table")
def score_table(prep: Prepared, rows: list[Scored], weights: list[list]) -> ScoreTable:
    """Gather per-sublayer scores into scores/<key>.json (the ILP's input) and a parquet table."""
    import pandas as pd

    rows = sorted(rows, key=lambda r: r.index)
    table = {"pool": prep.pool, "sublayers": [r.name for r in rows], "scores": [r.scores for r in rows],
             "losses": [r.losses for r in rows], "errors": [r.errors for r in rows],
             "weights": [[w if isinstance(w, str) else None for w in row] for row in weights]}
    if any(r.block_score is not None for r in rows):  # absent otherwise, so older tables keep their key
        table["block_scores"] = [r.block_score for r in rows]
    path = prep.store().scores(content_key(table))
    write_json(path, table)
    specs = [OpSpec.of(spec) for spec in prep.pool]
    frame = pd.DataFrame([{"sublayer": r.name, "index": r.index, "candidate": specs[j].name, "score": r.scores[j],
                           "val_loss": r.losses[j], "error": r.errors[j]}
                          for r in rows for j, spec in enumerate(specs) if spec.applies(r.name.split(".")[1])])
    with atomic_path(path.with_suffix(".parquet")) as tmp:
        frame.to_parquet(tmp)
    return ScoreTable(path=str(path), parquet=str(path.with_suffix(".parquet")), sublayers=len(rows),
                      reused_sublayers=sum(r.reused for r in rows))
