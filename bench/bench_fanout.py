"""Wall time of distill + score, fanned out on a local Dask cluster against the serial runner, in one run.

    .venv/bin/python bench/bench_fanout.py [--preset cpu] [--workers 2] [--out bench/results/fanout]

The teacher, data and captured states are prepared once; each runner then distils and scores the whole pool
in a copy of that store with no candidate or score in it, so neither reuses the other's work. The order
is serial, then Dask. Reported: each stage's wall time inside the flow, the flow's total (the Dask cluster's
start and each worker's teacher load included), and the ratio dask / serial. Writes `<out>.md` and
`<out>.json`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _fresh_copy(prep, home: Path):
    """The prepared store under `home`, without candidates, scores or anything trained."""
    src = Path(prep.run_dir)
    dst = home / "runs" / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("candidates", "scores", "train", "search", "measured"))
    return prep.model_copy(update={"home": str(home), "run_dir": str(dst),
                                   "data_path": str(dst / Path(prep.data_path).relative_to(src)),
                                   "outside_paths": {split: str(dst / Path(path).relative_to(src))
                                                     for split, path in prep.outside_paths.items()}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", default="/tmp/unast-bench-fanout")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fanout"))
    args = parser.parse_args()

    from prefect import flow

    from flows.runners import shared_api, task_runner
    from flows.stages import distill_all, score_all
    from tasks.capture import capture_states
    from tasks.prepare import prepare
    from unast_core.config import OrchestrationConfig, build_config
    from unast_core.store import write_json

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    config = build_config(args.preset, overrides={"home": str(work / "base")})
    prep = prepare.fn(config.teacher, config.data, config.cost, config.pool, str(work / "base"))
    capture_states.fn(prep, "validation", config.score.batch_size)
    capture_states.fn(prep, "calibration", config.score.batch_size, config.distill.seqs)
    print(f"prepared {prep.source}: {len(prep.trained_pairs())} trained candidates, {len(prep.sublayers)} sublayers")

    rows = []
    for runner in ("serial", "dask"):
        here = _fresh_copy(prep, work / runner)
        calib = capture_states.fn(here, "calibration", config.score.batch_size, config.distill.seqs)
        val = capture_states.fn(here, "validation", config.score.batch_size)
        assert calib.reused and val.reused, "the copy must hold the captured states"
        wall: dict[str, float] = {}

        @flow(name=f"bench-fanout-{runner}",
              task_runner=task_runner(OrchestrationConfig(runner=runner, workers=args.workers)))  # noqa: B023
        def fan_out() -> None:
            start = time.perf_counter()
            distilled = distill_all(here, calib, config)
            wall["distill"] = time.perf_counter() - start
            start = time.perf_counter()
            score_all(here, val, distilled, config)
            wall["score"] = time.perf_counter() - start

        start = time.perf_counter()
        orchestration = OrchestrationConfig(runner=runner, workers=args.workers)
        with shared_api(orchestration):
            fan_out()
        total = time.perf_counter() - start
        rows.append({"runner": runner, "workers": 1 if runner == "serial" else args.workers,
                     "distill_s": round(wall["distill"], 1), "score_s": round(wall["score"], 1),
                     "distill_score_s": round(wall["distill"] + wall["score"], 1), "flow_total_s": round(total, 1)})
        print(rows[-1])
    serial, dask = rows
    ratio = {k: round(dask[k] / serial[k], 3) for k in ("distill_s", "score_s", "distill_score_s", "flow_total_s")}
    result = {"teacher": prep.source, "preset": args.preset, "cpus": os.cpu_count(), "rows": rows,
              "ratio_dask_over_serial": ratio, "candidates": len(prep.trained_pairs()), "sublayers": len(prep.sublayers)}
    write_json(Path(f"{args.out}.json"), result)
    lines = [f"# Fan-out: distill + score on {prep.source}, {os.cpu_count()} CPUs", "",
             "| runner | workers | distill s | score s | distill + score s | flow total s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['runner']} | {r['workers']} | {r['distill_s']} | {r['score_s']} | {r['distill_score_s']} | "
              f"{r['flow_total_s']} |" for r in rows]
    lines += ["", f"dask / serial: distill {ratio['distill_s']}, score {ratio['score_s']}, distill + score "
              f"{ratio['distill_score_s']}, flow total {ratio['flow_total_s']}", ""]
    Path(f"{args.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
