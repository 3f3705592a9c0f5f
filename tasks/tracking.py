"""The one MLflow adapter: a parent run per flow run, one nested run per stage.

Uses the client API with explicit run ids (no global active-run stack), so it is safe from task threads.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.tracking import MlflowClient  # noqa: E402

from tasks.orphans import mark_killed, owner_tags  # noqa: E402

EXPERIMENT = "unast"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    def __init__(self, home: Path):
        home = Path(home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{home / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)  # creates/migrates the database once, before any fan-out
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            EXPERIMENT, artifact_location=(home / "mlartifacts").as_uri())
        self.parent_id: str | None = None

    def start(self, run_name: str, config: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=owner_tags(config))
        self.parent_id = run.info.run_id
        self.log_params(self.parent_id, config)
        self.resumed = mark_killed(self.client, self.experiment_id, self.parent_id, config)  # crashed runs
        return self.parent_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        for key, value in _flatten(params).items():
            self.client.log_param(run_id, key, str(value)[:6000])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        for key, value in _flatten(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.client.log_metric(run_id, key, float(value), step=step)

    def log_dict(self, run_id: str, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, default=str))
            self.client.log_artifact(run_id, str(path))

    def stage(self, name: str, params: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
              dicts: dict[str, Any] | None = None, files: list[str] | None = None, dirs: dict[str, str] | None = None,
              curve: list[dict[str, float]] | None = None) -> str:
        """One nested run under the parent with everything a stage produced."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"mlflow.parentRunId": self.parent_id})
        run_id = run.info.run_id
        self.log_params(run_id, params or {})
        self.log_metrics(run_id, metrics or {})
        for point in curve or []:
            self.log_metrics(run_id, {k: v for k, v in point.items() if k != "step"}, step=int(point["step"]))
        for file_name, obj in (dicts or {}).items():
            self.log_dict(run_id, obj, file_name)
        for path in files or []:
            self.client.log_artifact(run_id, path)
        for artifact_path, directory in (dirs or {}).items():
            self.client.log_artifacts(run_id, directory, artifact_path)
        self.client.set_terminated(run_id)
        return run_id

    def finish(self, metrics: dict[str, Any], status: str = "FINISHED") -> None:
        self.log_metrics(self.parent_id, metrics)
        self.client.set_terminated(self.parent_id, status=status)

    def record(self, name: str, record: Any) -> str:
        """One nested run from a stage's record (`Record.tracked()`: params, metrics, files, dicts, curve)."""
        return self.stage(name, **record.tracked())
