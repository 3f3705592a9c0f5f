"""Held-out ablation of the defaults (data, operators, selection, finetune): which settings make a student that
stands in for its teacher on text from a domain no stage trained on.

Each variant is one `unast run --budget latency=B` with its `--set` overrides, all on one run store (work a
variant shares with an earlier one, such as the cost table or the teacher states, is reused), run one after
the other (latency stages must have the host to themselves). A variant whose output holds results.json is not
run again. The table gives, per variant, the student/teacher perplexity ratio in-domain (the test split of
--source, by default the CPython docs every variant below was measured on) and held-out (lee-news), the KL to
the teacher on both, the measured latency and the wall time.

    .venv/bin/python bench/ablation_heldout.py [--variants a,b,...] [--budget 0.75] [--source cpython-docs]
        [--home DIR] [--out DIR]

Writes <out>/ablation.md and ablation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (what it tests, overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "fp32": ("the previous defaults: fp32 compute, CPython docs only", ["compute.dtype=float32"]),
    "bf16-timed": ("bf16 compute, timed and exported in bf16, docs only", ["cost.dtype=bfloat16"]),
    "bf16-docs": ("bf16 compute (timed in fp32), docs only", []),
    "bf16-mix": ("bf16, half of calibration and validation sampled from the teacher", ["data.generated_fraction=0.5"]),
    "bf16-mix-kd": ("bf16-mix, select and finetune on KD alone (no LM term)",
                    ["data.generated_fraction=0.5", "select.lm_weight=0", "finetune.lm_weight=0"]),
    "bf16-gen-kd": ("bf16, calibration and validation all sampled from the teacher, KD alone",
                    ["data.generated_fraction=1.0", "select.lm_weight=0", "finetune.lm_weight=0"]),
    "bf16-mix-nolinear": ("bf16-mix without the least-squares linear operator",
                          ["data.generated_fraction=0.5", "pool.ops=[teacher,identity]"]),
    "bf16-mix-kl": ("bf16-mix, candidates scored by KL to the teacher", ["data.generated_fraction=0.5",
                                                                        "score.metric=kl"]),
    "bf16-mix-long": ("bf16-mix with 48 finetune steps and 64 distillation sequences",
                      ["data.generated_fraction=0.5", "finetune.steps=48", "distill.seqs=64"]),
    "mix-ft96": ("the default (half teacher text), final finetune 96 KD + LM steps at 1e-4",
                 ["finetune.steps=96", "finetune.lm_weight=1", "finetune.lr_max=1e-4", "finetune.lr_min=1e-5"]),
    "mix-ft96-kd-lr3": ("96 finetune steps on KD alone at lr 3e-4 -> 3e-5",
                        ["finetune.steps=96", "finetune.lm_weight=0", "finetune.lr_max=3e-4", "finetune.lr_min=3e-5"]),
    "d128-kd": ("mix-ft96-kd-lr3 with every calibration row distilled (128, 8 held back) for 60 steps, select on KD",
                ["finetune.steps=96", "finetune.lm_weight=0", "finetune.lr_max=3e-4", "finetune.lr_min=3e-5",
                 "select.lm_weight=0", "distill.seqs=128", "distill.eval_seqs=8", "distill.steps=60"]),
    "mix-ft96-lr3": ("96 finetune steps, KD + LM, at lr 3e-4 -> 3e-5", ["finetune.steps=96", "finetune.lm_weight=1", "finetune.lr_max=3e-4",
                                                      "finetune.lr_min=3e-5"]),
    "nolinear": ("the default without the least-squares linear operator (skip, narrower heads and MLP only)",
                 ["pool.ops=[teacher,identity]"]),
    "kl8": ("the default, candidates scored by KL to the teacher on all 8 validation rows (half teacher text)",
            ["score.metric=kl", "score.seqs=8"]),
    "nolinear-kl8": ("nolinear and kl8 together", ["pool.ops=[teacher,identity]", "score.metric=kl",
                                                   "score.seqs=8"]),
    "gen1": ("the default with calibration and validation all sampled from the teacher (no docs rows)",
             ["data.generated_fraction=1.0"]),
    "gen1-nolinear": ("gen1 without the linear operator", ["data.generated_fraction=1.0",
                                                          "pool.ops=[teacher,identity]"]),
    "c384": ("the default with 384 calibration rows (half teacher text): the finetune sees each row once, not 3 times",
             ["data.calibration_seqs=384"]),
    "frozen": ("the default, the final finetune trains only the replaced sublayers (the teacher's stay frozen)",
               ["finetune.trainable=replaced"]),
    "c384-frozen": ("c384 and frozen together", ["data.calibration_seqs=384", "finetune.trainable=replaced"]),
    "c384-t2": ("c384, the final finetune's KD at temperature 2", ["data.calibration_seqs=384",
                                                                   "finetune.temperature=2"]),
    "c384-frozen192": ("c384-frozen with 192 finetune steps (the default's finetune time)",
                       ["data.calibration_seqs=384", "finetune.trainable=replaced", "finetune.steps=192"]),
    "fitted2": ("the default, the search scaling every distilled replacement's score by 2 (search.fitted_scale: "
                "their local error off-domain is 1.4-2x their calibration error; a skip's is not)",
                ["search.fitted_scale=2"]),
    "fitted4": ("fitted2 with a factor of 4", ["search.fitted_scale=4"]),
    "fitted2-ft192": ("fitted2 with 192 final finetune steps (twice the default's)",
                      ["search.fitted_scale=2", "finetune.steps=192"]),
    "table3-no-select-ft": ("the paper's Table 3: select among the K searched architectures without the short "
                            "finetune (select.steps=0)", ["select.steps=0"]),
}


def run(name: str, sets: list[str], args: argparse.Namespace) -> dict:
    out = args.out / name
    if not (out / "results.json").exists():
        cmd = [sys.executable, "-m", "flows.cli", "run", "--budget", f"latency={args.budget:g}", "--home",
               str(args.home), "--output", str(out),
               *[x for s in [f"data.source={args.source}", *sets] for x in ("--set", s)]]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[3:])}", flush=True)
        started = time.perf_counter()
        with open(args.out / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        if proc.returncode:
            print(f"  failed (exit {proc.returncode}); see {log.name}", flush=True)
            return {"variant": name, "error": f"exit {proc.returncode}"}
        (out / "bench-wall.json").write_text(json.dumps({"wall_s": time.perf_counter() - started}))
    r = json.loads((out / "results.json").read_text())
    s, t = r["student"], r["teacher"]
    return {"variant": name, "sets": sets, "in_ratio": s["test_ppl"] / t["test_ppl"], "in_kl": s["kl_to_teacher"],
            "held_ratio": s["heldout_ppl"] / t["heldout_ppl"] if "heldout_ppl" in s else None,
            "held_kl": s.get("heldout_kl"), "latency": s["latency_ratio"], "params": s["param_ratio"],
            "summary": r["summary"], "wall_s": json.loads((out / "bench-wall.json").read_text())["wall_s"],
            "stages": r["wall_s"], "dtype": r.get("compute_dtype")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--budget", type=float, default=0.75)
    parser.add_argument("--source", default="cpython-docs", help="data.source of every variant (the variants were "
                        "measured on the docs, the default before cpython-docs+enwiki)")
    parser.add_argument("--home", type=Path, default=Path(".unast"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/ablation"))
    args = parser.parse_args()
    args.out, args.home = args.out.resolve(), args.home.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        sys.exit(f"ablation: unknown variant(s) {', '.join(unknown)}; use {', '.join(VARIANTS)}")
    rows = [run(name, VARIANTS[name][1], args) for name in names]

    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    lines = [f"# Held-out ablation at latency={args.budget:g} (SmolLM2-135M-Instruct, 2 CPU cores)", "",
             f"Ratios are student / teacher perplexity; in-domain: the {args.source} test split (16 x 256 tokens); "
             "held-out: "
             "lee-news (32 x 256 tokens, news prose no stage trained on). KL: nats/token to the teacher. Wall: the "
             "whole `unast run`, on a run store shared by the variants (reused stages are not paid twice).", "",
             "| variant | what | held-out ratio | held-out KL | in-domain ratio | in-domain KL | latency | params | "
             "wall (s) | architecture |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {VARIANTS[r['variant']][0]} | {r['error']} |||||||| ")
            continue
        lines.append(f"| {r['variant']} | {VARIANTS[r['variant']][0]} | {f(r['held_ratio'])} | {f(r['held_kl'])} | "
                     f"{f(r['in_ratio'])} | {f(r['in_kl'])} | {f(r['latency'])} | {f(r['params'])} | "
                     f"{f(r['wall_s'], '.0f')} | `{r['summary']}` |")
    lines += ["", "Wall time per stage (s):", ""]
    lines += [f"- {r['variant']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items())
              for r in rows if "error" not in r]
    (args.out / "ablation.md.tmp").write_text("\n".join(lines) + "\n")
    os.replace(args.out / "ablation.md.tmp", args.out / "ablation.md")
    (args.out / "ablation.json.tmp").write_text(json.dumps(rows, indent=1))
    os.replace(args.out / "ablation.json.tmp", args.out / "ablation.json")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
