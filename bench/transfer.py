"""Which operators transfer: each distilled candidate's local error on text from another domain, next to the
error it was selected on.

For every (sublayer, candidate) of a run's score table, the candidate's normalized MSE of the sublayer's
residual update (as distillation measures it, `unast_core.train.distill.local_error`) on:
- calibration: the held-back calibration rows distillation measured it on (stored with the candidate);
- in-domain test: the first rows of the run's data source (its data.source), not trained on;
- held-out: lee-news rows (news prose, a domain no stage trains on).
The teacher's own update on each text is the target, so the numbers compare like with like. A ratio
held-out / calibration far above 1 is an operator that fitted its calibration text and does not transfer.

    .venv/bin/python bench/transfer.py SCORES_JSON [--model smollm2-135m] [--rows 8] [--markdown bench/results/transfer.md]

SCORES_JSON is a run's score table (results.json's `scores_path`). Writes the markdown table and a JSON
with every candidate's figures next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kind(spec: dict) -> str:
    if spec["op"] == "attention":
        return f"attention {spec['heads']}h/{spec['kv_heads']}kv"
    if spec["op"] == "mlp":
        return f"mlp {spec['hidden']}"
    return spec["op"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=8, help="rows of each text (seq_len 256)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    import torch

    from unast_core.config import RunConfig
    from unast_core.data.corpus import build_doc_splits, load_texts
    from unast_core.data.heldout import heldout_rows
    from unast_core.model.adapters import Adapter
    from unast_core.model.operators import SublayerRunner, load_candidate_modules
    from unast_core.model.teacher import load_teacher
    from unast_core.store import read_json, read_tensors, write_json
    from unast_core.train.activations import capture, load_boundary
    from unast_core.train.distill import _predict, local_error

    started = time.perf_counter()
    table = read_json(args.scores)
    teacher = load_teacher(args.model)
    model = teacher.model.float().eval()
    adapter = Adapter(model)
    data = RunConfig().data
    texts = {"in-domain test": build_doc_splits(teacher.tokenizer, data.model_copy(
                 update={"seq_len": args.seq_len}))["test"][:args.rows],
             "held-out": heldout_rows(teacher.tokenizer, load_texts(data.heldout), args.rows, args.seq_len, 0)}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, tokens in texts.items():
            capture(model, tokens, Path(tmp) / name.replace(" ", "-"), 4, dtype=torch.float32)
        for i, sublayer in enumerate(table["sublayers"]):
            runner = SublayerRunner(adapter, i)
            states = {}
            for name in texts:
                h = load_boundary(Path(tmp) / name.replace(" ", "-"), i).float()
                states[name] = (h, _predict(runner, None, h))
            for j, spec in enumerate(table["pool"]):
                weights = table["weights"][i][j]
                if not weights:
                    continue
                stored = read_json(Path(weights).with_suffix(".json"))
                modules = load_candidate_modules(adapter, i, spec, read_tensors(Path(weights)))
                row = {"sublayer": sublayer, "kind": kind(spec), "calibration": stored["nmse"],
                       "score": table["scores"][i][j]}
                for name, (h, target) in states.items():
                    row[name] = local_error(runner, modules, h, target)
                rows.append(row)
            print(f"{sublayer}: {sum(r['sublayer'] == sublayer for r in rows)} candidates", file=sys.stderr, flush=True)

    lines = ["# Which operators transfer: local error off the calibration text", "",
             f"`bench/transfer.py {' '.join(sys.argv[1:])}`", "",
             f"{datetime.date.today().isoformat()}, teacher {args.model}, {args.rows} x {args.seq_len}-token rows per text, "
             f"{len(rows)} candidates of {len(table['sublayers'])} sublayers ({time.perf_counter() - started:.0f} s). Normalized MSE "
             "of the sublayer's residual update against the teacher's (identity = 1.0). Calibration: the held-back "
             "calibration rows distillation measured (the run's data mix); in-domain test: the data source's test "
             "split; held-out: lee-news. Medians over sublayers; the last column counts candidates whose held-out "
             "error is more than twice their calibration error.", "",
             "| operator | n | calibration | in-domain test | held-out | held-out / calibration | > 2x |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == k]
        med = {c: statistics.median(r[c] for r in mine) for c in ("calibration", "in-domain test", "held-out")}
        ratios = [r["held-out"] / max(r["calibration"], 1e-12) for r in mine]
        lines.append(f"| {k} | {len(mine)} | {med['calibration']:.4f} | {med['in-domain test']:.4f} | "
                     f"{med['held-out']:.4f} | {statistics.median(ratios):.2f} | {sum(x > 2 for x in ratios)} |")
    worst = sorted(rows, key=lambda r: -r["held-out"] / max(r["calibration"], 1e-12))[:8]
    lines += ["", "Largest held-out / calibration ratios:", "",
              "| sublayer | operator | calibration | held-out | ratio |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['sublayer']} | {r['kind']} | {r['calibration']:.4f} | {r['held-out']:.4f} | "
              f"{r['held-out'] / max(r['calibration'], 1e-12):.2f} |" for r in worst]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        write_json(args.markdown.with_suffix(".json"), {"scores": str(args.scores), "rows": rows})


if __name__ == "__main__":
    main()
