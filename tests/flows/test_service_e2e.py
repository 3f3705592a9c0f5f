"""End-to-end, the way a team runs UNAST as a service: the README's "Running it as a service" commands,
executed one by one (a Prefect server and an MLflow server on free loopback ports with their own homes and
databases, a process work pool, a real worker process, `unast deploy` with a cron schedule), then one run
started the way the UI's parameter form starts it, with one edited value. The tests below read the result
back from both servers over HTTP. Every process is stopped in the fixture's teardown, pass or fail."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.flows.servers import Background, free_port, get_json, listening_hosts, post_json, wait_http
from tests.unast_core.report.test_figures import assert_not_mostly_blank

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# planted in every process's environment; none may reach the store, the MLflow params or any log
SECRETS = {"PREFECT_API_KEY": "pnu_fakeprefectkey0123456789", "MLFLOW_TRACKING_TOKEN": "fake-mlflow-token-9876",
           "HF_TOKEN": "hf_fakehuggingfacetoken42"}
EDITED_STEPS = 3  # the smoke preset finetunes 4 steps; the run is started with 3


def readme_commands() -> list[str]:
    """The shell lines of the README block that follows `<!-- service-commands -->`."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- service-commands -->\s*```sh\n(.*?)```", text, re.S)
    assert block, "README has no service-commands block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _argv(words: list[str]) -> list[str]:
    """`unast` runs this checkout's CLI with this interpreter; prefect/mlflow are the scripts next to it."""
    head, rest = words[0], words[1:]
    if head == "unast":
        return [sys.executable, "-m", "flows.cli", *rest]
    assert head in ("prefect", "mlflow"), f"README command not covered by the test: {words}"
    return [str(BIN / head), *rest]


