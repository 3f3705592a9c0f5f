"""Tasks of the comparison methods (`unast run --method ...`): block importance, the uniform widths' layers
and a from-scratch initial checkpoint. All are content-keyed in the store."""

from __future__ import annotations

from prefect import task
from safetensors.torch import save_model

from tasks.common import computing, progress, splits, teacher_for
from unast_core.records import Prepared, States
from unast_core.search.baselines import block_influence, loss_without_block, scratch_student, uniform_layers
from unast_core.store import atomic_path, content_key, read_json, write_json


@task(name="block-importance", tags=["unast-compute"])
def block_importance(prep: Prepared, states: States, method: str, seqs: int, batch_size: int) -> dict:
    """Importance of every block for depth pruning on the first `seqs` validation sequences (the scoring
    set): ShortGPT's block influence, or (Shortened LLaMA) the validation loss without the block.
    Returns {"importance": [...], "criterion", "reused"}."""
    key = content_key(prep.fingerprint, states.dir, seqs, batch_size)
    path = prep.store().path("baselines", f"{method}-{key}.json")
    if path.exists():
        return {**read_json(path), "reused": True}
    n_blocks = len(prep.sublayers) // 2
    if method == "shortgpt":
        importance, criterion = block_influence(states.dir, n_blocks, seqs), "block influence (1 - cos)"
    else:
        tokens = splits(prep)["validation"][:seqs]
        bar = progress(n_blocks, "loss without each block")
        with computing():
            importance = loss_without_block(teacher_for(prep.teacher).model, tokens, states.dir, batch_size,
                                            on_block=lambda b, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.2f}")))
        bar.close()
        criterion = "validation loss without the block"
    result = {"method": method, "criterion": criterion, "importance": importance}
    write_json(path, result)
    return {**result, "reused": False}


@task(name="uniform-layers")
def uniform_grid(prep: Prepared, widths: list[float]) -> list[list[dict]]:
    """The architecture of each uniform width (every block keeps that share of KV groups and MLP channels)."""
    config = teacher_for(prep.teacher).model.config
    return [uniform_layers(config, w) for w in widths]


@task(name="scratch-init")
def scratch_init(prep: Prepared, layers: list[dict], seed: int) -> str:
    """A checkpoint of architecture `layers` with every weight drawn afresh (training from scratch)."""
    path = prep.store().path("baselines", f"scratch-{content_key(prep.fingerprint, layers, seed)}.safetensors")
    if not path.exists():
        student = scratch_student(teacher_for(prep.teacher).model, layers, seed)
        with atomic_path(path) as tmp:
            save_model(student, str(tmp))
    return str(path)
