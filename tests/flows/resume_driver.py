"""Drives the crash-resume, corruption and concurrency checks of `test_crash_resume.py` in one process.

Importing torch, transformers, Prefect and MLflow and starting a Prefect server take ~20 s on a 2-core box,
longer than a smoke run's stages, so this imports once, starts one server, and forks one child per run (each
child is a whole `unast run`, killed or not). `python -m tests.flows.resume_driver WORKDIR` prints a JSON
report on its last line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

WORK = Path(sys.argv[1]).resolve() if __name__ == "__main__" else None
if WORK:
    os.environ.setdefault("PREFECT_HOME", str(WORK / "prefect"))
    os.environ.update(UNAST_CACHE=str(WORK / "cache"),
                      UNAST_HOST_LOCK=str(WORK / "host.lock"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true",
                      PREFECT_LOGGING_TO_API_ENABLED="false", TOKENIZERS_PARALLELISM="false")

# The smallest smoke run: a parameter budget (exact, so the choice does not depend on timing noise) and the
# fewest timing repeats.
ARGS = ["--preset", "smoke", "--set", "cost.repeats=1", "--set", "cost.warmup=0",
        "--set", "cost.calibration_samples=0", "--set", "evaluate.latency_repeats=1",
        "--set", "evaluate.latency_warmup=0", "--set", "evaluate.generate_tokens=2"]
STAGES = ["capture", "distill", "score", "search", "select", "finetune", "export"]
KILL_AT = {"capture": 1, "distill": 3, "score": 2, "search": 1, "select": 1, "finetune": 2, "export": 1}
UNITS = {  # unit of work -> its files in a teacher's run directory (one file marks one finished unit)
    "capture": "activations/*/*/meta.json", "distill": "candidates/*/*.json", "score": "scores/??/*.json",
    "search": "search/*.json", "cost": "lut/*.json", "measured": "measured/*.json", "train": "train/*/metrics.json",
    "export": "final/*/model.safetensors", "data": "data/*.safetensors"}


def run_dir(home: Path) -> Path:
    return next((home / "runs").iterdir())


def units(home: Path) -> dict[str, tuple[int, int]]:
    """Every finished unit's file -> (inode, mtime): a unit written again gets a new inode (atomic rename)."""
    if not (home / "runs").exists():
        return {}
    root = run_dir(home)
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for pattern in UNITS.values() for p in root.glob(pattern)}


def redone(before: dict, after: dict) -> list[str]:
    return sorted(k for k, v in before.items() if after.get(k) != v)


def unast(home: Path, out: Path, log: Path, die_at: str | None = None, budget: str = "params=0.9") -> int:
    """Fork a child that runs `unast run`; its exit code, or minus the signal that ended it."""
    pid = os.fork()
    if pid == 0:  # the child: one whole run
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if die_at:
                os.environ["UNAST_TEST_DIE_AT"] = die_at
            from flows.cli import main

            code = main(["run", "--home", str(home), "--output", str(out), "--budget", budget, *ARGS])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def start_both(home: Path, runs: list[tuple[Path, Path, str]]) -> list[int]:
    pids = []
    for out, log, budget in runs:
        pid = os.fork()
        if pid == 0:
            os._exit(unast(home, out, log, budget=budget))
        pids.append(pid)
    return [os.WEXITSTATUS(os.waitpid(pid, 0)[1]) for pid in pids]


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def same_model(a: Path, b: Path) -> bool:
    import torch

    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    wa, wb = weights(a), weights(b)
    return ra["layers"] == rb["layers"] and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def corrupt(root: Path) -> dict[str, str]:
    """One artifact of each kind made bad: truncated (a copy cut short) or altered in place (same size)."""
    def truncate(p: Path) -> None:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def alter(p: Path) -> None:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x55
        p.write_bytes(bytes(data))

    final = sorted(root.glob("train/*/metrics.json"), key=lambda p: json.loads(p.read_text())["label"] != "finetune")
    picks = {"states": (sorted(root.glob("activations/*/validation/boundary-003.safetensors"))[0], truncate),
             "candidate weights": (sorted(root.glob("candidates/*/mlp-*.safetensors"))[0], alter),
             "score table": (sorted(root.glob("scores/??/*.json"))[0], truncate),
             "cost table": (sorted(root.glob("lut/*.json"))[0], alter),
             "search result": (sorted(root.glob("search/*.json"))[0], truncate),
             "trained student": (final[0].parent / "student.safetensors", alter),
             "export": (sorted(root.glob("final/*/model.safetensors"))[0], truncate)}
    for path, how in picks.values():
        data = path.read_bytes()  # break the hard link an export shares, as a real cut-short copy would
        path.unlink()
        path.write_bytes(data)
        how(path)
    return {kind: str(path) for kind, (path, _) in picks.items()}


