from __future__ import annotations

from prefect import task

from tasks.common import computing, on_device, teacher_for
from unast_core.config import DistillConfig
from unast_core.model.adapters import Adapter
from unast_core.model.operators import candidate_state
from unast_core.model.ops import OpSpec
from unast_core.records import Distilled, Prepared, States
from unast_core.search.latency import resolve_device
from unast_core import faults
from unast_core.integrity import intact
from unast_core.locks import unit_lock
from unast_core.store import content_key, read_json, write_json, write_tensors
from unast_core.train.distill import distill

SUMMARY = ("nmse_identity", "nmse_init", "nmse", "loss_init", "loss", "steps", "early_stop", "tokens", "params",
           "wall_s", "init", "loss_name", "dtype")


@task(name="distill", tags=["unast-compute"])
def distill_candidate(prep: Prepared, states: States, index: int, pool_index: int, cfg: DistillConfig, init: str,
                      seed: int, device: str = "cpu") -> Distilled:
    """Stage 2 for one (sublayer, candidate): layer-wise distillation on the stored teacher states. The
    result is content-keyed (teacher, data, candidate, hyper-parameters), so a rerun skips it; a diverged
    or crashed candidate is recorded as failed (and not cached), so the others' work stands. `device`: where
    to train (`auto`: this worker's GPU when it has one)."""
    spec = prep.pool[pool_index]
    name, sublayer = OpSpec.of(spec).name, prep.sublayers[index]
    key = content_key(prep.fingerprint, states.dir, index, spec, cfg.model_dump(), init, seed,
                      *prep.compute_key())
    base = prep.store().path("candidates", sublayer, f"{name}-{key}")
    row = {"index": index, "pool_index": pool_index, "sublayer": sublayer, "candidate": name, "spec": spec}
    with unit_lock(base):
        if intact(base.with_suffix(".json")) and intact(stored_weights(base)):
            stored = read_json(base.with_suffix(".json"))
            return Distilled(**row, status=stored["status"], error=stored.get("error"), weights=stored.get("weights"),
                             metrics={k: stored.get(k) for k in SUMMARY}, reused=True)
        try:
            teacher = teacher_for(prep.teacher).model
            with computing(), on_device(resolve_device(device), teacher):
                modules, metrics = distill(Adapter(teacher), index, spec, states.dir, cfg, init, seed,
                                           dtype=prep.compute_dtype)
        except Exception as exc:  # noqa: BLE001 - one candidate's failure never stops the others (not cached)
            return Distilled(**row, status="failed", error=f"{type(exc).__name__}: {exc}")
        weights = None
        if metrics["status"] == "ok":
            weights = str(write_tensors(base.with_suffix(".safetensors"), candidate_state(modules)))
        write_json(base.with_suffix(".json"), {**row, **metrics, "weights": weights})
        faults.point("distill")
        return Distilled(**row, status=metrics["status"], error=metrics.get("error"), weights=weights,
                         metrics={k: metrics.get(k) for k in SUMMARY})


def stored_weights(base):
    """The weights file a stored candidate record names (None when it has none, or no record is stored)."""
    record = base.with_suffix(".json")
    if not record.exists():
        return None
    weights = read_json(record).get("weights")
    return weights and base.with_suffix(".safetensors")
