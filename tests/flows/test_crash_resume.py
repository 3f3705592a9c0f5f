"""Nothing lost, nothing wrong, nothing computed twice: a smoke run SIGKILLed inside each stage and resumed,
every kind of stored artifact corrupted and recomputed, and two runs on one store at once. One driver
process does it all (see `resume_driver`); each check below reads its report."""

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect"), PYTHONPATH=ROOT)
    env.pop("PREFECT_API_URL", None)
    env.pop("UNAST_TEST_DIE_AT", None)
    proc = subprocess.run([sys.executable, "-m", "tests.flows.resume_driver", str(work)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_run_killed_in_each_stage_resumes_without_redoing_finished_work(report):
    kills = report["kills"]
    assert [k["stage"] for k in kills] == ["capture", "distill", "score", "search", "select", "finetune", "export"]
    assert all(k["rc"] == -9 for k in kills)  # each run really died by SIGKILL inside its stage
    assert all(k["units_made_before_kill"] > 0 for k in kills if k["stage"] != "finetune")
    assert {k["stage"]: k["redone_on_resume"] for k in kills} == {k["stage"]: [] for k in kills}
    assert report["final_rc"] == 0 and report["same_as_reference"]  # architecture and weights, bit for bit


def test_the_rerun_marks_the_killed_mlflow_runs_and_links_them(report):
    parents = report["mlflow"]
    assert [p["status"] for p in parents] == ["KILLED"] * 7 + ["FINISHED"]
    for killed, resumed in zip(parents, parents[1:]):
        assert killed["resumed_by"] == resumed["id"] and resumed["resumes"] == killed["id"]


def test_a_corrupt_artifact_of_each_kind_is_reported_and_recomputed(report):
    corrupt = report["corrupt"]
    assert set(corrupt) == {"states", "candidate weights", "score table", "cost table", "search result",
                            "trained student", "export"}
    assert all(c["warned"] and c["replaced"] for c in corrupt.values()), corrupt
    assert len(report["corrupt_redone"]) == 7  # exactly the broken units, nothing else
    assert report["corrupt_rc"] == 0 and report["corrupt_same_as_reference"]


def test_two_runs_on_one_store_compute_each_unit_once(report):
    assert report["concurrent_rc"] == [0, 0]
    logs = report["concurrent_logs"]
    reused = [int(re.search(r"distilled 16 candidates \((\d+) reused", log).group(1)) for log in logs]
    scored = [int(re.search(r"scored 8 sublayers x \d+ candidates \((\d+) reused", log).group(1)) for log in logs]
    # every candidate and sublayer is computed by exactly one of the two runs and reused by the other
    assert (16 - reused[0]) + (16 - reused[1]) == 16 and (8 - scored[0]) + (8 - scored[1]) == 8
