from __future__ import annotations

from prefect import task

from tasks.common import teacher_for
from unast_core.config import CostConfig, DataConfig, PoolConfig, TeacherConfig
from unast_core.data.corpus import build_splits, data_fingerprint
from unast_core.model.adapters import Adapter, check_seq_len
from unast_core.model.modeling_unast import teacher_dims
from unast_core.model.operators import resolve_pool
from unast_core.records import Prepared
from unast_core.store import RunStore, write_tensors


@task(name="prepare")
def prepare(teacher_cfg: TeacherConfig, data_cfg: DataConfig, cost_cfg: CostConfig, pool_cfg: PoolConfig,
            home: str) -> Prepared:
    """Stage 0: load the teacher, check it fits and the pool suits it, tokenize and split the data once
    per content key."""
    teacher = teacher_for(teacher_cfg)
    adapter = Adapter(teacher.model)
    check_seq_len(adapter, data_cfg.seq_len, "data.seq_len")
    check_seq_len(adapter, cost_cfg.regime.seq_len, "cost.regime.seq_len")
    store = RunStore(home, teacher.fingerprint)
    data_key = data_fingerprint(data_cfg, teacher.tokenizer.name_or_path or teacher.source)
    path = store.path("data", f"{data_key}.safetensors")
    reused = path.exists()
    if not reused:
        write_tensors(path, build_splits(teacher.tokenizer, data_cfg))
    return Prepared(teacher=teacher_cfg, source=teacher.source, fingerprint=teacher.fingerprint,
                    model_type=teacher.model.config.model_type, sublayers=[s.name for s in adapter.sublayers],
                    pool=resolve_pool(pool_cfg, teacher.model.config), dims=teacher_dims(teacher.model.config),
                    teacher_params=adapter.total_params(), home=home, run_dir=str(store.root), data_key=data_key,
                    data_path=str(path), reused=reused)