def _substitute(line: str, ports: dict[str, int], base: Path) -> str:
    line = line.replace("$HOME/unast-service", str(base))
    return line.replace("127.0.0.1:4200", f"127.0.0.1:{ports['prefect']}").replace(
        "--port 4200", f"--port {ports['prefect']}").replace("127.0.0.1:5000", f"127.0.0.1:{ports['mlflow']}").replace(
        "--port 5000", f"--port {ports['mlflow']}")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    base = tmp_path_factory.mktemp("service")
    ports = {"prefect": free_port(), "mlflow": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(SECRETS, PREFECT_HOME=str(base / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{base / 'prefect.db'}",
               PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               UNAST_CACHE=str(base / "cache"), UNAST_HOST_LOCK=str(base / "host.lock"),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    background: dict[str, Background] = {}
    health: list[tuple[str, Background]] = []
    ran, started = [], time.monotonic()
    try:
        for line in readme_commands():
            line = _substitute(line, ports, base)
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                env[key] = value
                ran.append(line)
                continue
            for url, proc in health:  # a command after a server start needs the server up
                wait_http(url, proc)
            health.clear()
            words = shlex.split(line.rstrip("&").strip())
            if line.endswith("&"):
                name = words[0] if words[0] != "prefect" else f"prefect-{words[1]}"
                proc = Background(_argv(words), env, base / f"{name}.log", cwd=ROOT)
                background[name] = proc
                if name == "prefect-server":
                    health.append((f"http://127.0.0.1:{ports['prefect']}/api/health", proc))
                elif name == "mlflow":
                    health.append((f"http://127.0.0.1:{ports['mlflow']}/health", proc))
            else:
                done = subprocess.run(_argv(words), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
                if words[0] == "unast":
                    (base / "deploy.out").write_text(done.stdout)
            ran.append(line)
        setup_s = time.monotonic() - started
        api = f"http://127.0.0.1:{ports['prefect']}/api"
        deployment = get_json(f"{api}/deployments/name/unast-compress/nightly")
        # what the UI's "Custom run" form sends: the deployment's parameters with one value edited
        config = json.loads(json.dumps(deployment["parameters"]["config"]))
        config["finetune"]["steps"] = EDITED_STEPS
        flow_run = post_json(f"{api}/deployments/{deployment['id']}/create_flow_run", {"parameters": {"config": config}})
        state = _wait_final(api, flow_run["id"], background["prefect-worker"], timeout=400)
        run_s = time.monotonic() - started - setup_s
        yield SimpleNamespace(api=api, mlflow=f"http://127.0.0.1:{ports['mlflow']}", base=base, env=env,
                              deployment=deployment, flow_run=get_json(f"{api}/flow_runs/{flow_run['id']}"),
                              state=state, background=background, ran=ran, setup_s=setup_s, run_s=run_s,
                              output=Path(config["output"]), home=Path(config["home"]))
    finally:
        for proc in reversed(list(background.values())):  # worker first, servers last
            proc.stop()


def _wait_final(api: str, flow_run_id: str, worker: Background, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = get_json(f"{api}/flow_runs/{flow_run_id}")["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.tail()}")
        time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout:.0f}s (state {state}):\n{worker.tail()}")


def test_the_readme_commands_deploy_a_scheduled_form_that_a_worker_runs_with_the_edited_value(service):
    print(f"\nservice setup (README commands) {service.setup_s:.1f}s, run {service.run_s:.1f}s")
    assert len(service.ran) == len(readme_commands()) >= 7  # every README line ran
    assert service.state == "COMPLETED", service.background["prefect-worker"].tail()
    deployment = service.deployment
    # the schedule, read back from the server
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
    assert deployment["work_pool_name"] == "unast" and "unast" in deployment["tags"]
    assert deployment["entrypoint"] == "flows.compress.compress"
    # the parameter form is the typed RunConfig (every stage's settings, with descriptions)
    schema = deployment["parameter_openapi_schema"]
    run_config = schema["definitions"]["RunConfig"]["properties"]
    assert {"finetune", "budget", "teacher", "tracking", "orchestration"} <= set(run_config)
    assert schema["definitions"]["TrainConfig"]["properties"]["steps"]["type"] == "integer"
    assert deployment["parameters"]["config"]["finetune"]["steps"] == 4
    # the run used the edited value, exported, and shows its results in the Prefect UI
    results = json.loads((service.output / "results.json").read_text())
    assert results["finetune"]["steps"] == EDITED_STEPS
    assert (service.output / "config.json").exists() and (service.output / "modeling_unast.py").exists()
    # every figure the UIs and the model card show, rendered from this small run, is a chart, not blank space
    assert set(results["figures"]) == {"sublayer_errors", "cost_vs_score", "sensitivity", "architecture"}
    for path in results["figures"].values():
        assert_not_mostly_blank(service.output / path)
    assert service.flow_run["deployment_id"] == deployment["id"]
    artifacts = post_json(f"{service.api}/artifacts/filter",
                          {"artifacts": {"flow_run_id": {"any_": [service.flow_run["id"]]}}})
    by_key = {a["key"]: a for a in artifacts}
    assert {"results", "architecture", "mlflow-run"} <= set(by_key), sorted(by_key)
    table = json.loads(by_key["results"]["data"])
    steps_row = next(row for row in table if row["quantity"] == "finetune steps")
    assert steps_row["student"] == EDITED_STEPS
    assert "| block | attention | MLP |" in by_key["architecture"]["data"]
    assert f"{service.mlflow}/#/experiments/" in by_key["mlflow-run"]["data"]
    # the pool and the heavy tasks' concurrency limits that `unast deploy` set up
    assert get_json(f"{service.api}/work_pools/unast")["type"] == "process"
    assert get_json(f"{service.api}/concurrency_limits/tag/unast-timing")["concurrency_limit"] == 1
    assert get_json(f"{service.api}/concurrency_limits/tag/unast-compute")["concurrency_limit"] == 1


def _mlflow_runs(service) -> tuple[dict, list[dict]]:
    api = f"{service.mlflow}/api/2.0/mlflow"
    experiment = get_json(f"{api}/experiments/get-by-name", experiment_name="unast")["experiment"]
    runs = post_json(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 500})["runs"]
    return experiment, runs


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _artifacts(service, run_id: str, path: str = "") -> list[str]:
    listing = get_json(f"{service.mlflow}/api/2.0/mlflow/artifacts/list", run_id=run_id, path=path)
    return [f["path"] for f in listing.get("files", [])]


def test_the_run_is_tracked_on_the_mlflow_server_and_links_to_the_flow_run(service):
    experiment, runs = _mlflow_runs(service)
    parents = [r for r in runs if "mlflow.parentRunId" not in _tags(r)]
    assert len(parents) == 1
    parent = parents[0]
    tags = _tags(parent)
    assert tags["prefect.flow_run_id"] == service.flow_run["id"] and tags["prefect.deployment"] == "nightly"
    assert parent["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in parent["data"]["params"]}
    assert params["finetune.steps"] == str(EDITED_STEPS) and params["preset"] == "smoke"
    results = json.loads((service.output / "results.json").read_text())
    assert results["mlflow"] == {"tracking_uri": service.mlflow, "run_id": parent["info"]["run_id"],
                                 "experiment": "unast"}
    children = {r["info"]["run_name"]: r for r in runs if _tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]}
    assert {"cost", "capture", "distill", "score", "search", "select", "finetune", "evaluate",
            "export"} <= {name.split("/")[-1] for name in children}  # prepare's record logs nothing of its own
    score_files = _artifacts(service, children["score"]["info"]["run_id"])
    assert any(f.endswith(".json") for f in score_files) and any(f.endswith(".parquet") for f in score_files)
    assert any(f.endswith(".json") for f in _artifacts(service, children["cost"]["info"]["run_id"]))
    export = children["params-0.7/export"]["info"]["run_id"]
    assert "results.json" in _artifacts(service, export)
    model = set(_artifacts(service, export, "model"))
    assert {"model/config.json", "model/model.safetensors", "model/modeling_unast.py"} <= model, model
    # the files are in the server's artifact store, not in the run store
    stored = list((service.base / "mlartifacts").rglob("model.safetensors"))
    assert stored and not (service.home / "mlartifacts").exists()


def test_servers_listen_on_loopback_and_no_secret_reaches_the_store_params_or_logs(service):
    for name in ("prefect-server", "mlflow"):
        hosts = listening_hosts(service.background[name].proc.pid)
        assert hosts and hosts <= {"127.0.0.1"}, (name, hosts)
    _, runs = _mlflow_runs(service)
    params = [f"{p['key']}={p['value']}" for r in runs for p in r["data"].get("params", [])]
    tags = [f"{t['key']}={t['value']}" for r in runs for t in r["data"].get("tags", [])]
    logs = post_json(f"{service.api}/logs/filter",
                     {"logs": {"flow_run_id": {"any_": [service.flow_run["id"]]}}, "limit": 200})
    assert len(params) > 50 and len(logs) > 10  # the grep below sees the run
    texts = {"mlflow params and tags": "\n".join(params + tags),
             "prefect flow-run logs": "\n".join(entry["message"] for entry in logs)}
    texts.update({f"log {proc.log.name}": proc.log.read_text(errors="replace")
                  for proc in service.background.values()})
    files = [p for root in (service.home, service.output, service.base / "mlartifacts") for p in root.rglob("*")
             if p.is_file()]
    assert len(files) > 20
    for secret in SECRETS.values():
        leaks = [where for where, text in texts.items() if secret in text]
        leaks += [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, (secret, leaks)


def _deployment(service, name: str, timeout: float = 0) -> dict | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_json(f"{service.api}/deployments/name/unast-compress/{name}")
        except OSError:  # 404 until it is registered
            if time.monotonic() > deadline:
                return None
            time.sleep(1)


def test_deploy_creates_a_missing_pool_and_serve_registers_a_deployment_without_one(service):
    paths = ["--output", str(service.base / "probe-out"), "--home", str(service.base / "probe-store")]
    # `unast serve` starts while `unast deploy` runs: two interpreters importing at once, not one after the other
    served = Background([sys.executable, "-m", "flows.cli", "serve", "--name", "served", "--preset", "smoke",
                         "--cron", "0 4 * * *", *paths], service.env, service.base / "serve.log", cwd=ROOT)
    try:
        done = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--name", "hourly", "--preset", "smoke",
                               "--interval", "3600", "--pool", "auto", "--tag", "probe", *paths], env=service.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "on work pool auto (created)" in done.stdout
        hourly = _deployment(service, "hourly")
        assert [s["schedule"]["interval"] for s in hourly["schedules"]] == [3600.0]
        assert hourly["work_pool_name"] == "auto" and set(hourly["tags"]) == {"probe", "unast"}
        assert get_json(f"{service.api}/work_pools/auto")["type"] == "process"

        deployment = _deployment(service, "served", timeout=300)
        assert deployment, served.tail()
        assert deployment["work_pool_name"] is None and deployment["schedules"][0]["schedule"]["cron"] == "0 4 * * *"
        assert deployment["parameters"]["config"]["preset"] == "smoke"
    finally:
        served.stop()


@pytest.mark.skipif(not os.environ.get("UNAST_SERVICE_OVERLAP"),
                    reason="two more smoke runs at once (minutes on 2 cores); run with UNAST_SERVICE_OVERLAP=1")
def test_two_overlapping_runs_of_the_deployment_on_one_store_both_complete(service):
    """A schedule that fires while the last run still goes: two runs with the same parameters (a fresh store and
    output) started together. Both complete, the export is whole, and the second one's log says what it reused."""
    deployment = service.deployment
    config = json.loads(json.dumps(deployment["parameters"]["config"]))
    config["home"], config["output"] = str(service.base / "overlap-store"), str(service.base / "overlap-out")
    started = time.monotonic()
    ids = [post_json(f"{service.api}/deployments/{deployment['id']}/create_flow_run",
                     {"parameters": {"config": config}})["id"] for _ in range(2)]
    states = [_wait_final(service.api, run_id, service.background["prefect-worker"], timeout=900) for run_id in ids]
    print(f"\ntwo overlapping runs: {states} after {time.monotonic() - started:.1f}s")
    assert states == ["COMPLETED", "COMPLETED"], service.background["prefect-worker"].tail()
    out = Path(config["output"])
    results = json.loads((out / "results.json").read_text())
    assert results["mlflow"]["run_id"] and (out / "config.json").exists() and (out / "model.safetensors").exists()
    for run_id in ids:
        logs = post_json(f"{service.api}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200,
                                                         "sort": "TIMESTAMP_ASC"})
        said = [entry["message"] for entry in logs if re.search(r"reused|captured|measured|distilled|scored|slot",
                                                                 entry["message"])]
        print(f"flow run {run_id}:\n  " + "\n  ".join(line[:200] for line in said))
    runs = [get_json(f"{service.api}/flow_runs/{run_id}") for run_id in ids]
    spans = sorted((r["start_time"], r["end_time"]) for r in runs)
    assert spans[1][0] < spans[0][1], spans  # they did overlap
