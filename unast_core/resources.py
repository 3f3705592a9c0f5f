"""What a run will take from the machine, known before it takes it: the teacher's memory, from its config
alone (no weight allocated), and the disk the run will write, against what is free.

The teacher is loaded in fp32 (`load_teacher`), so it needs 4 bytes a parameter, plus a margin for the load
itself (the checkpoint's pages while they are copied, the tokenizer, the interpreter). The parameter count
comes from building the model on the meta device, which allocates nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from unast_core.errors import UnastError

LOAD_MARGIN = 1.2      # fp32 weights x this, plus BASE_BYTES: what loading a teacher takes at its peak
BASE_BYTES = 1 << 30   # the interpreter, torch, transformers and Prefect: about 1 GB before any weight


def config_params(config) -> int:
    """Parameters of the model a transformers config describes, counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def available_memory() -> int | None:
    """Bytes this process can still take: MemAvailable, or the cgroup's limit less its usage when lower."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free


def teacher_bytes(params: int) -> int:
    return int(params * 4 * LOAD_MARGIN) + BASE_BYTES


def check_teacher_memory(config, source: str) -> int:
    """Refuse, before any weight is allocated, a teacher that cannot fit in the memory that is free. Returns
    its parameter count. `UNAST_MEMORY_CHECK=0` skips the check."""
    params = config_params(config)
    need, free = teacher_bytes(params), available_memory()
    if free is not None and need > free and os.environ.get("UNAST_MEMORY_CHECK", "1") != "0":
        raise UnastError(f"teacher {source} is too large for this machine: {params / 1e9:.2f}B parameters need "
                         f"about {need / 1e9:.1f} GB of memory in fp32, and {free / 1e9:.1f} GB are available; "
                         f"give a smaller --model or free memory")
    return params


def run_disk_bytes(params: int, hidden: int, boundaries: int, calib_rows: int, valid_rows: int, seq_len: int,
                   compute_bytes: int, candidates: int, trainings: int, exports: int) -> int:
    """What a run writes, at most: teacher states (calibration in the compute dtype, validation in fp32),
    distilled candidates (each at most one sublayer: at most the teacher's params over the sublayers),
    students (select and final finetunes, fp32), exports (store, output hard-linked, MLflow's copy)."""
    states = boundaries * seq_len * hidden * (calib_rows * compute_bytes + valid_rows * 4)
    sublayer = params / max(boundaries - 1, 1)
    return int(states + candidates * sublayer * 4 + trainings * params * 4 + exports * 2 * params * 4)


def disk_warning(path: Path, need: int) -> str | None:
    """A one-line warning when the filesystem of `path` has less free space than `need` bytes."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    if free >= need:
        return None
    return (f"this run may write up to {need / 1e9:.2f} GB under {path} and only {free / 1e9:.2f} GB are free; "
            f"free space (`unast store du` / `unast store gc`) or point --home elsewhere")
