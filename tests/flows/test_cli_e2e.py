"""End-to-end: the `unast` command on the smoke preset, in subprocesses with their own homes."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import STAND_IN_NEWS

pytestmark = pytest.mark.slow


def _env(tmp_path):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), UNAST_CACHE=str(tmp_path / "cache"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               MLFLOW_DISABLE_TELEMETRY="true")
    return env


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _unast(tmp_path, *args, timeout=300, home=None):
    cmd = [sys.executable, "-m", "flows.cli", "run", "--home", str(home or tmp_path / "home"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=timeout, cwd=ROOT)


def test_smoke_run_exports_a_reloadable_model_and_a_family_reuses_its_work(tmp_path):
    out, news = tmp_path / "out", tmp_path / "news.txt"
    news.write_text("\n\n".join(STAND_IN_NEWS))  # the held-out set: a domain no stage trains on
    data = ["--set", f"data.heldout={news}", "--set", "data.generated_fraction=0.5"]  # + teacher samples
    proc = _unast(tmp_path, "--preset", "smoke", "--budget", "latency=0.75", "--output", str(out), *data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["teacher"]) >= {"test_ppl", "params", "heldout_ppl"}
    assert set(results["student"]) >= {"test_ppl", "params", "latency_ratio", "param_ratio", "heldout_ppl", "heldout_kl"}
    assert results["heldout"] == {"source": str(news), "tokens": 32 * 64} and results["student"]["heldout_kl"] > 0
    assert "held-out ppl" in proc.stdout and "held-out perplexity" in (out / "README.md").read_text()
    assert results["compute_dtype"] in ("float32", "bfloat16") and results["regime"]["dtype"] == results["deploy_dtype"]
    assert set(results["peak_rss_mb"]) >= {"prepare", "distill", "finetune"} and "peak RSS" in proc.stdout
    assert set(results["wall_s"]) >= {"prepare", "capture", "score", "cost", "search", "select", "finetune", "evaluate"}
    assert results["student"]["params"] < results["teacher"]["params"]
    assert results["predicted_ratio"]["latency"] <= 0.75 + 1e-9
    # measured against the teacher, interleaved: half of the tiny teacher's sublayers go, so it is faster
    # (the tiny model's fixed overhead keeps the ratio well above the parameter ratio)
    assert results["student"]["latency_ratio"] < 1.0 and results["search_measured_latency_ratio"] < 1.0
    assert "latency ratio" in proc.stdout and "mlflow" in proc.stdout
    assert (out / "modeling_unast.py").exists() and (out / "README.md").exists()

    # The export loads in a fresh interpreter that cannot import unast, and generates with the KV cache.
    script = textwrap.dedent(f"""
        import sys
        sys.modules['unast_core'] = None
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)
        t = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)
        ids = t("The Python", return_tensors="pt").input_ids
        print(m.generate(ids, max_new_tokens=5, do_sample=False).shape[1] - ids.shape[1])
    """)
    reload = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert reload.returncode == 0, reload.stderr[-2000:]
    assert reload.stdout.strip().splitlines()[-1] == "5"

    assert results["distill"]["trained"] == 16 and not results["distill"]["failed"]
    assert set(results["figures"]) == {"sublayer_errors", "cost_vs_score", "sensitivity", "architecture"}
    assert all((out / path).read_bytes()[:4] == b"\x89PNG" for path in results["figures"].values())
    report = subprocess.run([sys.executable, "-m", "flows.cli", "report", str(out)], capture_output=True, text=True,
                            env=_env(tmp_path), cwd=ROOT)
    assert report.returncode == 0 and "NMSE distilled" in report.stdout and "mlp-88, tail" in report.stdout
    assert "## Findings" in report.stdout and "sensitive" in report.stdout

    # A family of two more budgets: one model each, and capture, distillation, scores and the cost table
    # are all reused. Parameter budgets: the tiny teacher's latency is mostly overhead, so how low a latency
    # budget can go depends on how loaded the machine is when the table is measured.
    family = tmp_path / "family"
    # (and the best searched architecture of each refined in its own context, one round)
    again = _unast(tmp_path, "--preset", "smoke", "--budget", "params=0.7,0.6", "--output", str(family), *data,
                   "--set", "search.refine_rounds=1")
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert log.count("refine round 1: ") + log.count("refine: no step lowered") >= 2
    assert "(8 reused)" in log and "distilled 16 candidates (16 reused, 0 failed" in log
    assert "cost table reused" in log and "teacher states reused (validation), reused (calibration)" in log
    assert json.loads((family / "family.json").read_text())["models"] == ["params-0.7", "params-0.6"]
    for name, limit in (("params-0.7", 0.7), ("params-0.6", 0.6)):
        model = json.loads((family / name / "results.json").read_text())
        assert model["predicted_ratio"]["params"] <= limit + 1e-9 and model["budget"] == {"params": limit}
        assert model["student"]["param_ratio"] <= limit + 1e-9
    assert log.count("test perplexity") == 2


def test_every_baseline_method_builds_a_model_on_the_same_store(tmp_path):
    """Each comparison method picks its architecture, finetunes, evaluates and exports on the smoke teacher,
    sharing the run store (prepare, cost table, states) with the others."""
    outputs = {}
    for method in ("shortgpt", "shortened-llama", "unast-depth", "uniform", "random-init"):
        out = tmp_path / method
        # the tiny teacher's latency is mostly overhead: narrowing every layer does not reach a latency budget
        # there, and how low one can go depends on the machine's load when the table is measured
        budget = "params=0.6" if method == "uniform" else "latency=0.7"
        proc = _unast(tmp_path, "--preset", "smoke", "--method", method, "--budget", budget, "--output", str(out))
        assert proc.returncode == 0, (method, proc.stderr[-3000:])
        outputs[method] = json.loads((out / "results.json").read_text()), proc.stdout + proc.stderr
        assert outputs[method][0]["method"] == method and f"method          {method}" in proc.stdout
        assert (out / "modeling_unast.py").exists()
    for method in ("shortgpt", "shortened-llama"):
        results, log = outputs[method]
        removed = results["removed_blocks"]
        assert removed and all(results["layers"][b] == {"attn": {"op": "identity"}, "mlp": {"op": "identity"}}
                               for b in removed)
        assert len(results["block_importance"]) == 4
        assert "distilled" not in log  # depth pruning trains no candidates
    assert outputs["shortgpt"][0]["criterion"].startswith("block influence")
    assert all(layer[k]["op"] in ("teacher", "identity") for layer in outputs["unast-depth"][0]["layers"]
               for k in ("attn", "mlp"))
    uniform = outputs["uniform"][0]
    assert all(layer == uniform["layers"][0] for layer in uniform["layers"]) and uniform["width"] < 1
    assert uniform["predicted_ratio"]["params"] <= 0.6 and uniform["student"]["param_ratio"] == pytest.approx(
        uniform["predicted_ratio"]["params"])  # exact, and the widest width that fits
    assert uniform["width"] == max(w["width"] for w in uniform["widths_measured"] if w["params"] <= 0.6)
    scratch, log = outputs["random-init"]
    assert scratch["finetune"]["steps"] == 4 + 2 * 2  # finetune + select steps x k of the smoke preset
    assert math.isfinite(scratch["student"]["test_ppl"]) and scratch["architecture_from"].endswith(".json")
    assert "cost table reused" in outputs["random-init"][1] and "cost table reused" in outputs["uniform"][1]


def test_a_gemma3_shaped_teacher_runs_with_the_default_pool(tmp_path):
    """Gemma 3 270M's attention shape (4 query heads, 1 KV head) in a tiny random model: the default pool's
    "a third of the KV groups" is the whole group there, so it resolves to a smaller size instead of
    stopping the run, and the whole pipeline exports a model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from unast_core.model.teacher import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = AutoConfig.for_model("gemma3_text", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                  max_position_embeddings=256, sliding_window=16,
                                  layer_types=["sliding_attention", "full_attention"],
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=None)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    out = tmp_path / "out"
    # the smoke preset's small data and steps, with the default (cpu preset's) pool
    proc = _unast(tmp_path, "--preset", "smoke", "--model", str(tmp_path / "gemma"), "--set", "pool={}",
                  "--budget", "params=0.8", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    attention = [name for name in results["pool"] if name.startswith("attn")]
    assert attention and results["pool"][:3] == ["teacher", "identity", "linear"], results["pool"]
    assert results["student"]["param_ratio"] <= 0.8 + 1e-9
