"""Held-out quality of exported students: perplexity and KL to the teacher on the held-out set, next to the
in-domain figures their results.json holds. For exports made before the evaluation reported the held-out set,
and to compare exports on exactly the same rows.

    .venv/bin/python bench/heldout_eval.py OUT_DIR [OUT_DIR ...] [--model smollm2-135m] [--rows 32] [--seq-len 256]

Prints one markdown row per export and writes OUT_DIR/heldout.json (atomically) for each.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", nargs="+", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--heldout", default="lee-news")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from unast_core.data.corpus import load_texts
    from unast_core.data.heldout import heldout_rows
    from unast_core.model.modeling_unast import UnastForCausalLM
    from unast_core.model.teacher import load_teacher
    from unast_core.store import write_json
    from unast_core.train.losses import compare_to_teacher

    teacher = load_teacher(args.model)
    rows = heldout_rows(teacher.tokenizer, load_texts(args.heldout), args.rows, args.seq_len, args.seed)
    print("| export | in-domain ppl ratio | in-domain KL | held-out ppl ratio | held-out KL | latency ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for out in args.outputs:
        results = json.loads((out / "results.json").read_text())
        student = UnastForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        both = compare_to_teacher(student, teacher.model, rows, 4)
        held = {"heldout": args.heldout, "rows": args.rows, "seq_len": args.seq_len,
                "teacher_ppl": math.exp(both["teacher_loss"]), "student_ppl": math.exp(both["student_loss"]),
                "kl": both["kl"]}
        held["ratio"] = held["student_ppl"] / held["teacher_ppl"]
        write_json(out / "heldout.json", held)
        s, t = results["student"], results["teacher"]
        print(f"| {out.name} | {s['test_ppl'] / t['test_ppl']:.3f} | {s['kl_to_teacher']:.3f} | {held['ratio']:.3f} "
              f"({held['student_ppl']:.2f} / {held['teacher_ppl']:.2f}) | {held['kl']:.3f} | {s['latency_ratio']:.3f} |")


if __name__ == "__main__":
    main()
