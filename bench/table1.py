"""The paper's Table 1 on our default teacher: layer-wise distillation of downsized candidates, teacher
init (importance + least squares) against random init at equal steps.

Part 1 ("local"): a 50%-width MLP and an attention with a third of its heads, each in a head, a middle
and a tail block: held-out normalized MSE of skipping (1 by definition), at init, after distillation.
Part 2 ("total model"): every MLP sublayer replaced by its distilled 50%-width candidate, test perplexity
with teacher init vs random init (and the teacher's).

    .venv/bin/python bench/table1.py [--model smollm2-135m] [--steps 40] [--out bench/results]

Writes <out>/table1.md and table1.csv. CPU, about 6 minutes on 2 cores for the default teacher.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from unast_core.train.activations import capture, is_captured  # noqa: E402
from unast_core.model.adapters import Adapter  # noqa: E402
from unast_core.model.assemble import build_student  # noqa: E402
from unast_core.config import AttentionCandidate, MlpCandidate, PoolConfig, build_config  # noqa: E402
from unast_core.data.corpus import build_splits  # noqa: E402
from unast_core.train.distill import distill  # noqa: E402
from unast_core.train.losses import perplexity  # noqa: E402
from unast_core.report.figures import markdown_table  # noqa: E402
from unast_core.model.operators import candidate_state, resolve_pool  # noqa: E402
from unast_core.store import write_tensors  # noqa: E402
from unast_core.model.teacher import load_teacher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=None, help="distillation steps (default: the cpu preset's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path(".unast/bench-table1"))
    args = parser.parse_args()
    overrides = {"teacher.model": args.model, "distill.patience": 10**6}  # equal steps for both inits
    if args.steps is not None:
        overrides["distill.steps"] = args.steps
    cfg = build_config("cpu", overrides=overrides)
    teacher = load_teacher(cfg.teacher.model)
    model = teacher.model.requires_grad_(False)
    adapter = Adapter(model)
    data = build_splits(teacher.tokenizer, cfg.data)
    states = args.work / "calibration"
    started = time.perf_counter()
    if not is_captured(states):
        capture(model, data["calibration"][:cfg.distill.seqs], states, 4)
    print(f"captured {cfg.distill.seqs} calibration sequences in {time.perf_counter() - started:.1f}s", flush=True)
    pool = resolve_pool(PoolConfig(ops=["teacher"], attention=[AttentionCandidate(heads=1 / 3)],
                                   mlp=[MlpCandidate(hidden=0.5)]), model.config)
    attn, mlp = pool[1], pool[2]
    n = adapter.n_blocks
    rows, csv_rows = [], []
    for kind, spec in (("attn", attn), ("mlp", mlp)):
        for where, block in (("head", 0), ("middle", n // 2), ("tail", n - 1)):
            index = 2 * block + (kind == "mlp")
            result = {how: distill(adapter, index, spec, states, cfg.distill, how)[1] for how in ("teacher", "random")}
            t, r = result["teacher"], result["random"]
            line = [f"{kind} {spec_text(spec)}", f"{where} (block {block})", 1.0, t["nmse_init"], t["nmse"],
                    r["nmse_init"], r["nmse"], t["steps"], r["steps"]]
            rows.append(line)
            csv_rows.append(dict(zip(HEADER, line)))
            print(" | ".join(str(x) for x in line), flush=True)
    total = total_model(model, adapter, mlp, states, cfg, data, args.work)
    args.out.mkdir(parents=True, exist_ok=True)
    text = (f"# Table 1 on {teacher.source}\n\nLocal error: normalized MSE (MSE(t, s) / MSE(t, 0)) of the sublayer's residual "
            f"update on {cfg.distill.eval_seqs} held-out calibration sequences; {cfg.distill.steps} Adam steps, "
            f"batch {cfg.distill.batch_size} x {cfg.data.seq_len} tokens, "
            f"lr {cfg.distill.lr_max:g} -> {cfg.distill.lr_min:g} cosine; both inits get the same steps.\n\n"
            + markdown_table(HEADER, rows) + "\n\n## Total model: every MLP replaced by its distilled 50%-width candidate\n\n"
            + markdown_table(["model", "test perplexity", "distill wall s"], total) + "\n")
    (args.out / "table1.md").write_text(text)
    with open(args.out / "table1.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(csv_rows)
    print(text)
    print(f"total {time.perf_counter() - started:.0f}s; wrote {args.out / 'table1.md'}")


HEADER = ["candidate", "position", "NMSE skip", "NMSE init (teacher)", "NMSE distilled (teacher init)",
          "NMSE init (random)", "NMSE distilled (random init)", "steps (teacher)", "steps (random)"]


def spec_text(spec: dict) -> str:
    if spec["op"] == "mlp":
        return f"hidden {spec['hidden']}"
    return f"{spec['heads']} heads / {spec['kv_heads']} KV, dim {spec['head_dim']}"


def total_model(model, adapter, spec, states, cfg, data, work: Path) -> list[list]:
    test = data["test"]
    out = [["teacher", perplexity(model, test, cfg.evaluate.batch_size), 0.0]]
    layers = [{"attn": {"op": "teacher"}, "mlp": dict(spec)} for _ in range(adapter.n_blocks)]
    for how in ("teacher", "random"):
        started = time.perf_counter()
        weights = {}
        for sub in adapter.sublayers:
            if sub.kind == "mlp":
                modules, metrics = distill(adapter, sub.index, spec, states, cfg.distill, how)
                path = work / f"total-{how}" / f"{sub.index:03d}.safetensors"
                weights[str(sub.index)] = str(write_tensors(path, candidate_state(modules)))
        wall = time.perf_counter() - started
        student = build_student(model, layers, weights)
        ppl = perplexity(student, test, cfg.evaluate.batch_size)
        out.append([f"all MLPs at hidden {spec['hidden']}, {how} init", ppl, round(wall, 1)])
        print(out[-1], flush=True)
    return out


if __name__ == "__main__":
    with torch.inference_mode(False):
        main()
