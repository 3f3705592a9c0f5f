from __future__ import annotations

from prefect import task

from tasks.common import TEACHER_LOCK, store_for, teacher_for
from unast_core.adapters import Adapter
from unast_core.config import DistillConfig, TeacherConfig
from unast_core.distill import distill
from unast_core.modeling_unast import candidate_name
from unast_core.operators import candidate_state
from unast_core.store import content_key, read_json, write_json, write_tensors

SUMMARY = ("status", "error", "nmse_identity", "nmse_init", "nmse", "loss_init", "loss", "steps", "early_stop",
           "tokens", "params", "wall_s", "init", "loss_name")


@task(name="distill", tags=["unast-compute"])
def distill_candidate(prep: dict, states: dict, teacher_cfg: TeacherConfig, index: int, spec: dict,
                      cfg: DistillConfig, init: str, seed: int) -> dict:
    """Stage 2 for one (sublayer, candidate): layer-wise distillation on the stored teacher states. The
    result is content-keyed (teacher, data, candidate, hyper-parameters), so a rerun skips it; a diverged
    candidate is recorded as failed and left out of the search."""
    name = candidate_name(spec)
    sublayer = prep["sublayers"][index]
    key = content_key(prep["fingerprint"], states["dir"], index, spec, cfg.model_dump(), init, seed)
    base = store_for(prep).path("candidates", sublayer, f"{name}-{key}")
    row = {"index": index, "sublayer": sublayer, "candidate": name, "spec": spec}
    if base.with_suffix(".json").exists():
        metrics = read_json(base.with_suffix(".json"))
        return {**row, **{k: metrics.get(k) for k in SUMMARY}, "weights": metrics.get("weights"), "reused": True}
    try:
        with TEACHER_LOCK:
            modules, metrics = distill(Adapter(teacher_for(teacher_cfg).model), index, spec, states["dir"], cfg, init, seed)
    except Exception as exc:  # noqa: BLE001 - one candidate's failure never stops the others (not cached)
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "weights": None, "reused": False}
    weights = None
    if metrics["status"] == "ok":
        weights = str(write_tensors(base.with_suffix(".safetensors"), candidate_state(modules)))
    write_json(base.with_suffix(".json"), {**row, **metrics, "weights": weights})
    return {**row, **{k: metrics.get(k) for k in SUMMARY}, "weights": weights, "reused": False}
