"""Bad input to `unast run`: exactly one `unast: error:` line on stderr that names what to change, exit code 2,
no traceback. Each case builds its own files in tmp_path and runs the command in a subprocess (offline, with
its own home, Prefect home and teacher cache). Cases that fail on the command line, the config or the cheap
checks of files stop before any teacher or Prefect server starts (seconds); the `slow` ones run into the flow."""

import json
import random

import pytest
import torch

from tests.flows.test_cli_e2e import _env, _unast

slow = pytest.mark.slow


def _file(tmp_path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def _teacher_dir(tmp_path, weights: str | None) -> str:
    """A tiny Llama directory: config.json plus `weights` (None, 'pickle': pytorch_model.bin)."""
    from transformers import AutoModelForCausalLM

    from unast_core.model.teacher import tiny_random_config

    path = tmp_path / "teacher"
    config = tiny_random_config()
    config.save_pretrained(path)
    if weights == "pickle":
        torch.save(AutoModelForCausalLM.from_config(config).state_dict(), path / "pytorch_model.bin")
    return str(path)


def _gguf(tmp_path, arch: str) -> str:
    import gguf
    import numpy as np

    path = tmp_path / f"{arch}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    for name, shape in (("token_embd.weight", (16, 8)), ("blk.0.attn_q.weight", (8, 8)), ("output_norm.weight", (8,))):
        writer.add_tensor(name, np.ones(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


# (id, args built from tmp_path, what the error line must contain). Every message says what to change.
CASES = [
    # the command line and the settings: fail before torch is even imported
    ("yaml-syntax", lambda t: ["--config", _file(t, "bad.yaml", "finetune:\n  steps: [1, 2\nseed: 3\n")],
     "is not valid YAML"),
    ("config-missing", lambda t: ["--config", str(t / "nope.yaml")], "cannot read config file"),
    ("unknown-preset", lambda t: ["--preset", "tiny"], "unknown preset 'tiny'; use one of smoke, cpu, paper"),
    ("unknown-method", lambda t: ["--method", "magic"], "invalid config field 'method'"),
    ("unknown-budget-kind", lambda t: ["--budget", "speed=0.5"], "unknown budget 'speed'; use one of"),
    ("budget-kind-twice", lambda t: ["--budget", "latency=0.7", "--budget", "latency=0.6"],
     "budget 'latency' is given twice"),
    ("budget-two-kinds-in-one-flag", lambda t: ["--budget", "latency=0.7,params=0.5"],
     "is not a number or a comma-separated list"),
    ("budget-zero", lambda t: ["--budget", "latency=0"], "invalid config field 'budget'"),
    ("budget-above-one", lambda t: ["--budget", "latency=1.5"], "invalid config field 'budget'"),
    ("budget-no-value", lambda t: ["--budget", "latency="], "is not a number"),
    ("budget-empty-family", lambda t: ["--set", "budget={latency: []}"], "budget 'latency' has no values"),
    ("set-unknown-key", lambda t: ["--set", "finetune.stepz=3"], "invalid config field 'finetune.stepz'"),
    ("set-wrong-type", lambda t: ["--set", "finetune.steps=many"], "invalid config field 'finetune.steps'"),
    ("set-negative-steps", lambda t: ["--set", "finetune.steps=-1"],
     "invalid config field 'finetune.steps': Input should be greater than or equal to 0"),
    ("set-below-a-value", lambda t: ["--set", "finetune.steps.max=3"], "'finetune.steps' is a single value"),
    ("set-without-value", lambda t: ["--set", "finetune.steps"], "expected KEY=VALUE"),
    ("unknown-runner", lambda t: ["--runner", "spark"], "invalid config field 'orchestration.runner'"),
    ("workers-not-a-number", lambda t: ["--workers", "two"], "argument --workers: invalid int value"),
    ("workers-zero", lambda t: ["--workers", "0"], "invalid config field 'orchestration.workers'"),
    # paths: checked before the teacher loads
    ("output-is-a-file", lambda t: ["--preset", "smoke", "--output", _file(t, "out.txt", "x")], "is a file"),
    ("output-under-a-file", lambda t: ["--preset", "smoke", "--output", _file(t, "f", "x") + "/out"],
     "cannot be created"),
    ("home-under-a-file", lambda t: ["--preset", "smoke", "--home", _file(t, "h", "x") + "/home"],
     "is not a writable directory"),
    ("teacher-config-only", lambda t: ["--preset", "smoke", "--model", _teacher_dir(t, None)], "has no weights"),
    ("teacher-pickle-only", lambda t: ["--preset", "smoke", "--model", _teacher_dir(t, "pickle")],
     "set teacher.allow_pickle=true"),
    ("gguf-unsupported-architecture", lambda t: ["--preset", "smoke", "--model", _gguf(t, "bert")],
     "holds a 'bert' model"),
    ("gguf-not-gguf", lambda t: ["--preset", "smoke", "--model", _file(t, "fake.gguf", b"\0" * 64)],
     "is not a readable GGUF file"),
    ("hub-id-offline", lambda t: ["--model", "no-such-org/no-such-model"], "unknown model 'no-such-org/no-such-model'"),
    ("data-missing", lambda t: ["--preset", "smoke", "--set", f"data.source={t / 'missing.txt'}"],
     "does not exist; check data.source"),
    ("jsonl-without-text-field", lambda t: ["--preset", "smoke", "--set", "data.source=" + _file(
        t, "d.jsonl", "\n".join(json.dumps({"body": f"row {i}"}) for i in range(5)))],
     "has no field 'text' (available: body); set data.text_field"),
    ("binary-as-text", lambda t: ["--preset", "smoke", "--set", "data.source=" + _file(
        t, "noise.txt", b"\xff" + random.Random(0).randbytes(4096))], "is not UTF-8 text"),
    ("heldout-missing", lambda t: ["--preset", "smoke", "--set", f"data.heldout={t / 'news.txt'}"],
     "does not exist; check data.heldout"),
    ("tracking-uri-with-password", lambda t: ["--set", "tracking.uri=http://me:pw@127.0.0.1:5000"],
     "must not carry credentials"),
    ("tracking-server-down", lambda t: ["--preset", "smoke", "--set", "tracking.uri=http://127.0.0.1:9"],
     "the MLflow tracking server at http://127.0.0.1:9 does not answer"),
    # found once the teacher is loaded, inside the flow: tens of seconds each
    pytest.param("pool-mlp-too-wide", lambda t: ["--preset", "smoke", "--set", "pool.mlp=[{hidden: 1000}]"],
                 "invalid config field 'pool.mlp.0.hidden'", marks=slow),
    pytest.param("pool-heads-not-dividing", lambda t: ["--preset", "smoke", "--set", "pool.attention=[{heads: 3}]"],
                 "invalid config field 'pool.attention.0.heads'", marks=slow),
    pytest.param("data-empty", lambda t: ["--preset", "smoke", "--set", "data.source=" + _file(t, "e.txt", "\n\n")],
                 "is empty", marks=slow),
    pytest.param("seq-len-too-long", lambda t: ["--preset", "smoke", "--set", "data.seq_len=4096"],
                 "longer than the model supports", marks=slow),
    pytest.param("budget-unreachable", lambda t: ["--preset", "smoke", "--budget", "params=0.01"],
                 "smallest reachable is params=", marks=slow),
]


def _case_id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("name, make_args, message", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, name, make_args, message):
    args = make_args(tmp_path)
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    proc = _unast(tmp_path, *args)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("unast: error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]


def test_the_cases_run_offline_in_their_own_homes(tmp_path):
    """What every case above runs under: no hub access and nothing written outside tmp_path."""
    env = _env(tmp_path)
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_DATASETS_OFFLINE"] == "1"
    assert all(env[key].startswith(str(tmp_path)) for key in ("PREFECT_HOME", "UNAST_CACHE"))
    assert len(CASES) >= 20

