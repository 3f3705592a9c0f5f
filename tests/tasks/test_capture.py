import pytest

import tasks.capture as capture_task
from tasks.capture import capture_states
from unast_core.records import States


def test_record_and_reuse(store):
    calib = store.calib
    assert isinstance(calib, States) and calib.rows == store.config.distill.seqs and calib.split == "calibration-8"
    assert calib.boundaries == len(store.prep.sublayers) + 1 and len(calib.row_loss) == calib.rows
    again = capture_states.fn(store.prep, "calibration", 2, store.config.distill.seqs)
    assert again.reused and again.dir == calib.dir and again.loss == calib.loss
    assert store.states.mean_loss(None) == pytest.approx(store.states.loss)


def test_a_crashed_capture_is_not_taken_as_done(store, monkeypatch):
    def crash(model, tokens, directory, batch_size, dtype=None, on_step=None):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "boundary-000.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(capture_task, "capture", crash)
    with pytest.raises(RuntimeError):
        capture_states.fn(store.prep, "validation", 2, 3)
    monkeypatch.undo()
    redone = capture_states.fn(store.prep, "validation", 2, 3)  # no meta.json: captured afresh
    assert not redone.reused and redone.rows == 3
