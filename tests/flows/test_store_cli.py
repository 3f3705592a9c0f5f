"""`unast store du` and `unast store gc` from the command line, on a store with two MLflow-tracked runs."""

import json
import time

import pytest

from flows.cli import main
from tests.unast_core.test_housekeeping import _store


def _runs(home, *ages):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.create_experiment("unast", artifact_location=(home / "mlartifacts").as_uri())
    for age in ages:
        client.create_run(experiment, start_time=int((time.time() - age) * 1000))


def test_store_du_and_gc_keep_what_the_last_runs_used(tmp_path, capsys):
    home, run = _store(tmp_path)
    _runs(home, 5400, 1800)  # two runs: units last used an hour ago were used by the first only

    assert main(["store", "du", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "abcd" in out and "activations" in out and "total" in out and "mlflow.db" in out

    assert main(["store", "gc", "--home", str(home), "--keep", "2", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["units"] == []  # both runs kept: everything they used stays

    assert main(["store", "gc", "--home", str(home), "--keep", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 units not used since") and "would free" in out and "hard-linked elsewhere" in out
    assert "kept 1 units written before UNAST recorded use" in out
    assert (run / "final" / "s1").exists()

    assert main(["store", "gc", "--home", str(home), "--keep", "1"]) == 0
    assert "freed" in capsys.readouterr().out
    assert not (run / "final" / "s1").exists() and (run / "activations" / "k2").exists()


@pytest.mark.parametrize("args, message", [
    (["store", "gc", "--home", "{home}"], "needs --keep N"),
    (["store", "gc", "--home", "{home}", "--keep", "0"], "keep at least 1 run"),
    (["store", "du", "--home", "{tmp}/nothing"], "holds no run store"),
    (["store", "gc", "--home", "{home}", "--export", "{tmp}"], "has no results.json"),
])
def test_store_commands_refuse_bad_input_in_one_line(tmp_path, capsys, args, message):
    home, _ = _store(tmp_path)
    code = main([a.format(home=home, tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
