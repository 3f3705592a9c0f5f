"""`unast store du` and `unast store gc`: what the run store holds, and clearing what recent runs do not use."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unast_core.errors import UnastError
from unast_core.housekeeping import du, gc


def add_parser(sub) -> None:
    store = sub.add_parser("store", help="the run store: du (what it holds), gc (clear what recent runs do not use)")
    verbs = store.add_subparsers(dest="verb", required=True)
    usage = verbs.add_parser("du", help="size by teacher and stage")
    usage.add_argument("--home", default=".unast", type=Path)
    usage.add_argument("--json", action="store_true")
    clear = verbs.add_parser("gc", help="delete the units of work not used by the last N runs (or since an export)")
    clear.add_argument("--home", default=".unast", type=Path)
    clear.add_argument("--keep", type=int, help="keep what the last N runs used")
    clear.add_argument("--export", type=Path, help="keep what this export's run used (its output directory)")
    clear.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    clear.add_argument("--unrecorded", choices=("keep", "drop"), default="keep",
                       help="units written before UNAST recorded use: keep (default), or drop when older than the "
                       "cutoff")
    clear.add_argument("--json", action="store_true")


def _gb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale / 10:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _run_starts(home: Path) -> list[float]:
    """Start times of the store's runs (MLflow parent runs, finished or not), newest first."""
    from mlflow.tracking import MlflowClient

    if not (home / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("unast")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=50000, order_by=["attributes.start_time DESC"])
    return [r.info.start_time / 1000 for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _export_start(home: Path, export: Path) -> float:
    results = export / "results.json"
    if not results.exists():
        raise UnastError(f"{export} has no results.json; give the --output directory of a finished run")
    run_id = (json.loads(results.read_text()).get("mlflow") or {}).get("run_id")
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(f"sqlite:///{(home / 'mlflow.db').resolve()}").get_run(run_id).info.start_time / 1000
    except Exception:  # noqa: BLE001 - any lookup failure reads the same to the user
        raise UnastError(f"the run that made {export} is not in {home}/mlflow.db; give the --home it ran with") \
            from None


def run(args: argparse.Namespace) -> int:
    home = args.home
    if not (home / "runs").is_dir():
        raise UnastError(f"{home} holds no run store (no runs/ directory); give the --home of a run")
    if args.verb == "du":
        report = du(home)
        if args.json:
            print(json.dumps(report, indent=2))
            return 0
        for teacher in report["teachers"]:
            print(f"{teacher['fingerprint']}  {teacher['teacher']}  {_gb(teacher['total'])}")
            for stage, size in sorted(teacher["stages"].items(), key=lambda kv: -kv[1]):
                print(f"  {stage:<12} {_gb(size):>10}")
        for name, size in report["other"].items():
            print(f"{name:<14} {_gb(size):>10}")
        print(f"total          {_gb(report['total']):>10}")
        return 0
    if args.keep is None and args.export is None:
        raise UnastError("store gc needs --keep N (keep what the last N runs used) or --export DIR")
    if args.keep is not None and args.keep < 1:
        raise UnastError(f"--keep {args.keep}: keep at least 1 run")
    cutoffs = []
    if args.keep is not None:
        starts = _run_starts(home)
        cutoffs.append(starts[args.keep - 1] if len(starts) >= args.keep else 0.0)
    if args.export is not None:
        cutoffs.append(_export_start(home, args.export))
    report = gc(home, min(cutoffs), dry_run=args.dry_run, unrecorded=args.unrecorded)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    verb = "would free" if args.dry_run else "freed"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(min(cutoffs))) if min(cutoffs) else "ever"
    print(f"{len(report['units'])} units not used since {since}: {verb} {_gb(report['freed'])}"
          + (f" ({_gb(report['linked_elsewhere'])} more stay on disk, hard-linked elsewhere)"
             if report["linked_elsewhere"] else ""))
    for stage, size in sorted(report["by_stage"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<12} {_gb(size):>10}")
    if report["kept_unrecorded"]:
        print(f"kept {report['kept_unrecorded']} units written before UNAST recorded use (--unrecorded drop to "
              f"judge them by their write time)")
    return 0
