"""The task runner that `orchestration.runner` names: where distill, score and select fan out.

- `serial`: one task at a time in this process (the default on one CPU machine).
- `dask`: a local Dask cluster of `workers` processes, each with cores / workers torch threads and one
  Dask thread, so a worker runs one task at a time; on a machine with GPUs, dask-cuda's LocalCUDACluster
  with one worker per GPU, so no two GPU tasks share a device.
- `dask://HOST:PORT`: an existing Dask scheduler (prefect-dask's DaskTaskRunner). Its workers must see the
  run store and the teacher cache at the same paths (a shared filesystem) and have unast installed.
"""

from __future__ import annotations

import os

from prefect.task_runners import ThreadPoolTaskRunner

from tasks.common import THREADS_ENV
from unast_core.config import OrchestrationConfig


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def task_runner(cfg: OrchestrationConfig):
    if cfg.runner == "serial":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if cfg.runner != "dask":
        return DaskTaskRunner(address="tcp://" + cfg.runner.split("://", 1)[1])
    gpus = _gpus()
    workers = cfg.workers or gpus or 2
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    kwargs = {"n_workers": workers, "threads_per_worker": 1, "dashboard_address": None,
              "env": {THREADS_ENV: threads, "OMP_NUM_THREADS": threads}}
    if gpus:
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster",
                              cluster_kwargs={**kwargs, "CUDA_VISIBLE_DEVICES": list(range(min(workers, gpus)))})
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={**kwargs, "processes": True})
