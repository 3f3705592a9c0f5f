import pytest

from tasks.distill import distill_candidate
from tasks.report import check_outputs, distill_report
from tests.tasks.conftest import smoke_config
from unast_core.errors import UnastError
from unast_core.records import DistillReport


def test_distill_report_counts_and_weights(store):
    distilled = [distill_candidate.fn(store.prep, store.calib, i, j, store.config.distill, "teacher", 0)
                 for i, j in store.prep.trained_pairs()[:3]]
    failed = distilled[0].model_copy(update={"status": "failed", "error": "boom", "weights": None})
    report = distill_report.fn(store.prep, store.calib.dir, [failed, *distilled[1:]])
    assert isinstance(report, DistillReport) and report.trained == 3 and report.failed[0].endswith("boom")
    assert report.weights[failed.index][failed.pool_index] == {"error": "boom"}
    assert report.weights[distilled[1].index][distilled[1].pool_index] == distilled[1].weights
    assert report.figure.endswith(".png") and "NMSE distilled" in report.table1


def test_an_output_that_is_not_an_export_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UnastError, match="is not a UNAST export"):
        check_outputs.fn(smoke_config(tmp_path, output=str(tmp_path / "out")))
