"""The fan-out on Dask, end to end: a worker killed with SIGKILL in the middle of distillation loses no
finished candidate, and the run gives the serial run's scores and architecture."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.flows.test_cli_e2e import ROOT, _env, _unast

pytestmark = pytest.mark.slow

# Parameter budget: exact costs, so the architecture depends only on the scores, not on timing noise. Long
# enough candidates (no early stop) that the kill lands while distillation runs.
ARGS = ["--preset", "smoke", "--budget", "params=0.6", "--set", "distill.steps=300", "--set", "distill.patience=1000",
        "--set", "distill.eval_every=100"]


def _scores(results: dict) -> list[list[float]]:
    return json.loads(Path(results["scores_path"]).read_text())["scores"]


def _candidates(home: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in home.rglob("candidates/*/*.json")}


def _workers_of(log: str) -> str:
    """The workers listed on the distillation summary line. In the Dask run a task that Dask ran again after the
    kill may find its own candidate already finished, so the reused count is not always 0."""
    found = re.search(r"distilled 16 candidates \(\d+ reused, 0 failed\) on (.*)", log)
    assert found, log[-3000:]
    return found.group(1)


def _run_and_kill_a_worker(tmp_path: Path, home: Path, out: Path) -> tuple[subprocess.Popen, int, int, str]:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--home", str(home), *ARGS, "--runner", "dask", "--workers", "2",
           "--output", str(out)]
    log_file = (tmp_path / "run.log").open("w")  # a file, not a pipe: no leftover child can hold it open
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=_env(tmp_path), cwd=ROOT)
    deadline, killed = time.monotonic() + 240, None
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        if _candidates(home):  # one candidate finished: kill a worker while the others train
            workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                       if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())]
            assert workers, "no Dask worker process found"
            killed = workers[0].pid
            workers[0].send_signal(signal.SIGKILL)
        time.sleep(0.2)
    assert killed, "distillation never started"
    finished_at_kill = len(_candidates(home))
    proc.wait(timeout=600)
    return proc, killed, finished_at_kill, (tmp_path / "run.log").read_text()


def test_dask_survives_a_killed_worker_and_matches_the_serial_run(tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    proc, killed, finished_at_kill, log = _run_and_kill_a_worker(tmp_path, home, out)
    assert f"Worker process {killed} was killed by signal 9" in log and 0 < finished_at_kill < 16, log[-3000:]
    done = _candidates(home)
    if proc.returncode == 0:  # Dask restarted the worker and ran its task again: the run completed
        results = json.loads((out / "results.json").read_text())
        assert results["distill"]["trained"] == 16 and not results["distill"]["failed"] and len(done) == 16
    # A rerun (serial) redoes none of the finished candidates, whether the run above completed or not.
    rerun = _unast(tmp_path, *ARGS, "--output", str(tmp_path / "rerun"), home=home)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"distilled 16 candidates ({len(done)} reused, 0 failed)" in rerun.stdout + rerun.stderr
    assert all(_candidates(home)[p] == stamp for p, stamp in done.items())
    # The serial run from scratch, in a store of its own: the same scores and the same architecture.
    serial = _unast(tmp_path, *ARGS, "--output", str(tmp_path / "serial"), home=tmp_path / "serial-home")
    assert serial.returncode == 0, serial.stderr[-3000:]
    assert _workers_of(serial.stdout + serial.stderr).count(" x") == 1  # the flow's own process
    dask = json.loads(((out if proc.returncode == 0 else tmp_path / "rerun") / "results.json").read_text())
    reference = json.loads((tmp_path / "serial" / "results.json").read_text())
    assert dask["layers"] == reference["layers"]
    for row_s, row_d in zip(_scores(reference), _scores(dask)):
        assert row_d == pytest.approx(row_s, rel=1e-3, abs=1e-5, nan_ok=True)
    if proc.returncode == 0:
        assert _workers_of(log).count(" x") >= 2  # two worker processes, then the restarted one
