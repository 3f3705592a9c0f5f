"""UNAST as a service: `unast deploy` (a deployment on a work pool of the Prefect server at PREFECT_API_URL)
and `unast serve` (this process runs the deployment's flow runs itself, no pool).

A deployment's parameter is the whole typed `RunConfig`: the Prefect UI renders it as a form, prefilled
with the config given here, and a run started from the form runs with the values edited there. A worker
of the pool imports the flow as the module `flows.compress` (entrypoint `flows.compress.compress`), so
every worker host needs unast installed; relative `output` and `home` are made absolute here, because a
process worker starts each run in a temporary directory.

Heavy tasks carry the tags `unast-compute` (training, capture, scoring) and `unast-timing` (latency
measurement); `unast deploy` creates a Prefect tag concurrency limit for each when the server has none, so
that overlapping runs (a schedule that fires while the last run is still going, or a run started by hand)
queue for the machine instead of sharing it. An existing limit is left as the server's admin set it.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from unast_core.config import RunConfig
from unast_core.errors import UnastError

FLOW_NAME = "unast-compress"
COMPUTE_TAG, TIMING_TAG = "unast-compute", "unast-timing"


def require_server() -> str:
    """The Prefect API a deployment registers with: PREFECT_API_URL, never a temporary local server (a
    deployment on one would vanish when this command exits)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UnastError("PREFECT_API_URL is not set: start a server (prefect server start) and "
                         "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    return url


def service_config(config: RunConfig) -> RunConfig:
    """The config a deployment stores: `output` and `home` absolute (a worker runs in a temporary directory)."""
    return config.model_copy(update={"output": Path(config.output).resolve(), "home": Path(config.home).resolve()})


def parameters(config: RunConfig) -> dict[str, Any]:
    return {"config": service_config(config).model_dump(mode="json")}


def schedule_kwargs(cron: str | None, interval: float | None, timezone: str | None) -> dict[str, Any]:
    if cron and interval:
        raise UnastError("give --cron or --interval, not both")
    if interval is not None and interval <= 0:
        raise UnastError(f"--interval {interval:g}: give a number of seconds above 0")
    if cron:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            return {"schedule": CronSchedule(cron=cron, timezone=timezone or "UTC")}
        except ValueError as exc:  # pydantic's ValidationError: the first error's message is the reason
            reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise UnastError(f"--cron {cron!r}: {reason}; e.g. '0 2 * * *' (every night at 02:00)") from None
    if interval:
        from prefect.client.schemas.schedules import IntervalSchedule

        return {"schedule": IntervalSchedule(interval=datetime.timedelta(seconds=interval), timezone=timezone or "UTC")}
    return {}


def ensure_pool(client, pool: str, pool_type: str) -> bool:
    """Create the work pool `pool` of type `pool_type` with that type's default job template, unless it
    exists. Returns whether it was created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        existing = client.read_work_pool(pool)
    except ObjectNotFound:
        existing = None
    if existing is not None:
        if existing.type != pool_type:
            raise UnastError(f"work pool {pool!r} exists with type {existing.type!r}, not {pool_type!r}; "
                             f"give --pool-type {existing.type} or another --pool")
        return False
    template = _default_job_template(pool_type)
    client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type, base_job_template=template))
    return True


def _default_job_template(pool_type: str) -> dict[str, Any]:
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    template = run_coro_as_sync(get_default_base_job_template_for_infrastructure_type(pool_type))
    if template is None:
        raise UnastError(f"unknown work pool type {pool_type!r}; use process, or create the pool with "
                         f"`prefect work-pool create` and pass its name")
    return template


def ensure_limits(client, limits: dict[str, int]) -> dict[str, tuple[int, bool]]:
    """A tag concurrency limit per tag unless one is set: {tag: (limit in force, created now)}."""
    from prefect.exceptions import ObjectNotFound

    out = {}
    for tag, limit in limits.items():
        try:
            out[tag] = (client.read_concurrency_limit_by_tag(tag).concurrency_limit, False)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
            out[tag] = (limit, True)
    return out


def deploy(config: RunConfig, name: str, pool: str, pool_type: str = "process", cron: str | None = None,
           interval: float | None = None, timezone: str | None = None, tags: list[str] | None = None,
           compute_limit: int | None = None) -> dict[str, Any]:
    """Register the deployment `unast-compress/<name>` on the server; create its pool and the heavy tasks'
    concurrency limits when missing (compute: one task at a time with the serial runner, else one per Dask
    worker; timing: always 1). Returns what was done (ids, limits, whether the pool was created)."""
    orchestration = config.orchestration
    if compute_limit is None:
        compute_limit = 1 if orchestration.runner == "serial" else orchestration.workers or 2
    if compute_limit < 1:
        raise UnastError(f"--compute-limit {compute_limit}: give 1 or more")
    require_server()
    schedule = schedule_kwargs(cron, interval, timezone)
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import EntrypointType

    from flows.compress import compress

    with get_client(sync_client=True) as client:
        _check_reachable(client)
        created = ensure_pool(client, pool, pool_type)
        limits = ensure_limits(client, {COMPUTE_TAG: compute_limit, TIMING_TAG: 1})
    deployment_id = compress.deploy(
        name, work_pool_name=pool, build=False, push=False, parameters=parameters(config),
        tags=sorted({"unast", *(tags or [])}), entrypoint_type=EntrypointType.MODULE_PATH, print_next_steps=False,
        ignore_warnings=True,  # the hint that `serve` suits local development: this is the pool path on purpose
        description=f"UNAST compression, preset {config.preset}; edit the run config in the parameter form",
        **schedule)
    return {"deployment_id": str(deployment_id), "deployment": f"{FLOW_NAME}/{name}", "pool": pool,
            "pool_created": created, "limits": limits}


def _check_reachable(client) -> None:
    import httpx

    try:
        client.api_healthcheck()
        client.read_work_pools(limit=1)
    except (httpx.HTTPError, OSError) as exc:
        from prefect.settings import PREFECT_API_URL

        raise UnastError(f"the Prefect server at {PREFECT_API_URL.value()} does not answer ({exc}); "
                         "start it with `prefect server start`") from None


def serve(config: RunConfig, name: str, cron: str | None = None, interval: float | None = None,
          timezone: str | None = None, tags: list[str] | None = None) -> None:
    """Run the deployment's flow runs in this process until interrupted (`flow.serve`, no work pool)."""
    require_server()
    schedule = schedule_kwargs(cron, interval, timezone)
    from flows.compress import compress

    compress.serve(name=name, parameters=parameters(config), tags=sorted({"unast", *(tags or [])}),
                   description=f"UNAST compression, preset {config.preset} (served)", **schedule)


def summary(done: dict[str, Any]) -> str:
    limits = ", ".join(f"{tag} {limit}{' (created)' if new else ''}" for tag, (limit, new) in done["limits"].items())
    pool = f"{done['pool']}{' (created)' if done['pool_created'] else ''}"
    return (f"deployment {done['deployment']} ({done['deployment_id']}) on work pool {pool}; task concurrency "
            f"limits: {limits}\nstart a worker: prefect worker start --pool {done['pool']}\n"
            f"run it now:     prefect deployment run {done['deployment']}")