def mlflow_parents(home: Path) -> list[dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("unast")
    runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])
    return [{"id": r.info.run_id, "status": r.info.status, "resumed_by": r.data.tags.get("unast.resumed_by"),
             "resumes": r.data.tags.get("unast.resumes")}
            for r in runs if "mlflow.parentRunId" not in r.data.tags]


def main(work: Path) -> dict:
    import flows.cli  # noqa: F401 - everything a run imports, once, before the forks
    import flows.compress  # noqa: F401
    from prefect.server.api.server import SubprocessASGIServer

    report: dict = {"seconds": {}}
    clock = time.perf_counter()
    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")))
    os.environ["PREFECT_API_URL"] = server.api_url
    report["seconds"]["setup"] = round(time.perf_counter() - clock, 1)
    try:
        # the uninterrupted run, with the same seed
        clock = time.perf_counter()
        ref_home, ref_out = work / "ref-home", work / "ref-out"
        report["reference_rc"] = unast(ref_home, ref_out, work / "ref.log")
        report["seconds"]["reference"] = round(time.perf_counter() - clock, 1)

        # one store; each run is killed in the next stage, and resumes the previous one's
        home, out = work / "home", work / "out"
        table = []
        for n, stage in enumerate(STAGES):
            before = units(home)
            clock = time.perf_counter()
            rc = unast(home, out, work / f"kill-{stage}.log", f"{stage}:{KILL_AT[stage]}")
            after = units(home)
            row = {"stage": stage, "rc": rc, "seconds": round(time.perf_counter() - clock, 1),
                   "units_stored": len(after), "units_made_before_kill": len(set(after) - set(before))}
            if n:  # this run resumed the previous one's kill
                table[-1]["redone_on_resume"] = redone(before, after)
            table.append(row)
        before = units(home)
        clock = time.perf_counter()
        report["final_rc"] = unast(home, out, work / "resume.log")
        report["seconds"]["resume"] = round(time.perf_counter() - clock, 1)
        table[-1]["redone_on_resume"] = redone(before, units(home))
        report["kills"] = table
        report["same_as_reference"] = report["final_rc"] == 0 and same_model(out, ref_out)
        report["mlflow"] = mlflow_parents(home)

        # integrity: one artifact of each kind corrupted, then a rerun
        broken = corrupt(run_dir(home))
        before = units(home)
        clock = time.perf_counter()
        report["corrupt_rc"] = unast(home, out, work / "corrupt.log")
        report["seconds"]["corrupt"] = round(time.perf_counter() - clock, 1)
        log = (work / "corrupt.log").read_text()
        report["corrupt"] = {kind: {"file": path, "warned": f"corrupt artifact {path}" in log,
                                    "replaced": Path(path).exists()} for kind, path in broken.items()}
        report["corrupt_redone"] = redone(before, units(home))
        report["corrupt_same_as_reference"] = report["corrupt_rc"] == 0 and same_model(out, ref_out)

        # concurrency: two runs with different budgets on one store, where distillation and scoring are to do
        root = run_dir(home)
        for pattern in ("candidates", "scores"):
            for path in sorted((root / pattern).rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
        clock = time.perf_counter()
        report["concurrent_rc"] = start_both(home, [(work / "out-a", work / "a.log", "params=0.9"),
                                                    (work / "out-b", work / "b.log", "params=0.8")])
        report["seconds"]["concurrent"] = round(time.perf_counter() - clock, 1)
        report["concurrent_logs"] = [(work / name).read_text() for name in ("a.log", "b.log")]
    finally:
        server.stop()
    return report


if __name__ == "__main__":
    print(json.dumps(main(WORK)))
