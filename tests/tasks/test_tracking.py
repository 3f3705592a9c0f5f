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
