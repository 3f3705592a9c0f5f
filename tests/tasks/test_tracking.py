import pytest
from mlflow.tracking import MlflowClient

from tasks.tracking import Tracker
from unast_core.records import Trained


def test_a_stage_logs_its_record(tmp_path):
    tracker = Tracker(tmp_path)
    parent = tracker.start("run", {"seed": 0})
    record = Trained(status="ok", label="select 0", layers=[], val_loss=2.5, val_loss_before=3.0, wall_s=1.5,
                     curve=[{"step": 1, "loss": 3.1}, {"step": 2, "loss": 2.9}])
    run_id = tracker.record("latency-0.75/select", record)
    tracker.finish({"models": 1})
    client = MlflowClient(tracker.uri)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.run_name == "latency-0.75/select"
    assert run.data.params == {"label": "select 0", "status": "ok", "reused": "False"}
    assert run.data.metrics["val_loss"] == 2.5 and run.data.metrics["val_loss_before"] == 3.0
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [3.1, 2.9]
    assert client.get_run(parent).info.status == "FINISHED"


def test_where_runs_go_the_setting_then_the_environment_then_the_run_store(tmp_path, monkeypatch):
    from tasks.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    assert tracking_uri(tmp_path, "http://mlflow.internal:80") == "http://mlflow.internal:80"


def test_a_uri_with_credentials_is_shown_without_them_and_refused_as_a_setting(tmp_path, monkeypatch):
    from tasks.tracking import without_credentials
    from unast_core.config import build_config
    from unast_core.errors import UnastError

    assert without_credentials("https://me:s3cret@mlflow.example:443/x") == "https://mlflow.example:443/x"
    assert without_credentials("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"
    with pytest.raises(UnastError, match="must not carry credentials"):
        build_config("smoke", overrides={"tracking.uri": "http://me:s3cret@mlflow:5000"})


def test_the_parent_run_carries_the_given_tags_and_a_local_database_has_no_ui_link(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(tmp_path)
    parent = tracker.start("run", {"seed": 0}, tags={"prefect.flow_run_id": "abc", "prefect.deployment": "nightly"})
    tags = MlflowClient(tracker.uri).get_run(parent).data.tags
    assert tags["prefect.flow_run_id"] == "abc" and tags["prefect.deployment"] == "nightly"
    assert tracker.run_url() is None
    tracker.uri = "http://127.0.0.1:5000/"  # as on a server: the run's page in the MLflow UI
    assert tracker.run_url() == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{parent}"


def test_a_tracking_server_that_does_not_answer_stops_the_run_in_seconds(tmp_path):
    import time

    from tests.flows.servers import free_port
    from unast_core.errors import UnastError

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UnastError, match=f"tracking server at {uri} does not answer"):
        Tracker(tmp_path, uri)
    assert time.monotonic() - started < 10
