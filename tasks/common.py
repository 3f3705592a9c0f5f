"""What every task shares: the teacher (loaded once per process), token splits, progress bars, the store."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unast_core.config import TeacherConfig
from unast_core.store import RunStore, read_tensors
from unast_core.teacher import Teacher, load_teacher

# Tasks swap a teacher's sublayers in place while scoring / timing: one user at a time per process.
TEACHER_LOCK = threading.RLock()


@functools.lru_cache(maxsize=2)
def _teacher(model: str, cache_dir: str | None, trust_remote_code: bool) -> Teacher:
    teacher = load_teacher(model, Path(cache_dir) if cache_dir else None, trust_remote_code)
    teacher.model.requires_grad_(False)
    return teacher


def teacher_for(cfg: TeacherConfig) -> Teacher:
    return _teacher(cfg.model, str(cfg.cache_dir) if cfg.cache_dir else None, cfg.trust_remote_code)


def store_for(prep: dict) -> RunStore:
    return RunStore(Path(prep["home"]), prep["fingerprint"])


def splits(prep: dict) -> dict[str, torch.Tensor]:
    return read_tensors(Path(prep["data_path"]))


def progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def on_device(device: str, *models: torch.nn.Module):
    """Hold the teacher lock and run `models` on `device`; they go back to the CPU whatever happens
    (the cached teacher is shared by every task in the process)."""
    with TEACHER_LOCK:
        for model in models:
            model.to(device)
        try:
            yield
        finally:
            for model in models:
                model.to("cpu")
