"""`unast deploy` / `unast serve` without a server: what a deployment stores, the checks that stop bad input
before any server call (one `unast: error:` line, exit 2), and the runner a deployment's run fans out on.
tests/flows/test_service_e2e.py drives the same commands against real servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from flows import runners, service
from flows.cli import main
from unast_core.config import OrchestrationConfig, build_config


def _unast(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_deploy_needs_a_prefect_server(capsys):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code, err = _unast(capsys, "deploy", "--name", "n", "--preset", "smoke")
    assert code == 2 and err.count("\n") == 1 and "PREFECT_API_URL is not set" in err


@pytest.mark.parametrize("args, says", [
    (["--cron", "every night"], "--cron 'every night'"),
    (["--cron", "0 2 * * *", "--interval", "60"], "--cron or --interval, not both"),
    (["--interval", "0"], "above 0"),
    (["--compute-limit", "0"], "--compute-limit 0"),
    (["--set", "tracking.uri=http://me:hunter2@mlflow:5000"], "must not carry credentials"),
    (["--pool"], "expected one argument"),
])
def test_bad_service_input_is_one_line_and_exit_2_before_any_server_call(capsys, args, says):
    # a port nothing listens on: a check that reached the server would fail differently (and slowly)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        code, err = _unast(capsys, "deploy", "--name", "n", "--preset", "smoke", *args)
    assert code == 2 and err.startswith("unast: error:") and err.count("\n") == 1 and says in err, err


def test_a_deployment_stores_the_typed_config_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = build_config("smoke", overrides={"output": "out", "home": "store", "finetune.steps": 3})
    stored = service.parameters(config)["config"]
    assert stored["output"] == str(tmp_path / "out") and stored["home"] == str(tmp_path / "store")
    assert stored["finetune"]["steps"] == 3 and stored["preset"] == "smoke"
    assert build_config("smoke", overrides=None).model_validate(stored).finetune.steps == 3  # round-trips


def test_the_flow_parameter_schema_is_the_run_config_form():
    from prefect.utilities.callables import parameter_schema

    from flows.compress import compress

    schema = parameter_schema(compress).model_dump()
    assert schema["required"] == ["config"]
    definitions = schema["definitions"]
    run_config = definitions["RunConfig"]["properties"]
    assert {"teacher", "budget", "finetune", "orchestration", "tracking", "output", "home"} <= set(run_config)
    steps = definitions["TrainConfig"]["properties"]["steps"]
    assert steps["type"] == "integer" and steps["minimum"] == 0
    assert "description" in definitions["TrackingConfig"]["properties"]["uri"]


def test_a_deployment_run_fans_out_on_the_runner_its_parameters_name(monkeypatch):
    """A worker starts the flow with its default (serial) runner; `configured_runner` swaps in the one the
    run's config names for the fan-out stages, and puts the flow's own back afterwards."""
    made = []

    def fake_runner(cfg: OrchestrationConfig):
        made.append(ThreadPoolTaskRunner(max_workers=cfg.workers))
        return made[-1]

    monkeypatch.setattr(runners, "task_runner", fake_runner)
    default = ThreadPoolTaskRunner(max_workers=1)
    with FlowRunContext.model_construct(task_runner=default):
        with runners.configured_runner(OrchestrationConfig(runner="serial")):
            assert FlowRunContext.get().task_runner is default and not made
        with runners.configured_runner(OrchestrationConfig(runner="dask", workers=3)):
            inside = FlowRunContext.get().task_runner
            assert inside is made[0] and inside._max_workers == 3 and inside._executor is not None  # started
        assert FlowRunContext.get().task_runner is default and made[0]._executor is None  # stopped
    with runners.configured_runner(OrchestrationConfig(runner="dask")):  # outside a flow run: nothing to do
        assert FlowRunContext.get() is None and len(made) == 1


def test_the_readme_service_block_uses_only_commands_the_e2e_test_maps():
    from tests.flows.test_service_e2e import readme_commands

    heads = {line.split()[0] for line in readme_commands()}
    assert heads <= {"prefect", "mlflow", "unast", "export"}
    assert any(line.startswith("unast deploy") and "--cron" in line for line in readme_commands())
    assert Path(__file__).with_name("test_service_e2e.py").exists()


def test_the_flow_survives_the_cloudpickle_a_served_run_starts_with():
    """`flow.serve` starts each run in a subprocess from a cloudpickled flow; a lock held at module level (the
    old teacher lock) made every served run crash with "cannot pickle '_thread.RLock' object"."""
    import cloudpickle

    from flows.compress import compress

    for flow in (compress, compress.with_options(task_runner=runners.task_runner(OrchestrationConfig()))):
        assert cloudpickle.loads(cloudpickle.dumps(flow)).name == "unast-compress"
