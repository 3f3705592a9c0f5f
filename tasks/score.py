from __future__ import annotations

from prefect import task

from tasks.common import TEACHER_LOCK, splits, store_for, teacher_for
from unast_core.activations import mean_loss
from unast_core.config import ScoreConfig, TeacherConfig
from unast_core.modeling_unast import applies, candidate_name
from unast_core.scoring import score_sublayer
from unast_core.store import atomic_path, content_key, read_json, write_json


@task(name="score", tags=["unast-compute"])
def score(prep: dict, states: dict, teacher_cfg: TeacherConfig, index: int, pool: list[dict], weights: list,
          cfg: ScoreConfig) -> dict:
    """Stage 3 for one sublayer: Eq. 2 scores of every candidate (a failed candidate scores NaN);
    `weights[j]` is candidate j's trained weights at this sublayer (see `score_sublayer`)."""
    key = content_key(prep["data_key"], pool, weights, cfg.model_dump(), index)
    path = store_for(prep).path("scores", key[:2], f"{key}.json")
    if path.exists():
        return {**read_json(path), "reused": True}
    with TEACHER_LOCK:
        result = score_sublayer(teacher_for(teacher_cfg).model, splits(prep)["validation"][:cfg.seqs], states["dir"], index,
                                pool, mean_loss(states, cfg.seqs), cfg.batch_size, weights, metric=cfg.metric)
    result.update(index=index, name=prep["sublayers"][index], pool=pool)
    write_json(path, result)
    return {**result, "reused": False}


@task(name="score-table")
def score_table(prep: dict, rows: list[dict], pool: list[dict], weights: list[list]) -> str:
    """Gather per-sublayer scores into scores/<key>.json (the ILP's input) and a parquet table."""
    import pandas as pd

    rows = sorted(rows, key=lambda r: r["index"])
    table = {"pool": pool, "sublayers": [r["name"] for r in rows], "scores": [r["scores"] for r in rows],
             "losses": [r["losses"] for r in rows], "errors": [r["errors"] for r in rows],
             "weights": [[w if isinstance(w, str) else None for w in row] for row in weights]}
    store = store_for(prep)
    path = store.scores(content_key(table))
    write_json(path, table)
    names = [candidate_name(spec) for spec in pool]
    frame = pd.DataFrame([{"sublayer": r["name"], "index": r["index"], "candidate": names[j], "score": r["scores"][j],
                           "val_loss": r["losses"][j], "error": r["errors"][j]}
                          for r in rows for j, spec in enumerate(pool) if applies(spec, r["name"].split(".")[1])])
    with atomic_path(path.with_suffix(".parquet")) as tmp:
        frame.to_parquet(tmp)
    return str(path)
