"""The `unast` command. `unast run` drives the Prefect flow on the local ephemeral server; `unast deploy` and
`unast serve` register it with a Prefect server (flows/service.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

for _key, _value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                     "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false",
                     "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                     # the local server migrates its database on first start: on a loaded 2-core box that
                     # took longer than Prefect's default 20 s
                     "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
    os.environ.setdefault(_key, _value)

import yaml  # noqa: E402

from unast_core.config import build_config, parse_budget  # noqa: E402
from unast_core.errors import UnastError  # noqa: E402


def _keep_freed_memory() -> None:
    """glibc hands every large tensor straight back to the OS and page-faults it in again on the next
    training step; on a small CPU box that costs ~15% of a finetune step. Serve all allocations from the
    heap and never trim it (peak memory is unchanged). `UNAST_MALLOC_TUNING=0` turns this off."""
    if os.environ.get("UNAST_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)          # M_MMAP_MAX: no mmap-backed allocations
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: keep freed memory for reuse
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


class _QuietUserErrors(logging.Filter):
    """Prefect logs a task's exception with its traceback; for user errors one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UnastError) or "UnastError" in record.getMessage() or "InfeasibleBudget" in record.getMessage():
            return False
        return True


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes read like every other bad input: one `unast: error:` line and exit code 2."""

    def error(self, message: str):
        raise UnastError(f"{message}; see `{self.prog} --help`")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    """The run config's options, shared by `run`, `deploy` and `serve`."""
    parser.add_argument("--preset", default="cpu", help="smoke | cpu | paper (default: cpu)")
    parser.add_argument("--model", help="teacher: alias (smollm2-135m), HF directory, .gguf file or hub id")
    parser.add_argument("--budget", action="append", default=[],
                        help="e.g. latency=0.75; latency=0.8,0.6,0.5 builds one model per value "
                        "into DIR/latency-0.8/ ...; repeat the flag for several constraints at once")
    parser.add_argument("--method", help="unast (default) or a baseline: unast-depth, shortgpt, shortened-llama, uniform, "
                        "random-init, gptq, sparsegpt, rtn (the teacher compressed with the ptq.* settings)")
    parser.add_argument("--output", help="directory for the exported checkpoint and results.json")
    parser.add_argument("--config", type=Path, help="YAML file of settings")
    parser.add_argument("--home", help="run store and MLflow database (default .unast)")
    parser.add_argument("--runner", help="serial (default), dask (a local Dask cluster; one worker per GPU on a GPU "
                        "machine) or dask://HOST:PORT (an existing scheduler)")
    parser.add_argument("--workers", type=int, help="dask: worker processes (default: GPUs, else 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. finetune.steps=10")


def _service_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="deployment name: the flow runs as unast-compress/NAME")
    parser.add_argument("--cron", help="schedule, e.g. '0 2 * * *' (every night at 02:00)")
    parser.add_argument("--interval", type=float, help="schedule: every this many seconds")
    parser.add_argument("--timezone", help="of the schedule (default UTC)")
    parser.add_argument("--tag", action="append", default=[], help="deployment tag (repeatable; 'unast' is always set)")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="unast", description="Compress a causal LM by per-layer architecture search.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline and export the student")
    _config_arguments(run)
    deploy = sub.add_parser("deploy", help="register a deployment on the Prefect server at PREFECT_API_URL, run by "
                            "the workers of a work pool (see README: running it as a service)")
    _config_arguments(deploy)
    _service_arguments(deploy)
    deploy.add_argument("--pool", default="unast", help="work pool (created if missing; default: unast)")
    deploy.add_argument("--pool-type", default="process", help="type of a pool created here (default: process)")
    deploy.add_argument("--compute-limit", type=int, help="concurrent unast-compute tasks on the server, set when "
                        "no limit exists (default: 1 for the serial runner, else one per Dask worker)")
    serve = sub.add_parser("serve", help="serve the flow from this process (flow.serve: no work pool)")
    _config_arguments(serve)
    _service_arguments(serve)
    report = sub.add_parser("report", help="print the results of an exported run")
    report.add_argument("dir", type=Path)
    export = sub.add_parser("export", help="rewrite an exported student for a serving engine")
    export.add_argument("dir", type=Path, help="the --output directory of a finished run")
    export.add_argument("--format", required=True, help="gguf (llama.cpp) or nemotron-nas (vLLM)")
    export.add_argument("--quant", default="f16", help="gguf: f16 (default), q8_0 or q4_k")
    export.add_argument("--output", type=Path, help="file (gguf) or directory (nemotron-nas); default: inside DIR")
    ev = sub.add_parser("eval", help="lm-evaluation-harness scores of an exported student and its teacher")
    ev.add_argument("dir", type=Path, help="the --output directory of a finished run")
    ev.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    ev.add_argument("--include", type=Path, help="a folder of task YAMLs (e.g. over local json files: works offline)")
    ev.add_argument("--teacher", help="teacher spec (default: the run's teacher, from results.json)")
    ev.add_argument("--no-teacher", action="store_true", help="score the student only")
    ev.add_argument("--limit", type=int, help="documents per task (default: all)")
    ev.add_argument("--num-fewshot", type=int)
    ev.add_argument("--batch-size", type=int, default=8)
    from flows.store_cli import add_parser as add_store

    add_store(sub)
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UnastError(f"--set {item}: expected KEY=VALUE, e.g. finetune.steps=10")
        parsed = yaml.safe_load(value)
        # YAML 1.1 reads 2:4 as the base-60 integer 124; an n:m setting (ptq.sparsity=2:4) stays a string
        overrides[key] = value if isinstance(parsed, int) and ":" in value else parsed
    if args.model:
        overrides["teacher.model"] = args.model
    if args.budget:
        overrides["budget"] = parse_budget(args.budget)
    if args.output:
        overrides["output"] = args.output
    if args.method:
        overrides["method"] = args.method
    if args.home:
        overrides["home"] = args.home
    if args.runner:
        overrides["orchestration.runner"] = args.runner
    if args.workers is not None:
        overrides["orchestration.workers"] = args.workers
    return overrides


