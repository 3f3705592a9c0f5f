"""The fan-out on Dask: the same scores and architecture as the serial run, and a worker killed with SIGKILL
in the middle of distillation loses no finished candidate."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.flows.test_cli_e2e import ROOT, _env, _unast

pytestmark = pytest.mark.slow


def _scores(results: dict) -> list[list[float]]:
    return json.loads(Path(results["scores_path"]).read_text())["scores"]


def test_dask_runner_gives_the_serial_runs_scores_and_architecture(tmp_path):
    """Parameter budget: exact costs, so the architecture depends only on the scores, not on timing noise."""
    runs = {}
    for runner in ("serial", "dask"):
        home, out = tmp_path / runner, tmp_path / f"out-{runner}"
        proc = _unast(tmp_path, "--preset", "smoke", "--budget", "params=0.6", "--runner", runner, "--workers", "2",
                      "--output", str(out), home=home)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[runner] = json.loads((out / "results.json").read_text()), proc.stdout + proc.stderr
    (serial, serial_log), (dask, dask_log) = runs["serial"], runs["dask"]
    assert dask["layers"] == serial["layers"]
    for row_s, row_d in zip(_scores(serial), _scores(dask)):
        assert row_d == pytest.approx(row_s, rel=1e-3, abs=1e-5, nan_ok=True)
    # distillation ran in two worker processes, neither of them the flow's
    workers = dask_log.split("distilled 16 candidates (0 reused, 0 failed) on ")[1].splitlines()[0]
    assert workers.count(" x") == 2, workers
    assert serial_log.split("distilled 16 candidates (0 reused, 0 failed) on ")[1].splitlines()[0].count(" x") == 1


def _candidates(home: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in home.rglob("candidates/*/*.json")}


def test_a_worker_killed_mid_distillation_loses_no_finished_candidate(tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    # long enough candidates (no early stop) that the kill lands while distillation runs
    slow = ["--set", "distill.steps=300", "--set", "distill.patience=1000", "--set", "distill.eval_every=100"]
    cmd = [sys.executable, "-m", "flows.cli", "run", "--home", str(home), "--preset", "smoke", "--budget",
           "params=0.6", "--runner", "dask", "--workers", "2", "--output", str(out), *slow]
    log_file = (tmp_path / "run.log").open("w")  # a file, not a pipe: no leftover child can hold it open
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=_env(tmp_path), cwd=ROOT)
    deadline, killed = time.monotonic() + 240, None
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        if _candidates(home):  # at least one candidate finished: kill a worker that is running another
            workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                       if "spawn_main" in " ".join(p.cmdline())]
            assert workers, "no Dask worker process found"
            killed = workers[0].pid
            workers[0].send_signal(signal.SIGKILL)
        time.sleep(0.2)
    assert killed, "distillation never started"
    finished_at_kill = len(_candidates(home))
    proc.wait(timeout=600)
    log = (tmp_path / "run.log").read_text()
    done = _candidates(home)
    assert 0 < finished_at_kill < 16 or proc.returncode == 0, log[-3000:]
    assert f"Worker process {killed} was killed by signal 9" in log
    if proc.returncode == 0:  # Dask restarted the worker and ran its task again: the run completed
        results = json.loads((out / "results.json").read_text())
        assert results["distill"]["trained"] == 16 and not results["distill"]["failed"]
        assert len(done) == 16
    rerun = _unast(tmp_path, "--preset", "smoke", "--budget", "params=0.6", "--output", str(tmp_path / "out2"),
                   *slow, home=home)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"distilled 16 candidates ({len(done)} reused, 0 failed)" in rerun.stdout + rerun.stderr
    after = _candidates(home)
    assert all(after[p] == stamp for p, stamp in done.items())  # no finished candidate was redone
