from __future__ import annotations

from prefect import task
from safetensors.torch import load_model, save_model

from tasks.common import on_device, progress, splits, store_for, teacher_for
from unast_core.assemble import build_student
from unast_core.config import TeacherConfig, TrainConfig
from unast_core.finetune import Diverged, finetune
from unast_core.store import atomic_path, content_key, read_json, write_json


@task(name="train", tags=["unast-compute"])
def train(prep: dict, teacher_cfg: TeacherConfig, layers: list[dict], candidates: dict[str, str], init: str | None,
          cfg: TrainConfig, seed: int, eval_batch_size: int, label: str, device: str = "cpu",
          measure_before: bool = True) -> dict:
    """Stages 6-7: finetune one architecture, starting from the teacher's and the distilled candidates'
    weights (`candidates`: {sublayer index: file}) or from a student checkpoint `init`; a diverged run is
    reported as failed, so the other architectures' work stands."""
    out = store_for(prep).path("train", content_key(prep["data_key"], layers, candidates, init, cfg.model_dump(), seed))
    if (out / "metrics.json").exists():
        return {**read_json(out / "metrics.json"), "reused": True}
    teacher = teacher_for(teacher_cfg)
    student = build_student(teacher.model, layers, None if init else candidates)
    if init:
        load_model(student, init)
    bar = progress(cfg.steps, label)
    data = splits(prep)
    try:
        with on_device(device, teacher.model, student):
            metrics = finetune(student, teacher.model, data["calibration"], data["validation"], cfg, seed,
                               eval_batch_size, on_step=lambda step, m: (bar.update(1), bar.set_postfix(loss=f"{m['loss']:.3f}")),
                               measure_before=measure_before)
    except Diverged as exc:
        return {"status": "failed", "error": str(exc), "label": label, "layers": layers}
    finally:
        bar.close()
    weights = out / "student.safetensors"
    with atomic_path(weights) as tmp:
        save_model(student, str(tmp))
    result = {"status": "ok", "label": label, "layers": layers, "candidates": candidates, "weights": str(weights), **metrics}
    write_json(out / "metrics.json", result)
    return {**result, "reused": False}
