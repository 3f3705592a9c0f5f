"""Distillation throughput per candidate, tokens/s of training (forward + backward + optimizer step,
evaluations excluded), for the plain PyTorch engine and the DeepSpeed engine with the same config.

    .venv/bin/python bench/bench_distill.py [--model smollm2-135m] [--steps 20] [--block 15]

Each engine runs in its own process (DeepSpeed keeps a process group and its engines). On CPU DeepSpeed
uses gloo and torch's Adam (no op compilation); with a GPU both run on it. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def worker(args: argparse.Namespace) -> None:
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu" if args.device == "cpu" else "cuda")
    import torch

    from unast_core.train.activations import capture, is_captured
    from unast_core.model.adapters import Adapter
    from unast_core.config import (
        AttentionCandidate,
        MlpCandidate,
        PoolConfig,
        build_config,
    )
    from unast_core.data.corpus import build_splits
    from unast_core.train.distill import distill
    from unast_core.model.ops import OpSpec
    from unast_core.model.operators import resolve_pool
    from unast_core.model.teacher import load_teacher

    cfg = build_config("cpu", overrides={"teacher.model": args.model, "distill.steps": args.steps,
                                         "distill.patience": 10**6, "distill.eval_every": 10**6,
                                         "distill.engine": args.engine})
    teacher = load_teacher(cfg.teacher.model)
    model = teacher.model.requires_grad_(False).to(args.device)
    states = Path(args.work) / "calibration"
    if not is_captured(states):
        capture(model, build_splits(teacher.tokenizer, cfg.data)["calibration"][:cfg.distill.seqs].to(args.device), states, 4)
    # `linear` is not here: its least-squares init is final (no gradient steps) for the (n)MSE losses.
    pool = resolve_pool(PoolConfig(ops=["teacher"], attention=[AttentionCandidate(heads=1 / 3)],
                                   mlp=[MlpCandidate(hidden=0.5)]), model.config)
    adapter = Adapter(model)
    rows = []
    for spec in pool[1:]:
        for kind in ("attn", "mlp"):
            index = 2 * args.block + (kind == "mlp")
            if not OpSpec.of(spec).applies(kind):
                continue
            _, m = distill(adapter, index, spec, states, cfg.distill, "teacher")
            rows.append({"engine": args.engine, "device": args.device, "sublayer": f"{args.block}.{kind}",
                         "candidate": spec, "steps": m["steps"], "tokens": m["tokens"], "train_s": m["train_s"],
                         "tokens_per_s": m["tokens"] / m["train_s"], "nmse": m["nmse"]})
    print("RESULT " + json.dumps(rows))
    del torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--block", type=int, default=15)
    parser.add_argument("--device", default=None)
    parser.add_argument("--work", default=".unast/bench-table1")
    parser.add_argument("--engine", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.engine:
        return worker(args)
    rows = []
    for engine in ("torch", "deepspeed"):
        cmd = [sys.executable, __file__, "--engine", engine, "--model", args.model, "--steps", str(args.steps),
               "--block", str(args.block), "--device", args.device, "--work", args.work]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{engine}: failed\n{proc.stderr[-3000:]}")
            continue
        rows += json.loads(lines[-1][len("RESULT "):])
    print("| engine | device | sublayer | candidate | steps | tokens | train s | tokens/s | held-out NMSE |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        name = ",".join(f"{k}={v}" for k, v in r["candidate"].items())
        print(f"| {r['engine']} | {r['device']} | {r['sublayer']} | {name} | {r['steps']} | {r['tokens']} | "
              f"{r['train_s']:.2f} | {r['tokens_per_s']:.0f} | {r['nmse']:.4f} |")


if __name__ == "__main__":
    main()
