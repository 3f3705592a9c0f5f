from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from tasks.common import on_device, store_for, teacher_for
from unast_core.config import CostConfig, TeacherConfig
from unast_core.cost import build_lut
from unast_core.store import content_key, read_json, write_json


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@task(name="cost", tags=["unast-compute"])
def cost_table(prep: dict, teacher_cfg: TeacherConfig, pool: list[dict], cfg: CostConfig) -> dict:
    """Stage 4: the lookup table for one device and regime, reused across runs and budgets."""
    device = resolve_device(cfg.device)
    path = store_for(prep).lut(device, content_key(pool, cfg.model_dump(), torch.get_num_threads()))
    if path.exists():
        return {"path": str(path), "reused": True}
    model = teacher_for(teacher_cfg).model
    with on_device(device, model):
        lut = build_lut(model, pool, cfg.regime, cfg.warmup, cfg.repeats, cfg.calibration_samples)
    write_json(path, lut)
    return {"path": str(path), "reused": False}


@task(name="verify-latency", tags=["unast-compute"])
def verify_latency(prep: dict, teacher_cfg: TeacherConfig, search_path: str, cfg: CostConfig) -> list[float]:
    """Measured latency ratio of each searched architecture against the teacher (interleaved); stored
    next to the search result so that a rerun makes the same decisions."""
    from unast_core.cost import measure_ratios

    device = resolve_device(cfg.device)
    path = Path(search_path).with_suffix(f".measured-{device}.json")
    if path.exists():
        return read_json(path)
    model = teacher_for(teacher_cfg).model
    with on_device(device, model):
        ratios = measure_ratios(model, [a["layers"] for a in read_json(search_path)["architectures"]],
                                cfg.regime, cfg.warmup, cfg.repeats)
    write_json(path, ratios)
    return ratios
