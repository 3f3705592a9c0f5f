from __future__ import annotations

from pathlib import Path

from prefect import task
from safetensors.torch import load_model, save_model

from tasks.common import computing, on_device, progress, splits, teacher_for
from unast_core.config import TrainConfig
from unast_core.model.assemble import build_student, freeze_kept
from unast_core.records import Prepared, Trained
from unast_core.search.latency import resolve_device
from unast_core import faults
from unast_core.integrity import intact
from unast_core.locks import unit_lock
from unast_core.store import atomic_path, content_key, read_json, write_json
from unast_core.train.finetune import Diverged, finetune


@task(name="train", tags=["unast-compute"])
def train(prep: Prepared, layers: list[dict], candidates: dict[str, str], init: str | None, cfg: TrainConfig,
          seed: int, eval_batch_size: int, label: str, device: str = "auto", measure_before: bool = True,
          validation: str = "validation") -> Trained:
    """Stages 6-7: finetune one architecture, starting from the teacher's and the distilled candidates'
    weights (`candidates`: {sublayer index: file}) or from a student checkpoint `init`; a diverged run is
    reported as failed, so the other architectures' work stands. The validation loss is measured on the split
    `validation` ('select' for data.select_on's rows)."""
    # `trainable` enters the key only when it is not the default, so stores written before it existed stay valid
    settings = cfg.model_dump(exclude={"trainable"} if cfg.trainable == "all" else None)
    # likewise the rows validated on, which change the loss recorded, not the weights (an outside split's file
    # name holds its key)
    ranked_on = [Path(prep.outside_paths[validation]).stem] if validation != "validation" else []
    out = prep.store().path("train", content_key(prep.data_key, layers, candidates, init, settings, seed,
                                                 *prep.compute_key(), *ranked_on))
    with unit_lock(out):
        if intact(out / "metrics.json") and intact(out / "student.safetensors"):
            stored = read_json(out / "metrics.json")
            return Trained(**{k: v for k, v in stored.items() if k in Trained.model_fields}, reused=True)
        teacher = teacher_for(prep.teacher)
        student = build_student(teacher.model, layers, None if init else candidates)
        if init:
            load_model(student, init)
        if cfg.trainable == "replaced" and not freeze_kept(student, layers):
            cfg = cfg.model_copy(update={"steps": 0})  # nothing replaced has weights: nothing to train
        bar = progress(cfg.steps, label)
        data = splits(prep)
        try:
            with computing(), on_device(resolve_device(device), teacher.model, student):
                metrics = finetune(student, teacher.model, data["calibration"], data[validation], cfg, seed,
                                   eval_batch_size, measure_before=measure_before, dtype=prep.compute_dtype,
                                   on_step=lambda step, m: (bar.update(1), bar.set_postfix(loss=f"{m['loss']:.3f}"),
                                                            label == "finetune" and faults.point("finetune")))
        except Diverged as exc:
            return Trained(status="failed", error=str(exc), label=label, layers=layers)
        finally:
            bar.close()
        weights = out / "student.safetensors"
        with atomic_path(weights) as tmp:
            save_model(student, str(tmp))
        kept = ("val_loss_before", "val_loss", "steps", "tokens", "dtype", "wall_s", "curve")
        result = {"status": "ok", "label": label, "layers": layers, "candidates": candidates, "weights": str(weights),
                  **{k: metrics[k] for k in kept}}
        write_json(out / "metrics.json", result)
        if label.startswith("select"):
            faults.point("select")
        return Trained(**result)
