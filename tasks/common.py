"""What every task shares: the teacher (loaded once per worker thread), token splits, progress bars, and the
host locks that keep timing apart from compute.

A task runs in whichever worker process the runner picks: it loads what it needs from the run store and
the converted-teacher cache (both on a filesystem every worker sees), and returns a small record.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import torch
from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from tqdm.auto import tqdm

from unast_core.config import TeacherConfig
from unast_core.locks import unit_lock  # noqa: F401 - the flow locks its output directories through here
from unast_core.model.teacher import Teacher, load_teacher
from unast_core.records import Prepared
from unast_core.store import read_tensors

THREADS_ENV = "UNAST_TORCH_THREADS"  # set on Dask workers: torch threads per worker process


@functools.lru_cache(maxsize=4)
def _teacher(model: str, cache_dir: str | None, trust_remote_code: bool, allow_pickle: bool, thread: int) -> Teacher:
    teacher = load_teacher(model, Path(cache_dir) if cache_dir else None, trust_remote_code, allow_pickle)
    teacher.model.requires_grad_(False)
    return teacher


def teacher_for(cfg: TeacherConfig) -> Teacher:
    """The teacher, loaded once per process and thread. Tasks swap its sublayers in place while scoring and
    timing, so two tasks running at once in one process (a Dask worker with several threads) each get
    their own copy: correctness never rests on a lock."""
    setup_worker()
    return _teacher(cfg.model, str(cfg.cache_dir) if cfg.cache_dir else None, cfg.trust_remote_code,
                    cfg.allow_pickle, threading.get_ident())


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task run; a plain logger when called outside one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("unast")


def setup_worker() -> None:
    """Torch threads of a Dask worker process: cores / workers, set by the runner in the worker's env."""
    threads = os.environ.get(THREADS_ENV)
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def splits(prep: Prepared) -> dict[str, torch.Tensor]:
    """Every split of the run's data: calibration, validation, test, and the held-out and select rows if set."""
    data = read_tensors(Path(prep.data_path))
    for path in prep.outside_paths.values():
        data.update(read_tensors(Path(path)))
    return data


def progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def on_device(device: str, *models: torch.nn.Module) -> Iterator[None]:
    """Run `models` on `device`; they go back to the CPU whatever happens (the teacher is cached)."""
    for model in models:
        model.to(device)
    try:
        yield
    finally:
        for model in models:
            model.to("cpu")


def _host_lock_path() -> Path:
    return Path(os.environ.get("UNAST_HOST_LOCK", Path(tempfile.gettempdir()) / f"unast-host-{os.getuid()}.lock"))


@contextlib.contextmanager
def _host_lock(mode: int) -> Iterator[None]:
    with open(_host_lock_path(), "a+") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def computing() -> contextlib.AbstractContextManager[None]:
    """Held (shared) by every compute task while it trains or runs the teacher: many at once on a host."""
    return _host_lock(fcntl.LOCK_SH)


def timing() -> contextlib.AbstractContextManager[None]:
    """Held (exclusive) by every task that times latency: it waits until no compute task of any UNAST run
    on this host is running, and no compute task starts until it is done. Host-local file lock (flock)."""
    return _host_lock(fcntl.LOCK_EX)


def reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """This process's peak resident memory since the last `reset_peak_rss`, in MB (None off Linux). Stages
    fanned out on Dask workers use the workers' memory, which this does not see."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
