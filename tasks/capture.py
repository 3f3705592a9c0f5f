from __future__ import annotations

from prefect import task

from tasks.common import computing, progress, splits, teacher_for
from unast_core import faults
from unast_core.locks import unit_lock
from unast_core.records import Prepared, States
from unast_core.train.activations import capture, is_captured, load_meta
from unast_core.train.precision import DTYPES


@task(name="capture", tags=["unast-compute"])
def capture_states(prep: Prepared, split: str, batch_size: int, rows: int | None = None) -> States:
    """Stage 1: residual states of the teacher at every sublayer boundary, on the first `rows` sequences
    of `split` (all when None); reused when present."""
    name = split if rows is None else f"{split}-{rows}"
    # Distillation's states (the big store) in the compute dtype: bf16 halves it, and the candidates train
    # under bf16 autocast anyway (their targets are recomputed in fp32, see train.distill). The scoring states
    # stay fp32: a score is a small difference of two losses run from them.
    dtype = prep.compute_dtype if split == "calibration" else "float32"
    directory = prep.store().activations(prep.data_key, name + ("" if dtype == "float32" else f"-{dtype}"))
    with unit_lock(directory):
        reused = is_captured(directory)
        if not reused:
            tokens = splits(prep)[split][:rows]
            bar = progress(-(-len(tokens) // batch_size), f"capture {split}")
            with computing():
                capture(teacher_for(prep.teacher).model, tokens, directory, batch_size, dtype=DTYPES[dtype],
                        on_step=lambda step, total: bar.update(1))
            bar.close()
        faults.point("capture")
    meta = load_meta(directory)
    return States(dir=str(directory), split=name, reused=reused,
                  **{k: meta[k] for k in ("loss", "rows", "seq_len", "boundaries", "row_loss")})
