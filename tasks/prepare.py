from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from prefect import task

from tasks.common import computing, progress, run_logger, teacher_for
from unast_core.config import ComputeConfig, CostConfig, DataConfig, PoolConfig, TeacherConfig
from unast_core.data.corpus import (build_outside, build_splits, data_fingerprint, generated_rows, outside_fingerprint,
                                    outside_splits)
from unast_core.data.generated import generated_key, sample_rows
from unast_core.model.adapters import Adapter, check_seq_len
from unast_core.model.modeling_unast import teacher_dims
from unast_core.model.operators import resolve_pool
from unast_core.model.targets import pool_for_target
from unast_core.records import Prepared
from unast_core.search.latency import resolve_device
from unast_core.integrity import intact
from unast_core.locks import unit_lock
from unast_core.store import RunStore, read_tensors, write_tensors
from unast_core.train.precision import fallback_note, resolve_dtype


@task(name="prepare")
def prepare(teacher_cfg: TeacherConfig, data_cfg: DataConfig, cost_cfg: CostConfig, pool_cfg: PoolConfig,
            compute: ComputeConfig, home: str, target: str = "torch") -> Prepared:
    """Stage 0: load the teacher, check it fits and the pool suits it, resolve the compute and deployment
    dtypes, sample the teacher's text once per key, tokenize and split the data once per content key.
    `target` (search.target) drops the operators the serving engine cannot run."""
    teacher = teacher_for(teacher_cfg)
    dims = teacher_dims(teacher.model.config)
    pool = pool_for_target(resolve_pool(pool_cfg, teacher.model.config), target, teacher.model.config, dims)
    adapter = Adapter(teacher.model)
    check_seq_len(adapter, data_cfg.seq_len, "data.seq_len")
    check_seq_len(adapter, cost_cfg.regime.seq_len, "cost.regime.seq_len")
    store = RunStore(home, teacher.fingerprint)
    device = resolve_device(cost_cfg.device)
    dtype = resolve_dtype(compute.dtype, device)
    if note := fallback_note(compute.dtype, device):
        run_logger().warning(note)
    deploy = resolve_dtype(cost_cfg.dtype or compute.dtype, device)
    n_generated = sum(generated_rows(data_cfg).values())
    gen_key = generated_key(n_generated, data_cfg.seq_len, data_cfg.generate_temperature, data_cfg.generate_top_p,
                            data_cfg.seed, dtype, data_cfg.generate_start) if n_generated else None
    tokenizer_name = teacher.tokenizer.name_or_path or teacher.source
    data_key = data_fingerprint(data_cfg, tokenizer_name, gen_key)
    path = store.path("data", f"{data_key}.safetensors")
    reused = _written_once(path, lambda: build_splits(teacher.tokenizer, data_cfg, teacher_samples(
        teacher, store, gen_key, n_generated, data_cfg, dtype) if n_generated else None))
    # The held-out set and select's text live in files of their own, outside the data key
    outside = {}
    for split in outside_splits(data_cfg):
        key = outside_fingerprint(data_cfg, split, tokenizer_name)
        outside[split] = str(store.path("data", f"{split}-{key}.safetensors"))
        _written_once(Path(outside[split]), lambda: {split: build_outside(teacher.tokenizer, data_cfg, split)})
    return Prepared(teacher=teacher_cfg, source=teacher.source, fingerprint=teacher.fingerprint,
                    model_type=teacher.model.config.model_type, sublayers=[s.name for s in adapter.sublayers],
                    pool=pool, dims=dims,
                    teacher_params=adapter.total_params(), home=home, run_dir=str(store.root), data_key=data_key,
                    data_path=str(path), outside_paths=outside,
                    compute_dtype=dtype, deploy_dtype=deploy, generated_key=gen_key,
                    reused=reused)


def _written_once(path: Path, build: Callable[[], dict[str, torch.Tensor]]) -> bool:
    """Write `build()`'s tensors to `path` unless an intact copy is there; True when it was reused."""
    with unit_lock(path):
        if intact(path):
            return True
        write_tensors(path, build())
        return False


def teacher_samples(teacher, store: RunStore, key: str, rows: int, cfg: DataConfig, dtype: str) -> torch.Tensor:
    """The teacher's sampled rows under `key` in the run store (sampled once, then read back)."""
    path = store.path("generated", f"{key}.safetensors")

    def sample() -> dict[str, torch.Tensor]:
        bar = progress(-(-rows // 64), "sample teacher text")
        with computing():
            tokens = sample_rows(teacher.model, teacher.tokenizer, rows, cfg.seq_len, cfg.generate_temperature,
                                 cfg.generate_top_p, cfg.seed, dtype, on_batch=lambda done, total: bar.update(1),
                                 start=cfg.generate_start)
        bar.close()
        return {"ids": tokens}

    _written_once(path, sample)
    return read_tensors(path)["ids"]
