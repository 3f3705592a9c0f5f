"""Serve the UNAST flow as a Prefect deployment (UI parameter form, optional schedule).

    python -m deployments.deploy --name smollm2-nightly --preset cpu --budget latency=0.75 --cron "0 2 * * *"

Runs in the foreground and executes scheduled or UI-triggered runs; for work pools use `prefect deploy`
with the same entrypoint (`flows/compress.py:compress`).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from flows.compress import compress  # noqa: E402
from flows.runners import task_runner  # noqa: E402
from unast_core.config import build_config, parse_budget  # noqa: E402


def deployment_parameters(preset: str, budget: list[str]) -> dict:
    overrides = {"budget": parse_budget(budget)} if budget else {}
    return {"config": build_config(preset, overrides=overrides).model_dump(mode="json")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="unast")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--budget", action="append", default=[])
    parser.add_argument("--cron", default=None, help="schedule, e.g. '0 2 * * *'")
    parser.add_argument("--runner", default="serial", help="serial, dask or dask://HOST:PORT (fixed when served)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    config = build_config(args.preset, overrides={"orchestration": {"runner": args.runner, "workers": args.workers}})
    compress.with_options(task_runner=task_runner(config.orchestration)).serve(name=args.name, parameters=deployment_parameters(args.preset, args.budget), cron=args.cron,
                   tags=["unast"])


if __name__ == "__main__":
    main()
