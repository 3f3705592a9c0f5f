"""The one MLflow adapter: a parent run per flow run, one nested run per stage.

Uses the client API with explicit run ids (no global active-run stack), so it is safe from task threads.
Where runs go: the `tracking.uri` setting, else MLFLOW_TRACKING_URI, else `sqlite:///<home>/mlflow.db`. On an
http(s) tracking server the artifacts go to the server's artifact store; credentials come from MLflow's own
variables (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME / _PASSWORD), never from a logged value.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


def tracking_uri(home: Path, uri: str | None = None) -> str:
    """`uri` (the tracking.uri setting), else MLFLOW_TRACKING_URI, else the run store's sqlite database."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(home).resolve() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def without_credentials(uri: str) -> str:
    """`uri` as it may be shown, logged and written to results.json: any user:password@ part removed."""
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def check_server(uri: str, timeout: float = 10) -> None:
    """A tracking server that does not answer stops the run at once (MLflow's client would retry for minutes)."""
    import urllib.error
    import urllib.request

    from unast_core.errors import UnastError

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:  # it answers (perhaps behind a proxy without /health): good enough
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnastError(f"the MLflow tracking server at {without_credentials(uri)} does not answer ({reason}); "
                         "start it, or unset MLFLOW_TRACKING_URI / tracking.uri to track to the run store") from None


class Tracker:
    def __init__(self, home: Path, uri: str | None = None):
        home = Path(home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        client_uri = tracking_uri(home, uri)
        self.uri = without_credentials(client_uri)
        if is_server(client_uri):
            check_server(client_uri)
        self.client = MlflowClient(client_uri)  # creates/migrates a local database once, before any fan-out
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        # a server keeps artifacts in its own store; a local database next to it in the run store
        location = None if is_server(client_uri) else (home / "mlartifacts").as_uri()
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            EXPERIMENT, artifact_location=location)
        self.parent_id: str | None = None

    def run_url(self, run_id: str | None = None) -> str | None:
        """The MLflow UI page of a run (the parent run by default) on a tracking server; None for a local database."""
        if not is_server(self.uri):
            return None
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id or self.parent_id}"

    def start(self, run_name: str, config: dict[str, Any], tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**owner_tags(config), **(tags or {})})
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
