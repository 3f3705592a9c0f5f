"""Post-training compression after the final finetune (`ptq.*`), or of the teacher alone (`--method gptq`)."""

from __future__ import annotations

from prefect import task
from safetensors.torch import load_model, save_model

from tasks.common import computing, progress, splits, teacher_for
from unast_core.compress.apply import compress_model, model_bytes
from unast_core.compress.spec import check_pattern
from unast_core.config import CompressConfig
from unast_core.errors import UnastError
from unast_core.model.assemble import build_student
from unast_core.model.modeling_unast import family_of, get_blocks
from unast_core.records import Prepared, Trained
from unast_core.store import atomic_path, content_key, read_json, write_json, write_tensors


def check_ptq(prep: Prepared, cfg: CompressConfig | None) -> None:
    """Stop before any work when an n:m pattern does not divide the teacher's widths (a config error)."""
    if cfg is not None and cfg.method == "sparsegpt":
        try:
            check_pattern(cfg.sparsity, "both", prep.dims)
        except ValueError as exc:
            raise UnastError(f"invalid config field 'ptq.sparsity': {exc}") from None


@task(name="post-compress", tags=["unast-compute"])
def post_compress(prep: Prepared, trained: Trained, cfg: CompressConfig, batch_size: int) -> Trained:
    """Compress the body's linear layers of a finetuned student, calibrated on its own activations over the
    calibration split. Returns the student with `weights` the compressed weights (as stored, in fp32, so the
    evaluation measures what is exported) and `compression` the packed file, metadata and Appendix D size."""
    out = prep.store().path("ptq", content_key(prep.data_key, trained.weights, cfg.model_dump(mode="json")))
    if (out / "compression.json").exists():
        return trained.model_copy(update={"weights": str(out / "student.safetensors"),
                                          "compression": read_json(out / "compression.json"), "reused": True})
    student = build_student(teacher_for(prep.teacher).model, trained.layers)
    load_model(student, trained.weights)
    blocks = get_blocks(student.student, family_of(student.student.config))
    before = model_bytes(student, blocks)
    bar = progress(len(blocks), f"{cfg.method} blocks")
    with computing():
        packed, meta = compress_model(student, blocks, splits(prep)["calibration"], cfg, batch_size,
                                      on_block=lambda b: bar.update(1))
    bar.close()
    size = model_bytes(student, blocks, meta)
    with atomic_path(out / "student.safetensors") as tmp:
        save_model(student, str(tmp))
    write_tensors(out / "packed.safetensors", {f"{layer}.{k}": v for layer, part in packed.items()
                                               for k, v in part.items()})
    compression = {**cfg.model_dump(mode="json"), "layers": meta, "packed": str(out / "packed.safetensors"),
                   "app_d_bytes": size["bytes"], "app_d_bytes_uncompressed": before["bytes"],
                   "size_ratio": size["bytes"] / before["bytes"]}
    write_json(out / "compression.json", compression)
    return trained.model_copy(update={"weights": str(out / "student.safetensors"), "compression": compression})
