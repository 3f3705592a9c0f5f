from __future__ import annotations

from prefect import task

from tasks.common import store_for, teacher_for
from unast_core.adapters import Adapter, check_seq_len
from unast_core.config import CostConfig, DataConfig, PoolConfig, TeacherConfig
from unast_core.data import build_splits, data_fingerprint
from unast_core.modeling_unast import teacher_dims
from unast_core.operators import resolve_pool
from unast_core.store import write_tensors


@task(name="prepare")
def prepare(teacher_cfg: TeacherConfig, data_cfg: DataConfig, cost_cfg: CostConfig, pool_cfg: PoolConfig, home: str) -> dict:
    """Stage 0: load the teacher, check it fits and the pool suits it, tokenize and split the data once
    per content key."""
    teacher = teacher_for(teacher_cfg)
    adapter = Adapter(teacher.model)
    check_seq_len(adapter, data_cfg.seq_len, "data.seq_len")
    check_seq_len(adapter, cost_cfg.regime.seq_len, "cost.regime.seq_len")
    prep = {"pool": resolve_pool(pool_cfg, teacher.model.config), "dims": teacher_dims(teacher.model.config),
            "home": home, "fingerprint": teacher.fingerprint, "source": teacher.source,
            "model_type": teacher.model.config.model_type, "n_blocks": adapter.n_blocks,
            "sublayers": [s.name for s in adapter.sublayers], "teacher_params": adapter.total_params()}
    store = store_for(prep)
    prep["data_key"] = data_fingerprint(data_cfg, teacher.tokenizer.name_or_path or teacher.source)
    path = store.path("data", f"{prep['data_key']}.safetensors")
    if not path.exists():
        write_tensors(path, build_splits(teacher.tokenizer, data_cfg))
    prep["data_path"] = str(path)
    prep["run_dir"] = str(store.root)
    return prep
