"""Peak memory and time per step of the final finetune on a model of Gemma 3 270M's shape (262K-token
vocabulary), for the chunked KD + LM loss and the full-logits one it replaced.

    flock /tmp/unast-heavy.lock .venv/bin/python bench/bench_gemma_memory.py [--loss chunked full] [--steps 6]
        [--malloc unast glibc] [--markdown bench/results/gemma_memory.md]

The weights are random (no download): memory and time depend on the shape, not the values. The teacher is
a Gemma3ForCausalLM of 270M's shape; the student is built from it by the project's assembly with two
sublayers skipped, as the final finetune gets it. Both are fp32, as loaded; the training forward passes run
under autocast to `--dtype` (default: the run's `compute.dtype`, auto: bf16 on a CPU with AMX or AVX-512-BF16),
as `unast run` does. Each loss runs in its own
process (peak RSS is per process) through `unast_core.train.finetune.finetune` with the default finetune
TrainConfig (batch 4) on sequences of the default data.seq_len (256), with `unast run`'s malloc tuning
(`--malloc unast`: every allocation from the heap, never trimmed) or glibc's defaults (`--malloc glibc`).
A process whose address space would pass `--cap-gb` fails with an allocation error instead of pushing
the host into the OOM killer; that is reported, not hidden. Seconds per step are taken between the
`on_step` callbacks (step 1 also holds the validation pass before training and is left out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

GEMMA3_270M = dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                   query_pre_attn_scalar=256, max_position_embeddings=32768, tie_word_embeddings=True)


def worker(args: argparse.Namespace) -> None:
    import resource
    import time
    from functools import partial

    if args.cap_gb:
        cap = int(args.cap_gb * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from flows.cli import _keep_freed_memory

    if args.malloc[0] == "unast":
        _keep_freed_memory()  # as `unast run` does
    import psutil
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    import unast_core.train.finetune as ft
    import unast_core.train.losses as losses
    from unast_core.config import RunConfig
    from unast_core.model.assemble import build_student
    from unast_core.train.precision import resolve_dtype

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(Gemma3TextConfig(**GEMMA3_270M), dtype=torch.float32)
    teacher = teacher.eval().requires_grad_(False)
    layers = [{"attn": {"op": "teacher"}, "mlp": {"op": "teacher"}} for _ in range(GEMMA3_270M["num_hidden_layers"])]
    layers[3]["attn"], layers[9]["mlp"] = {"op": "identity"}, {"op": "identity"}
    student = build_student(teacher, layers)
    cfg = RunConfig().finetune.model_copy(update={"steps": args.steps})
    seq_len = RunConfig().data.seq_len
    gen = torch.Generator().manual_seed(0)
    train = torch.randint(0, GEMMA3_270M["vocab_size"], (8 * cfg.batch_size, seq_len), generator=gen)
    validation = torch.randint(0, GEMMA3_270M["vocab_size"], (RunConfig().data.validation_seqs, seq_len), generator=gen)
    dtype = resolve_dtype(args.dtype)
    loss = args.loss[0]  # a worker runs one
    if args.chunk_tokens:
        losses.LOGITS_PER_CHUNK = args.chunk_tokens * GEMMA3_270M["vocab_size"]
    if loss == "full":
        ft.distill_loss = partial(ft.distill_loss, full_logits=True)  # finetune() looks it up in its module
    setup_rss = psutil.Process().memory_info().rss
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    marks: list[float] = []
    started = time.perf_counter()
    out = {"loss": loss, "malloc": args.malloc[0],
           "chunk_tokens": losses.LOGITS_PER_CHUNK // GEMMA3_270M["vocab_size"] if loss == "chunked" else None, "batch_size": cfg.batch_size, "seq_len": seq_len, "steps": cfg.steps,
           "dtype": dtype, "threads": torch.get_num_threads(), "setup_rss_gb": setup_rss / 1e9, "setup_peak_gb": setup_peak / 1e9}
    try:
        result = ft.finetune(student, teacher, train, validation, cfg, eval_batch_size=RunConfig().evaluate.batch_size,
                             on_step=lambda step, m: marks.append(time.perf_counter()), dtype=dtype)
        out.update(status="ok", val_loss_before=result["val_loss_before"], val_loss=result["val_loss"],
                   curve=[c["loss"] for c in result["curve"]])
    except (RuntimeError, MemoryError) as exc:  # the address-space cap: an allocation failed
        out.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    steps = [b - a for a, b in zip(marks, marks[1:])]
    out.update(finetune_s=time.perf_counter() - started, steps_done=len(marks), step_s=steps,
               s_per_step=sum(steps) / len(steps) if steps else None,
               peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
    print(json.dumps(out))


def _row(r: dict) -> str:
    per_step = f"{r['s_per_step']:.1f}" if r["s_per_step"] else "-"
    status = r["status"] if r["status"] == "ok" else f"failed after {r['steps_done']} steps: {r['error']}"
    return (f"| {r['loss']} | {r['chunk_tokens'] or '-'} | {r['malloc']} | {r['dtype']} | {r['peak_rss_gb']:.2f} | {r['setup_rss_gb']:.2f} | {per_step} | "
            f"{', '.join(f'{s:.1f}' for s in r['step_s']) or '-'} | {r['finetune_s']:.0f} | {status} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", nargs="+", choices=["chunked", "full"], default=["chunked", "full"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--malloc", nargs="+", choices=["unast", "glibc"], default=["unast"],
                        help="unast: `unast run`'s malloc tuning; glibc: the C library's defaults")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="autocast dtype of the training forward passes (default: the run config's compute.dtype)")
    parser.add_argument("--cap-gb", type=float, default=20.0, help="address-space limit per process, 1e9 bytes (0: none)")
    parser.add_argument("--chunk-tokens", type=int, help="tokens per logits chunk (default: losses.LOGITS_PER_CHUNK / vocab)")
    parser.add_argument("--markdown", type=Path, help="write the table (with the command and date) here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for loss, malloc in [(loss, malloc) for malloc in args.malloc for loss in args.loss]:
        cmd = [sys.executable, __file__, "--worker", "--loss", loss, "--malloc", malloc, "--steps", str(args.steps),
               "--cap-gb", str(args.cap_gb), "--dtype", args.dtype] + (["--chunk-tokens", str(args.chunk_tokens)] if args.chunk_tokens else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.exit(f"{loss}, {malloc}: worker exited {proc.returncode}: {proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    first = rows[0]
    lines = ["# Final finetune memory on a Gemma 3 270M-shaped model (262K vocabulary)", "",
             f"`flock /tmp/unast-heavy.lock .venv/bin/python bench/bench_gemma_memory.py {' '.join(sys.argv[1:])}`", "",
             f"{datetime.date.today().isoformat()}, {platform.node()}, {first['threads']} torch threads; random "
             f"weights, fp32 teacher + student (two sublayers skipped; autocast dtype in the table), finetune batch {first['batch_size']} x "
             f"{first['seq_len']} tokens, {first['steps']} steps, address-space cap {args.cap_gb:g} GB per process.",
             "", "| loss | chunk tokens | malloc | autocast | peak RSS GB | RSS after setup GB | s/step (steps 2+) | step s | finetune s | status |",
             "|---|---:|---|---|---:|---:|---:|---|---:|---|", *map(_row, rows)]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
