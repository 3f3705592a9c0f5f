from __future__ import annotations

import torch
from prefect import task

from tasks.common import on_device, teacher_for, timing
from unast_core.config import CostConfig
from unast_core.records import CostTable, Prepared
from unast_core.search.cost import add_size_costs, architecture_params, build_lut
from unast_core.search.latency import MEASUREMENT, measure_ratios, resolve_device
from unast_core.integrity import intact
from unast_core.locks import unit_lock
from unast_core.search.llama_cpp import gguf_ratios
from unast_core.store import content_key, read_json, write_json
from unast_core.train.precision import deployed


def _engine(prep: Prepared, cfg: CostConfig, model):
    """cost.engine=llama.cpp: the function that times variants as GGUFs in llama.cpp (None: PyTorch)."""
    if cfg.engine != "llama.cpp":
        return None
    from unast_core.search.llama_cpp import gguf_measure

    return gguf_measure(model, teacher_for(prep.teacher).tokenizer, prep.store().path("gguf-timing"), cfg.regime,
                        cfg.warmup, cfg.repeats, cfg.gguf_quant)


def _record(path, lut: dict, reused: bool) -> CostTable:
    return CostTable(path=str(path), device=lut["device"], regime=lut["regime"], teacher=lut["teacher"],
                     fixed=lut["fixed"], calibration=lut.get("calibration", {}).get("latency"), reused=reused)


@task(name="cost", tags=["unast-timing"])
def cost_table(prep: Prepared, cfg: CostConfig) -> CostTable:
    """Stage 4: the lookup table for one device and regime, reused across runs and budgets. Timed alone
    on the host (`timing`)."""
    device = resolve_device(cfg.device)
    path = prep.store().lut(device, content_key(prep.pool, cfg.model_dump(), torch.get_num_threads(), MEASUREMENT,
                                                *prep.deploy_key()))
    with unit_lock(path):
        if intact(path):
            lut = read_json(path)
            if "size" not in lut["costs"]:  # stored before the size cost existed: sizes need no timing
                write_json(path, add_size_costs(lut, teacher_for(prep.teacher).model))
            return _record(path, lut, True)
        with timing(), deployed(prep.deploy_dtype, teacher_for(prep.teacher).model) as (model,), \
                on_device(device, model):
            lut = build_lut(model, prep.pool, cfg.regime, cfg.warmup, cfg.repeats, cfg.calibration_samples,
                            measure=_engine(prep, cfg, model))
        lut["dtype"] = prep.deploy_dtype
        write_json(path, lut)
        return _record(path, lut, False)


@task(name="measure-architectures", tags=["unast-timing"])
def measure_architectures(prep: Prepared, layer_sets: list[list[dict]], cfg: CostConfig) -> dict[str, list[float]]:
    """Cost ratios of each architecture against the teacher: {"latency": measured, timed interleaved in one
    loop, alone on the host; "params": exact}. Stored by content, so that a rerun makes the same decisions."""
    device = resolve_device(cfg.device)
    key = content_key(layer_sets, cfg.model_dump(), MEASUREMENT, *prep.deploy_key())
    path = prep.store().path("measured", f"{device}-{key}.json")
    with unit_lock(path):
        if intact(path):
            return read_json(path)
        with timing(), deployed(prep.deploy_dtype, teacher_for(prep.teacher).model) as (model,), \
                on_device(device, model):
            measure = _engine(prep, cfg, model)
            latency = (measure_ratios(model, layer_sets, cfg.regime, cfg.warmup, cfg.repeats) if measure is None
                       else gguf_ratios(measure, layer_sets))
            ratios = {"latency": latency,
                      "params": [architecture_params(model, layers) / prep.teacher_params for layers in layer_sets]}
        write_json(path, ratios)
        return ratios