def _run(args: argparse.Namespace) -> int:
    config = build_config(args.preset, args.config, _overrides(args))
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise warn while probing for GPUs
    from unast_core.data.corpus import check_source
    from unast_core.model.teacher import check_teacher_spec
    from unast_core.store import check_home, check_output_dir

    # every check that needs no teacher and no Prefect, so that bad input stops within seconds
    check_output_dir(config.output)
    for setting, source in (("data.source", config.data.source), ("data.heldout", config.data.heldout),
                            ("data.select_on", config.data.select_on)):
        if source is not None:
            check_source(source, config.data.text_field, setting)
    check_teacher_spec(config.teacher.model, config.teacher.trust_remote_code, config.teacher.allow_pickle)
    check_home(config.home)
    from tasks.tracking import check_server, is_server, tracking_uri

    if is_server(tracking_uri(config.home, config.tracking.uri)):
        check_server(tracking_uri(config.home, config.tracking.uri))
    logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)  # noisy on ephemeral-server shutdown
    from flows.compress import compress
    from flows.runners import shared_api, task_runner
    from unast_core.report.card import console_summary

    for name in ("prefect", "prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(_QuietUserErrors())
    with shared_api(config.orchestration):
        results = compress.with_options(task_runner=task_runner(config.orchestration))(config)
    for one in results.get("family", [results]):
        print("\n" + console_summary(one))
    return 0


def _service(args: argparse.Namespace) -> int:
    """`unast deploy` / `unast serve`: the config is checked here, so bad input stops before any server call."""
    from flows import service

    config = build_config(args.preset, args.config, _overrides(args))
    schedule = {"cron": args.cron, "interval": args.interval, "timezone": args.timezone, "tags": args.tag}
    if args.command == "serve":
        service.serve(config, args.name, **schedule)
        return 0
    done = service.deploy(config, args.name, args.pool, args.pool_type, compute_limit=args.compute_limit, **schedule)
    print(service.summary(done))
    return 0


def _report(args: argparse.Namespace) -> int:
    from unast_core.report.card import full_report

    family = args.dir / "family.json"
    if family.exists():  # a budget family: one report per model
        for model_dir in json.loads(family.read_text())["models"]:
            print(full_report(json.loads((args.dir / model_dir / "results.json").read_text())) + "\n")
        return 0
    path = args.dir / "results.json"
    if not path.exists():
        raise UnastError(f"{args.dir} has no results.json; point at the --output directory of a finished run")
    print(full_report(json.loads(path.read_text())))
    return 0


def _export(args: argparse.Namespace) -> int:
    from unast_core.report.formats import export_dir

    record = export_dir(args.dir, args.format, args.quant, args.output)
    print(f"wrote {record['path']}")
    for r in record["rewrites"]:
        print(f"  block {r['block']} {r['kind']} ({r['operator']}): {r['how']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from unast_core.evaluate.lm_eval import evaluate_dir

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    scores = evaluate_dir(args.dir, tasks, args.include, args.teacher, not args.no_teacher, args.batch_size,
                          args.limit, args.num_fewshot)
    from unast_core.report.card import lm_eval_section

    print(lm_eval_section(scores))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse_args(argv)
        _keep_freed_memory()
        if args.command == "store":
            from flows.store_cli import run as store

            return store(args)
        handler = {"run": _run, "deploy": _service, "serve": _service, "report": _report, "export": _export,
                   "eval": _eval}[args.command]
        return handler(args)
    except UnastError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # always one line
        print(f"unast: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unast: interrupted; finished stages are kept and a rerun resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
