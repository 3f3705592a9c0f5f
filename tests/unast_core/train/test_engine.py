"""The DeepSpeed engine trains with the same config as the torch engine (CPU, gloo, torch Adam)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unast_core.config import TrainConfig
from unast_core.train.engine import deepspeed_config

pytest.importorskip("deepspeed")


def _run_json(script: str) -> dict:
    """Run `script` in a fresh interpreter at the repository root; its last stdout line is JSON."""
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_deepspeed_config_follows_train_config():
    ds = deepspeed_config(TrainConfig(batch_size=3, grad_clip=0.5, zero_stage=2, lr_max=1e-3), on_cuda=False)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["optimizer"]["params"] == {"lr": 1e-3, "torch_adam": True}  # no JIT-compiled ops on CPU


def test_deepspeed_engine_matches_torch_engine_on_cpu():
    # Own process: DeepSpeed keeps a process group and leaks engines within one interpreter.
    script = textwrap.dedent("""
        import json, torch
        from tests.conftest import tiny_model
        from unast_core.model.assemble import build_student, layers_from_choice
        from unast_core.config import TrainConfig
        from unast_core.train.finetune import finetune
        teacher = tiny_model("llama").requires_grad_(False)
        gen = torch.Generator().manual_seed(0)
        train, val = torch.randint(0, 97, (8, 16), generator=gen), torch.randint(0, 97, (4, 16), generator=gen)
        out = {}
        for engine in ("torch", "deepspeed"):
            student = build_student(teacher, layers_from_choice([1, 0, 0, 1, 0, 0], [{"op": "teacher"}, {"op": "identity"}]))
            cfg = TrainConfig(steps=8, batch_size=4, lr_max=3e-3, engine=engine)
            result = finetune(student, teacher, train, val, cfg)
            out[engine] = {"curve": [c["loss"] for c in result["curve"]], "val": result["val_loss"],
                           "before": result["val_loss_before"], "engine": result["engine"]}
        print(json.dumps(out))
    """)
    out = _run_json(script)
    assert out["deepspeed"]["engine"] == "deepspeed" and len(out["deepspeed"]["curve"]) == 8
    assert out["deepspeed"]["curve"] == pytest.approx(out["torch"]["curve"], rel=1e-4)
    assert out["deepspeed"]["val"] == pytest.approx(out["torch"]["val"], rel=1e-4)


def test_deepspeed_distillation_matches_torch_on_cpu(tmp_path):
    script = textwrap.dedent(f"""
        import json, torch
        from tests.conftest import tiny_model
        from unast_core.train.activations import capture
        from unast_core.model.adapters import Adapter
        from unast_core.config import DistillConfig
        from unast_core.train.distill import distill
        model = tiny_model("llama").requires_grad_(False)
        capture(model, torch.randint(0, 97, (10, 16), generator=torch.Generator().manual_seed(0)), {str(tmp_path)!r}, 4)
        out = {{}}
        for engine in ("torch", "deepspeed"):
            cfg = DistillConfig(seqs=10, eval_seqs=2, steps=6, batch_size=4, eval_every=3, lr_max=2e-3, engine=engine)
            _, m = distill(Adapter(model), 1, {{"op": "mlp", "hidden": 24}}, {str(tmp_path)!r}, cfg, "random")
            out[engine] = {{"curve": [c["loss"] for c in m["curve"]], "nmse": m["nmse"], "engine": m["engine"]}}
        print(json.dumps(out))
    """)
    out = _run_json(script)
    assert out["deepspeed"]["engine"] == "deepspeed" and len(out["deepspeed"]["curve"]) == 6
    assert out["deepspeed"]["curve"] == pytest.approx(out["torch"]["curve"], rel=1e-4)
    assert out["deepspeed"]["nmse"] == pytest.approx(out["torch"]["nmse"], rel=1e-3)
