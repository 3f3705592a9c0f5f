"""Two checks of where the held-out gap comes from, on three texts: the data source's test split (in-domain),
fresh samples of the teacher (seed 1: no run's rows, which are sampled with seed 0), and the held-out set
(lee-news).

1. Does Eq. 2 add up? Per block, the loss change with its attention skipped, its MLP skipped and both; then,
   for whole skip-only architectures (written as in results.json, e.g. "TT -- T- ..."), the loss change of the
   architecture against the sum of its single skips. No finetune: the teacher with sublayers removed.
2. Where does a finetuned student lose? For each exported student, cross-entropy against the teacher's and the
   KL to the teacher on each text.

    .venv/bin/python bench/additivity.py [--arch NAME=ARCH ...] [--student DIR ...] [--rows 8] \
        [--markdown bench/results/additivity.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def skips_of(arch: str) -> list[int]:
    """Sublayer indices an architecture string skips ("-" in the attention or MLP position of a block)."""
    out = []
    for block, pair in enumerate(arch.split()):
        out += [2 * block + k for k, glyph in enumerate(pair) if glyph == "-"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-seed", type=int, default=1, help="seed of the teacher samples")
    parser.add_argument("--arch", action="append", default=[], help="NAME=ARCH, a skip-only architecture")
    parser.add_argument("--student", action="append", default=[], type=Path, help="an exported student")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=8, help="256-token rows of each text")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    import torch

    from unast_core.config import RunConfig
    from unast_core.data.corpus import build_doc_splits, load_texts
    from unast_core.data.generated import sample_rows
    from unast_core.data.heldout import heldout_rows
    from unast_core.model.adapters import Adapter
    from unast_core.model.modeling_unast import UnastForCausalLM
    from unast_core.model.teacher import load_teacher
    from unast_core.store import write_json
    from unast_core.train.losses import compare_to_teacher
    from unast_core.train.precision import autocast

    started = time.perf_counter()
    teacher = load_teacher(args.model)
    model = teacher.model.float().eval()
    adapter = Adapter(model)
    data = RunConfig().data
    samples = sample_rows(model, teacher.tokenizer, args.rows, 256, data.generate_temperature, data.generate_top_p,
                          args.sample_seed, "bfloat16")
    texts = {"in-domain test": build_doc_splits(teacher.tokenizer, data)["test"][:args.rows],
             "teacher samples": samples,
             "held-out": heldout_rows(teacher.tokenizer, load_texts(data.heldout), args.rows, 256, 0)}

    @torch.inference_mode()
    def change(skips: list[int], tokens: torch.Tensor) -> float:
        with adapter.swapped({i: {"op": "identity"} for i in skips}), autocast("bfloat16", "cpu"):
            return model(input_ids=tokens, labels=tokens).loss.item()

    base = {name: change([], tokens) for name, tokens in texts.items()}
    blocks = []
    for b in range(adapter.n_blocks):
        blocks.append({name: [change(s, tokens) - base[name] for s in ([2 * b], [2 * b + 1], [2 * b, 2 * b + 1])]
                       for name, tokens in texts.items()})
        print(f"block {b}: " + ", ".join(f"{n} {v[0]:.3f} / {v[1]:.3f} / {v[2]:.3f}" for n, v in blocks[-1].items()),
              file=sys.stderr, flush=True)
    archs = {}
    for item in args.arch:
        name, arch = item.split("=", 1)
        skips = skips_of(arch)
        whole = [b for b in range(adapter.n_blocks) if 2 * b in skips and 2 * b + 1 in skips]
        archs[name] = {"arch": arch, "texts": {
            text: {"actual": change(skips, tokens) - base[text],
                   "sum_singles": sum(blocks[i // 2][text][i % 2] for i in skips),
                   "sum_blocks": sum(blocks[b][text][2] for b in whole)
                   + sum(blocks[i // 2][text][i % 2] for i in skips if i // 2 not in whole)}
            for text, tokens in texts.items()}}
    students = {}
    for out in args.student:
        student = UnastForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        students[out.name] = {text: compare_to_teacher(student, model, tokens, 4) for text, tokens in texts.items()}

    names = list(texts)
    lines = ["# Where the held-out gap comes from", "", f"`bench/additivity.py {shlex.join(sys.argv[1:])}`", "",
             f"{datetime.date.today().isoformat()}, teacher {args.model}, {args.rows} x 256-token rows of each text "
             f"({time.perf_counter() - started:.0f} s, bf16 autocast): the data source's test split, fresh samples of "
             f"the teacher (seed {args.sample_seed}, T={data.generate_temperature}, top-p {data.generate_top_p}), "
             "lee-news. Loss changes in nats per token, no finetune.", "",
             "## Per block: attention skipped / MLP skipped / both", "",
             "| block | " + " | ".join(f"{n}: attn / mlp / both (sum)" for n in names) + " |",
             "|---:|" + "---|" * len(names)]
    for b, row in enumerate(blocks):
        lines.append(f"| {b} | " + " | ".join(f"{v[0]:.3f} / {v[1]:.3f} / {v[2]:.3f} ({v[0] + v[1]:.3f})"
                                               for v in row.values()) + " |")
    if archs:
        lines += ["", "## Whole architectures: the loss change against the sum of single skips", "",
                  "| architecture | " + " | ".join(f"{n}: actual / sum of singles / sum of block scores" for n in names)
                  + " | skips |", "|---|" + "---|" * len(names) + "---|"]
        for name, a in archs.items():
            lines.append(f"| {name} | " + " | ".join(f"{v['actual']:.3f} / {v['sum_singles']:.3f} / {v['sum_blocks']:.3f}"
                                                  for v in a["texts"].values()) + f" | `{a['arch']}` |")
    if students:
        lines += ["", "## Finetuned students: loss over the teacher's and KL to the teacher", "",
                  "| student | " + " | ".join(f"{n}: gap / KL" for n in names) + " |", "|---|" + "---|" * len(names)]
        for name, s in students.items():
            lines.append(f"| {name} | " + " | ".join(f"{v['student_loss'] - v['teacher_loss']:.3f} / {v['kl']:.3f}"
                                                  for v in s.values()) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        write_json(args.markdown.with_suffix(".json"), {"base": base, "blocks": blocks, "archs": archs,
                                                        "students": students, "argv": sys.argv[1:]})


if __name__ == "__main__":
    main()
