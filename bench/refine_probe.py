"""Whole architectures before any finetune, on a finished run's store: KL to the teacher on the validation rows
(what `search.refine_rounds` minimises) and on the held-out set, for named architectures and for each one refined
in its own context (unast_core.search.refine).

    .venv/bin/python bench/refine_probe.py --run-dir HOME/runs/<fingerprint> --data-key KEY --scores SCORES.json \
        --lut LUT.json --budget 0.75 --arch NAME=SUMMARY [--arch ...] [--refine NAME ...] [--rounds 3] [--rows 8] \
        [--json OUT.json]

SUMMARY is an architecture as results.json writes it ("TT -- aT Lm ..."; T teacher, - skip, L linear, a fewer
heads, m narrower MLP), for a pool of [teacher, identity, linear, attention, mlp] (the default pool's order).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GLYPHS = {"T": 0, "-": 1, "L": 2}


def to_choice(summary: str) -> list[int]:
    out = []
    for pair in summary.split():
        out += [GLYPHS.get(pair[0], 3), GLYPHS.get(pair[1], 4)]
    return out


def to_summary(choice: list[int]) -> str:
    names = {0: "T", 1: "-", 2: "L"}
    return " ".join(names.get(choice[2 * b], "a") + names.get(choice[2 * b + 1], "m") for b in range(len(choice) // 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--data-key", required=True, help="the data file's key (data/<key>.safetensors)")
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument("--lut", type=Path, required=True)
    parser.add_argument("--budget", type=float, required=True, help="latency budget of the refine steps")
    parser.add_argument("--arch", action="append", default=[], help="NAME=SUMMARY")
    parser.add_argument("--refine", action="append", default=[], help="NAME of an --arch to refine")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8, help="validation rows the refine steps measure")
    parser.add_argument("--heldout-rows", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from unast_core.config import RunConfig
    from unast_core.model.teacher import load_teacher
    from unast_core.search.plan import best_under_budget
    from unast_core.search.refine import Evaluator, refine
    from unast_core.store import read_json, read_tensors, write_json
    from unast_core.train.losses import kd_terms, lm_loss_terms
    from unast_core.train.precision import autocast

    table, lut = read_json(args.scores), read_json(args.lut)
    available = [[math.isfinite(s) for s in row] for row in table["scores"]]
    model = load_teacher(args.model).model.float().eval()
    data = read_tensors(args.run_dir / "data" / f"{args.data_key}.safetensors")
    heldout = next(iter(read_tensors(next((args.run_dir / "data").glob("heldout-*.safetensors"))).values()))
    rows = heldout[:args.heldout_rows]
    states = args.run_dir / "activations" / args.data_key / "validation"
    evaluator = Evaluator(model, data["validation"][:args.rows], states, table["pool"], table["weights"], available, 4,
                          "kl", args.dtype)
    with torch.inference_mode(), autocast(args.dtype, "cpu"):
        teacher = [model(rows[s:s + 4], use_cache=False).logits for s in range(0, len(rows), 4)]

    @torch.inference_mode()
    def held_out(choice: list[int]) -> dict[str, float]:
        kl = lm = 0.0
        with autocast(args.dtype, "cpu"), evaluator.installed(choice):
            for k, s in enumerate(range(0, len(rows), 4)):
                logits = model(rows[s:s + 4], use_cache=False).logits
                kl += kd_terms(logits, teacher[k]).item()
                lm += lm_loss_terms(logits, rows[s:s + 4]).item()
        return {"kl": kl / rows.numel(), "loss": lm / rows[:, 1:].numel()}

    out = {"teacher": held_out([0] * len(available)), "archs": {}, "argv": sys.argv[1:]}
    archs = dict(item.split("=", 1) for item in args.arch)
    for name, summary in archs.items():
        choice = to_choice(summary)
        out["archs"][name] = {"summary": summary, "validation_kl": evaluator.loss(choice), "heldout": held_out(choice)}
        print(name, out["archs"][name], file=sys.stderr, flush=True)
    cfg = RunConfig().search
    for name in args.refine:
        started = time.perf_counter()
        found = refine(to_choice(archs[name]), evaluator.contextual, evaluator.loss,
                       lambda s: best_under_budget(s, lut, {"latency": args.budget}, cfg), args.rounds,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
        out["archs"][f"{name} refined"] = {"summary": to_summary(found.choice), "validation_kl": found.loss,
                                           "heldout": held_out(found.choice), "rounds": found.rounds,
                                           "wall_s": time.perf_counter() - started}
    for name, a in out["archs"].items():
        print(f"| {name} | {a['validation_kl']:.3f} | {a['heldout']['kl']:.3f} | "
              f"{math.exp(a['heldout']['loss'] - out['teacher']['loss']):.3f} | `{a['summary']}` |")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
