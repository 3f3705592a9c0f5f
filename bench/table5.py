"""The paper's Table 5 on our default teacher: UNAST against post-training quantization and pruning, and
both combined (Section 5.3).

Rows: the teacher; round-to-nearest 4-bit; GPTQ 3- and 4-bit; SparseGPT 2:4 and 50%; the UNAST students at
latency 0.5 and 0.75 (exports of `unast run`, given with --students); those students + GPTQ 4-bit and the 0.5
one + SparseGPT 50%. Each compression is calibrated on the compressed model's own activations (calibration
split), groups of --group-size input columns per scale. For each: size (Appendix D, GB = 2^30 bytes, and
its ratio to the teacher's), the packed export's bytes on disk, the measured prefill latency ratio (median of
interleaved repeats with the teacher, in fp32 as the students are deployed), and perplexity in-domain (test
split) and held-out (lee-news). There is no int4 or sparse kernel on this CPU: a compressed layer runs as the
dense layer it rebuilds, so quantization and pruning bring no speed-up here (the paper assumes none for
3-4 bits either); the latency column says what really runs.

    .venv/bin/python bench/table5.py --data STORE/data/KEY.safetensors STORE/data/heldout-KEY.safetensors \
                                     --students OUT0.5 OUT0.75
                                     [--model smollm2-135m] [--work DIR] [--out bench/results]

--data is the split file of the run store the students were built from and its held-out file (the same test and
held-out rows).
Writes <out>/table5.md, table5.csv and table5.json; the packed exports go under --work.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from unast_core.compress.apply import compress_model, model_bytes  # noqa: E402
from unast_core.compress.export import packed_copy  # noqa: E402
from unast_core.config import CompressConfig, RegimeConfig  # noqa: E402
from unast_core.model.assemble import build_student  # noqa: E402
from unast_core.model.modeling_unast import SUBLAYER_KINDS, UnastForCausalLM, family_of, get_blocks  # noqa: E402
from unast_core.model.teacher import load_teacher  # noqa: E402
from unast_core.report.export import export_checkpoint  # noqa: E402
from unast_core.report.figures import markdown_table  # noqa: E402
from unast_core.search.latency import student_latency  # noqa: E402
from unast_core.store import read_tensors, write_json  # noqa: E402
from unast_core.train.losses import perplexity  # noqa: E402

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def rows_to_build(students: dict[str, Path], group_size: int) -> list[tuple[str, str | None, CompressConfig | None]]:
    gptq = lambda bits: CompressConfig(method="gptq", bits=bits, group_size=group_size)  # noqa: E731
    rtn4 = CompressConfig(method="rtn", bits=4, group_size=group_size)
    sparse = lambda s: CompressConfig(method="sparsegpt", sparsity=s)  # noqa: E731
    # the rows of the paper's claim first, so that a partial run already answers it
    return [("teacher", None, None), ("GPTQ 3-bit", None, gptq(3)), ("UNAST 0.5 + GPTQ 4-bit", "0.5", gptq(4)),
            ("UNAST 0.5", "0.5", None), ("GPTQ 4-bit", None, gptq(4)), ("SparseGPT 50%", None, sparse(0.5)),
            ("UNAST 0.5 + SparseGPT 50%", "0.5", sparse(0.5)), ("RTN 4-bit", None, rtn4),
            ("SparseGPT 2:4", None, sparse("2:4")), ("UNAST 0.75", "0.75", None),
            ("UNAST 0.75 + GPTQ 4-bit", "0.75", gptq(4))]


def reload_check(out: Path, tokens: torch.Tensor) -> float:
    """Mean LM loss of the packed export on `tokens`, loaded in a fresh interpreter that cannot import unast."""
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules['unast_core'] = None
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        ids = torch.tensor({tokens.tolist()})
        with torch.no_grad():
            print(m(ids, labels=ids).loss.item())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--students", type=Path, nargs=2, required=True, metavar=("LATENCY_0.5", "LATENCY_0.75"))
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--calibration-seqs", type=int, default=CompressConfig().calibration_seqs)  # as `ptq`
    parser.add_argument("--heldout-rows", type=int, default=16)
    parser.add_argument("--test-rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path(".unast/bench-table5"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    teacher = load_teacher(args.model)
    data = {name: rows for path in args.data for name, rows in read_tensors(path).items()}
    students = dict(zip(("0.5", "0.75"), args.students))
    regime = RegimeConfig()
    rows = []
    for name, base, cfg in rows_to_build(students, args.group_size):
        started = time.perf_counter()
        if base is None:
            layers = [{kind: {"op": "teacher"} for kind in SUBLAYER_KINDS}] * teacher.model.config.num_hidden_layers
            model = build_student(teacher.model, layers)
        else:
            model = UnastForCausalLM.from_pretrained(students[base], dtype=torch.float32).eval()
        blocks = get_blocks(model.student, family_of(model.student.config))
        meta, disk, reload = None, None, None
        if cfg is not None:
            cfg = cfg.model_copy(update={"calibration_seqs": args.calibration_seqs})
            with BF16:
                packed, meta = compress_model(model, blocks, data["calibration"], cfg)
            stored = packed_copy(model, {f"{layer}.{k}": v for layer, part in packed.items() for k, v in part.items()},
                                 {**cfg.model_dump(mode="json"), "layers": meta})
            out = export_checkpoint(stored, teacher.tokenizer, args.work / name.replace(" ", "_").replace("%", "pct"),
                                    card=f"# {name}\n")
            disk = (out / "model.safetensors").stat().st_size
            if name == "UNAST 0.5 + GPTQ 4-bit":  # loads where unast is not installed and computes the same
                with torch.no_grad():
                    here = float(stored(data["heldout"][:2], labels=data["heldout"][:2]).loss)
                reload = {"fresh_process_loss": reload_check(out, data["heldout"][:2]), "in_process_loss": here}
            del stored, packed
        size = model_bytes(model, blocks, meta)
        with torch.no_grad(), BF16:
            ppl = {split: perplexity(model, data[split][:n], 4) for split, n in
                   (("test", args.test_rows), ("heldout", args.heldout_rows))}
        # The project's procedure (`student_latency`): the model's modules installed in the teacher, timed
        # interleaved with it; a compressed model's every sublayer is swapped in (dense, as it runs here).
        timed = [{k: {"op": "compressed"} if cfg is not None and spec["op"] == "teacher" else spec
                  for k, spec in layer.items()} for layer in model.config.unast_layers]
        timing = student_latency(teacher.model, model.student, timed, regime, 1, args.repeats)
        row = {"name": name, "gb": size["gib"], "bytes": size["bytes"], "disk_bytes": disk,
               "disk_vs_app_d": disk / size["bytes"] if disk else None, "latency_ratio": timing["latency_ratio"],
               "test_ppl": ppl["test"], "heldout_ppl": ppl["heldout"],
               "body_params": size["body_params"], "outer_params": size["outer_params"],
               "settings": cfg.model_dump(mode="json") if cfg else None, "reload": reload,
               "wall_s": time.perf_counter() - started}
        rows.append(row)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {row['gb']:.4f} GB, latency {row['latency_ratio']:.3f}, "
              f"test ppl {row['test_ppl']:.2f}, held-out ppl {row['heldout_ppl']:.2f} ({row['wall_s']:.0f}s)", flush=True)
        del model
        write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    """The table so far (rewritten after every row, so an interrupted run keeps what it measured)."""
    out, base = args.out, rows[0]
    for r in rows:
        r["size_ratio"] = r["bytes"] / base["bytes"]
    by = {r["name"]: r for r in rows}
    if "UNAST 0.5 + GPTQ 4-bit" not in by:
        return
    combo, g3 = by["UNAST 0.5 + GPTQ 4-bit"], by["GPTQ 3-bit"]
    smaller, better = combo["gb"] < g3["gb"], combo["heldout_ppl"] < g3["heldout_ppl"]
    header = ["method", "size GB (App. D)", "size ratio", "on disk GB (packed)", "disk / App. D",
              "latency ratio (measured)", "in-domain ppl", "held-out ppl"]
    table = markdown_table(header, [[r["name"], r["gb"], r["size_ratio"], r["disk_bytes"] / 2**30 if r["disk_bytes"] else None,
                                     r["disk_vs_app_d"], r["latency_ratio"], r["test_ppl"], r["heldout_ppl"]] for r in rows])
    reload = combo["reload"]
    claim = (f"UNAST 0.5 + GPTQ 4-bit is {combo['gb']:.4f} GB against GPTQ 3-bit's {g3['gb']:.4f} GB "
             f"({'smaller' if smaller else 'not smaller'}), held-out perplexity {combo['heldout_ppl']:.2f} against "
             f"{g3['heldout_ppl']:.2f} ({'lower' if better else 'higher'}): the paper's claim "
             f"{'holds' if smaller and better else 'does not hold'} here.")
    text = "\n".join([
        "# Table 5 on SmolLM2-135M: UNAST with and without post-training quantization / pruning", "",
        "Produced by `bench/table5.py` (numbers measured, not copied). Sizes follow Appendix D: embedding and head "
        "(tied here, stored once) and every parameter outside the body's linear layers at 16 bits; body linears at "
        "their bits, or their non-zeros at 16 bits. GB = 2^30 bytes, as the paper's worked example implies. "
        "\"On disk\" is the packed export's model.safetensors (codes packed, fp16 scale and 8-bit zero per group; "
        "sparse: 16-bit non-zeros and a 1-bit mask).", "",
        f"Perplexity: the first {args.test_rows} rows of the in-domain test split and {args.heldout_rows} rows of "
        "the held-out set (lee-news) of the run store the students were built from, computed under bf16 autocast "
        "(as the packed export runs; 2.3x faster than fp32 on this CPU). Compression calibrated on "
        f"{args.calibration_seqs} calibration sequences of 256 tokens.", "",
        f"Latency: prefill 1x256, fp32, median of {args.repeats} interleaved repeats with the teacher, by the "
        "procedure of the evaluation stage (the model's modules installed in the teacher, weights colocated; for a "
        "compressed model every sublayer is swapped in); the teacher row times the teacher against itself, the "
        "noise floor of this shared machine. **No int4 or 2:4 / sparse "
        "kernel exists on this CPU**: a compressed layer runs as the dense layer it rebuilds, so quantization and "
        "pruning give no speed-up here (ratios near 1.0 are that, plus timing noise); the UNAST rows' speed-up is "
        "the architecture's.", "",
        table, "", "## The paper's claim (Section 5.3)", "", claim, "",
        f"Packed export of UNAST 0.5 + GPTQ 4-bit reloaded in a fresh process without unast: loss on 2 held-out rows "
        f"{reload['fresh_process_loss']:.4f} vs {reload['in_process_loss']:.4f} in process (bf16 both)." if reload else "",
        "", f"Teacher perplexity as measured here: in-domain {base['test_ppl']:.3f}, held-out {base['heldout_ppl']:.3f}.",
        "", "Settings: " + "; ".join(f"{r['name']}: {json.dumps(r['settings'])}" for r in rows if r["settings"]), ""])
    out.mkdir(parents=True, exist_ok=True)
    (out / "table5.md").write_text(text)
    with open(out / "table5.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k not in ("settings", "reload")])
        writer.writeheader()
        writer.writerows([{k: v for k, v in r.items() if k not in ("settings", "reload")} for r in rows])
    write_json(out / "table5.json", {"rows": rows, "claim": {"smaller": smaller, "lower_heldout_ppl": better}})
    print(text)


if __name__ == "__main__":
    main()
