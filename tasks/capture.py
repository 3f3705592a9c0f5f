from __future__ import annotations

from prefect import task

from tasks.common import TEACHER_LOCK, progress, splits, store_for, teacher_for
from unast_core.activations import capture, is_captured, load_meta
from unast_core.config import TeacherConfig


@task(name="capture", tags=["unast-compute"])
def capture_states(prep: dict, teacher_cfg: TeacherConfig, split: str, batch_size: int, rows: int | None = None) -> dict:
    """Stage 1: residual states of the teacher at every sublayer boundary, on the first `rows` sequences
    of `split` (all when None); reused when present."""
    name = split if rows is None else f"{split}-{rows}"
    directory = store_for(prep).activations(prep["data_key"], name)
    if is_captured(directory):
        return {"dir": str(directory), "reused": True, **load_meta(directory)}
    tokens = splits(prep)[split][:rows]
    bar = progress(-(-len(tokens) // batch_size), f"capture {split}")
    with TEACHER_LOCK:
        meta = capture(teacher_for(teacher_cfg).model, tokens, directory, batch_size,
                       on_step=lambda step, total: bar.update(1))
    bar.close()
    return {"dir": str(directory), "reused": False, **meta}
