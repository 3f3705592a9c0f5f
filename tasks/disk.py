"""The free-disk check at run start: what this run may write to the store, against what is free there."""

from __future__ import annotations

from prefect import task

from tasks.common import run_logger
from unast_core.config import RunConfig
from unast_core.records import Prepared
from unast_core.resources import disk_warning, run_disk_bytes


def run_bytes(prep: Prepared, cfg: RunConfig) -> int:
    budgets = len(cfg.budgets())
    return run_disk_bytes(prep.teacher_params, prep.dims["hidden_size"], len(prep.sublayers) + 1,
                          cfg.distill.seqs, cfg.data.validation_seqs, cfg.data.seq_len,
                          2 if prep.compute_dtype == "bfloat16" else 4, len(prep.trained_pairs()),
                          budgets * (cfg.search.k + 1), budgets)


@task(name="check-disk")
def check_disk(prep: Prepared, cfg: RunConfig) -> str | None:
    """Warn (one line) when the store's filesystem has less free space than the run may write."""
    warning = disk_warning(prep.run_dir, run_bytes(prep, cfg))
    if warning:
        run_logger().warning(warning)
    return warning
