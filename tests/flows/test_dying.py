"""Dying cleanly: a teacher too large for the machine is refused before any weight is allocated, and a run
killed outright (SIGKILL, as the OOM killer sends) leaves no process behind and no pipe held open."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.flows.test_cli_e2e import ROOT, _env


def test_a_teacher_too_large_for_memory_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    import transformers

    from flows.cli import main
    from unast_core import resources

    teacher = tmp_path / "llama"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "llama"}))  # every size left at its default
    (teacher / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(resources, "available_memory", lambda: 8 * 10**9)

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    code = main(["run", "--preset", "smoke", "--model", str(teacher), "--home", str(tmp_path / "home"),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    # Llama's defaults are the 7B shape: 6.74B parameters, 4 bytes each in fp32, plus the load's margin
    assert "6.74B parameters need about 33.4 GB" in err[0] and "8.0 GB are available" in err[0]
    assert "smaller --model" in err[0]


def test_the_temporary_prefect_server_is_started_to_die_with_the_run(monkeypatch):
    from prefect.server.api import server as prefect_server

    from flows.server import owned_server

    calls = []
    monkeypatch.setattr(prefect_server.subprocess, "Popen", lambda args, **kwargs: calls.append((args, kwargs)))
    server = owned_server()
    try:
        server.port = 4297
        server._run_uvicorn_command()
    finally:
        server.stop()
    (args, kwargs), = calls
    assert args[args.index("--host") + 1] == "127.0.0.1" and callable(kwargs.get("preexec_fn"))
    assert prefect_server.subprocess is __import__("subprocess")  # Prefect's module is left as it was


def _session(sid: int) -> list[str]:
    """Command lines of the processes still in session `sid`."""
    left = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                if int(stat[3]) == sid:
                    left.append(open(f"/proc/{entry}/cmdline").read().replace("\0", " "))
            except (OSError, IndexError):
                pass
    return left


@pytest.mark.slow
def test_a_killed_run_leaves_no_process_and_no_open_pipe(tmp_path):
    env = dict(_env(tmp_path), UNAST_TEST_DIE_AT="capture:1", UNAST_HOST_LOCK=str(tmp_path / "host.lock"))
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--home", str(tmp_path / "home"),
           "--output", str(tmp_path / "out"), "--set", "cost.repeats=1", "--set", "cost.calibration_samples=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)  # returns only once every holder of the pipe is gone
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == -signal.SIGKILL, out[-2000:]
    assert b"Starting temporary server" in out  # it had a Prefect server to leave behind
    deadline = time.time() + 10
    while _session(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert _session(proc.pid) == []


def _foreground_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_during_a_stage_exits_130_in_one_line_and_keeps_finished_units(tmp_path):
    """Ctrl-C (SIGINT) after the third distilled candidate: exit 130, one `unast:` line and no traceback, the
    candidates finished so far stay in the store, and no server is left behind.

    The run gets SIGINT's default disposition, as a terminal's foreground job has: a shell starts a background
    job (a CI script's, for one) with SIGINT ignored, the child inherits that, and Python then installs no
    KeyboardInterrupt handler, so the signal would be dropped and the run would finish (exit 0)."""
    env = dict(_env(tmp_path), UNAST_TEST_DIE_AT="distill:3", UNAST_TEST_DIE_AT_SIGNAL="INT",
               UNAST_HOST_LOCK=str(tmp_path / "host.lock"))
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--home", str(tmp_path / "home"),
           "--output", str(tmp_path / "out"), "--set", "cost.repeats=1", "--set", "cost.calibration_samples=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True, preexec_fn=_foreground_sigint)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("unast:")]
    assert lines == ["unast: interrupted; finished stages are kept and a rerun resumes from them"]
    assert "Traceback" not in err + out
    kept = [p for p in (tmp_path / "home").rglob("candidates/*/*.json") if not p.name.startswith(".")]
    assert len(kept) >= 3
    deadline = time.time() + 10
    while _session(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert _session(proc.pid) == []
