from __future__ import annotations

import torch
from prefect import task

from tasks.common import on_device, store_for, teacher_for
from unast_core.config import CostConfig, TeacherConfig
from unast_core.cost import MEASUREMENT, architecture_params, build_lut, measure_ratios
from unast_core.store import content_key, read_json, write_json


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@task(name="cost", tags=["unast-compute"])
def cost_table(prep: dict, teacher_cfg: TeacherConfig, pool: list[dict], cfg: CostConfig) -> dict:
    """Stage 4: the lookup table for one device and regime, reused across runs and budgets."""
    device = resolve_device(cfg.device)
    path = store_for(prep).lut(device, content_key(pool, cfg.model_dump(), torch.get_num_threads(), MEASUREMENT))
    if path.exists():
        return {"path": str(path), "reused": True}
    model = teacher_for(teacher_cfg).model
    with on_device(device, model):
        lut = build_lut(model, pool, cfg.regime, cfg.warmup, cfg.repeats, cfg.calibration_samples)
    write_json(path, lut)
    return {"path": str(path), "reused": False}


@task(name="measure-architectures", tags=["unast-compute"])
def measure_architectures(prep: dict, teacher_cfg: TeacherConfig, layer_sets: list[list[dict]], cfg: CostConfig) -> dict:
    """Cost ratios of each architecture against the teacher: {"latency": measured, timed interleaved in one
    loop; "params": exact}. Stored by content, so that a rerun makes the same decisions."""
    device = resolve_device(cfg.device)
    path = store_for(prep).path("measured", f"{device}-{content_key(layer_sets, cfg.model_dump(), MEASUREMENT)}.json")
    if path.exists():
        return read_json(path)
    model = teacher_for(teacher_cfg).model
    with on_device(device, model):
        ratios = {"latency": measure_ratios(model, layer_sets, cfg.regime, cfg.warmup, cfg.repeats),
                  "params": [architecture_params(model, layers) / prep["teacher_params"] for layers in layer_sets]}
    write_json(path, ratios)
    return ratios
