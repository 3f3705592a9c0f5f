"""Tasks of the comparison methods (`unast run --method ...`): block importance and a from-scratch
initial checkpoint. Both are content-keyed in the store."""

from __future__ import annotations

from prefect import task
from safetensors.torch import save_model

from tasks.common import TEACHER_LOCK, progress, splits, store_for, teacher_for
from unast_core.baselines import block_influence, loss_without_block, scratch_student
from unast_core.config import TeacherConfig
from unast_core.store import atomic_path, content_key, read_json, write_json


@task(name="block-importance", tags=["unast-compute"])
def block_importance(prep: dict, states: dict, teacher_cfg: TeacherConfig, method: str, seqs: int, batch_size: int) -> dict:
    """Importance of every block for depth pruning on the first `seqs` validation sequences (the scoring
    set): ShortGPT's block influence, or (Shortened LLaMA) the validation loss without the block.
    Returns {"importance": [...], "criterion", "reused"}."""
    key = content_key(prep["fingerprint"], states["dir"], seqs, batch_size)
    path = store_for(prep).path("baselines", f"{method}-{key}.json")
    if path.exists():
        return {**read_json(path), "reused": True}
    n_blocks = len(prep["sublayers"]) // 2
    if method == "shortgpt":
        importance, criterion = block_influence(states["dir"], n_blocks, seqs), "block influence (1 - cos)"
    else:
        tokens = splits(prep)["validation"][:seqs]
        bar = progress(n_blocks, "loss without each block")
        with TEACHER_LOCK:
            importance = loss_without_block(teacher_for(teacher_cfg).model, tokens, states["dir"], batch_size,
                                            on_block=lambda b, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.2f}")))
        bar.close()
        criterion = "validation loss without the block"
    result = {"method": method, "criterion": criterion, "importance": importance}
    write_json(path, result)
    return {**result, "reused": False}


@task(name="scratch-init")
def scratch_init(prep: dict, teacher_cfg: TeacherConfig, layers: list[dict], seed: int) -> str:
    """A checkpoint of architecture `layers` with every weight drawn afresh (training from scratch)."""
    path = store_for(prep).path("baselines", f"scratch-{content_key(prep['fingerprint'], layers, seed)}.safetensors")
    if not path.exists():
        student = scratch_student(teacher_for(teacher_cfg).model, layers, seed)
        with atomic_path(path) as tmp:
            save_model(student, str(tmp))
    return str(path)
