"""Each stage's unit of work timed in fp32 and in bf16 on the default teacher, in one run, interleaved, and
the bf16/fp32 ratio per stage (medians over repeats).

Stages (what one unit is):
  capture    teacher forward over 4 x 256 tokens with every boundary state kept (stage 1)
  distill    10 Adam steps of one MLP candidate on stored states, 4 x 256 tokens each (stage 2)
  score      one sublayer's candidates scored on 3 validation rows from the stored state (stage 3)
  finetune   3 KD + LM steps of the student on 4 x 256 tokens (stages 6-7)
  prefill    1 x 256 prefill of the teacher, as the cost table and the evaluation time it (stages 4, 8)
  sample     16 rows x 32 sampled tokens of teacher text (data)

    .venv/bin/python bench/bench_dtype.py [--repeats 3] [--out bench/results/dtype.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dtype.md")
    args = parser.parse_args()

    import torch

    from unast_core.config import DataConfig, DistillConfig, PoolConfig, TrainConfig
    from unast_core.data.corpus import build_doc_splits
    from unast_core.data.generated import sample_rows
    from unast_core.model.adapters import Adapter
    from unast_core.model.assemble import build_student
    from unast_core.model.operators import resolve_pool
    from unast_core.model.teacher import load_teacher
    from unast_core.search.scoring import score_sublayer
    from unast_core.train.activations import capture, load_meta
    from unast_core.train.distill import distill
    from unast_core.train.finetune import finetune
    from unast_core.train.precision import DTYPES, deployed, resolve_dtype

    teacher = load_teacher("smollm2-135m")
    model = teacher.model.eval()
    data = build_doc_splits(teacher.tokenizer, DataConfig(seq_len=256, calibration_seqs=8, validation_seqs=3,
                                                          test_seqs=1))
    pool = resolve_pool(PoolConfig(), model.config)
    mlp = next(j for j, s in enumerate(pool) if s["op"] == "mlp")
    work = Path(tempfile.mkdtemp(prefix="unast-dtype-"))
    layers = [{"attn": {"op": "teacher"}, "mlp": pool[mlp] if b % 2 else {"op": "teacher"}}
              for b in range(model.config.num_hidden_layers)]

    def stage_capture(dtype):
        capture(model, data["calibration"][:4], work / f"cap-{dtype}", 4, dtype=DTYPES[dtype])

    # states for distill / score, captured once per dtype outside the timing
    for dtype in ("float32", "bfloat16"):
        capture(model, data["calibration"][:8], work / f"states-{dtype}", 4, dtype=DTYPES[dtype])
        capture(model, data["validation"], work / f"val-{dtype}", 3)

    def stage_distill(dtype):
        cfg = DistillConfig(seqs=8, eval_seqs=2, steps=10, batch_size=4, eval_every=100)
        distill(Adapter(model), 1, pool[mlp], work / f"states-{dtype}", cfg, dtype=dtype)

    def stage_score(dtype):
        meta = load_meta(work / f"val-{dtype}")
        score_sublayer(model, data["validation"], work / f"val-{dtype}", 21, pool, meta["loss"], 4, dtype=dtype)

    def stage_finetune(dtype):
        student = build_student(model, layers)
        finetune(student, model, data["calibration"], data["validation"][:1], TrainConfig(steps=3, batch_size=4),
                 measure_before=False, dtype=dtype)

    def stage_prefill(dtype):
        with deployed(dtype, model) as (m,), torch.inference_mode():
            ids = data["calibration"][:1]
            m(ids, use_cache=False)
            start = time.perf_counter()
            for _ in range(5):
                m(ids, use_cache=False)
            return (time.perf_counter() - start) / 5

    def stage_sample(dtype):
        sample_rows(model, teacher.tokenizer, 16, 33, dtype=dtype)

    stages = {"capture": stage_capture, "distill": stage_distill, "score": stage_score, "finetune": stage_finetune,
              "prefill": stage_prefill, "sample": stage_sample}
    times = {(s, d): [] for s in stages for d in ("float32", "bfloat16")}
    for _ in range(args.repeats):
        for name, fn in stages.items():
            for dtype in ("float32", "bfloat16"):  # interleaved: the host's drift hits both alike
                start = time.perf_counter()
                inner = fn(dtype)
                times[(name, dtype)].append(inner if isinstance(inner, float) else time.perf_counter() - start)
                print(f"{name} {dtype}: {times[(name, dtype)][-1]:.2f} s", flush=True)
    lines = [f"# Stage units in fp32 vs bf16 (SmolLM2-135M, {torch.get_num_threads()} threads, "
             f"auto resolves to {resolve_dtype('auto')})", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; median of {args.repeats} interleaved repeats "
             "(`bench/bench_dtype.py`; the units are in its docstring).", "",
             "| stage | fp32 s | bf16 s | bf16 / fp32 |", "|---|---:|---:|---:|"]
    for name in stages:
        f32, b16 = (statistics.median(times[(name, d)]) for d in ("float32", "bfloat16"))
        lines.append(f"| {name} | {f32:.3f} | {b16:.3f} | {b16 / f32:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
