"""The task runner that `orchestration.runner` names: where distill, score and select fan out.

- `serial`: one task at a time in this process (the default on one CPU machine).
- `dask`: a local Dask cluster of `workers` processes, each with cores / workers torch threads and one
  Dask thread, so a worker runs one task at a time; on a machine with GPUs, dask-cuda's LocalCUDACluster
  with one worker per GPU, so no two GPU tasks share a device.
- `dask://HOST:PORT`: an existing Dask scheduler (prefect-dask's DaskTaskRunner). Its workers must see the
  run store and the teacher cache at the same paths (a shared filesystem) and have unast installed.

Task runs on a Dask worker report to a Prefect API. Without one configured (`PREFECT_API_URL`), a flow runs on
a temporary local server that the workers do not know of, and each worker process would start another of its
own: about 20 s of CPU each on a 2-core box, and one left running when a worker is killed. `shared_api` starts
one server for the run and sets it in the flow's settings, which prefect-dask hands to every task it submits,
so the workers report there. That server listens on 127.0.0.1: workers on other hosts need `PREFECT_API_URL`
set to a server they can reach.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from prefect.task_runners import ThreadPoolTaskRunner

from tasks.common import THREADS_ENV
from unast_core.config import OrchestrationConfig

LOOPBACK = "127.0.0.1"  # where the local Dask cluster listens (Prefect's temporary server binds there too)


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
    # the scheduler and workers listen on loopback only, and no dashboard is served
    kwargs = {"n_workers": workers, "threads_per_worker": 1, "host": LOOPBACK, "dashboard_address": None,
              "env": {THREADS_ENV: threads, "OMP_NUM_THREADS": threads}}
    if gpus:
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster",
                              cluster_kwargs={**kwargs, "CUDA_VISIBLE_DEVICES": list(range(min(workers, gpus)))})
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={**kwargs, "processes": True})


@contextlib.contextmanager
def shared_api(cfg: OrchestrationConfig) -> Iterator[None]:
    """One temporary Prefect server for the flow and the local Dask workers it starts (see above), serial runs
    included: it dies with this process however it ends (`flows.server`)."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import owned_server

    server = owned_server()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by the worker processes the cluster spawns
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        # flush the run's logs and events while the server still answers (else they retry a dead one at exit)
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@contextlib.contextmanager
def configured_runner(cfg: OrchestrationConfig) -> Iterator[None]:
    """Inside a flow run: fan out on the runner `cfg` names. `unast run` starts the flow with that runner
    already; a deployment's run starts on the flow's default (serial) one, so the configured runner is
    started here and used by this flow run's fan-out stages."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if cfg.runner == "serial" or context is None or not isinstance(context.task_runner, ThreadPoolTaskRunner):
        yield
        return
    with task_runner(cfg) as runner, context.model_copy(update={"task_runner": runner}):
        yield
