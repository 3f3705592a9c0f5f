"""Scoring from the cached residual state vs the naive way (a full forward from the embedding).

For a few sublayers of the default teacher, the score of skipping the sublayer is computed both ways
for each metric; prints seconds per candidate and the agreement, then extrapolates to every sublayer
(the naive cost is the same for each, the cached one shrinks with depth).

    .venv/bin/python bench/bench_score.py [--model smollm2-135m] [--seqs 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from unast_core.train.activations import capture, is_captured, mean_loss  # noqa: E402
from unast_core.model.adapters import Adapter  # noqa: E402
from unast_core.config import build_config  # noqa: E402
from unast_core.data.corpus import build_splits  # noqa: E402
from unast_core.train.losses import kd_terms, lm_loss  # noqa: E402
from unast_core.search.scoring import score_sublayer  # noqa: E402
from unast_core.model.teacher import load_teacher  # noqa: E402


@torch.inference_mode()
def naive(adapter: Adapter, tokens: torch.Tensor, index: int, metric: str, batch: int, teacher_logits) -> float:
    with adapter.swapped({index: {"op": "identity"}}):
        if metric == "lm_loss":
            return lm_loss(adapter.model, tokens, batch)
        return sum(kd_terms(adapter.model(tokens[s:s + batch], use_cache=False).logits, t).item()
                   for s, t in zip(range(0, len(tokens), batch), teacher_logits)) / tokens.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqs", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(".unast/bench-score"))
    args = parser.parse_args()
    cfg = build_config("cpu", overrides={"teacher.model": args.model})
    teacher = load_teacher(cfg.teacher.model)
    model = teacher.model.requires_grad_(False)
    adapter = Adapter(model)
    tokens = build_splits(teacher.tokenizer, cfg.data)["validation"][:args.seqs]
    states = args.work / "validation"
    if not is_captured(states):
        meta = capture(model, tokens, states, 4)
    else:
        from unast_core.train.activations import load_meta
        meta = load_meta(states)
    base = mean_loss(meta, args.seqs)
    batch = cfg.score.batch_size
    with torch.inference_mode():
        teacher_logits = [model(tokens[s:s + batch], use_cache=False).logits for s in range(0, len(tokens), batch)]
    n = adapter.n_blocks
    print("| metric | sublayer | cached s | naive s | cached score | naive score |")
    print("|---|---|---:|---:|---:|---:|")
    per_metric = {}
    for metric in ("lm_loss", "kl"):
        cached_t, naive_t = [], []
        for block in (0, n // 3, 2 * n // 3, n - 1):
            index = 2 * block + 1
            start = time.perf_counter()
            got = score_sublayer(model, tokens, states, index, [{"op": "identity"}], base, batch, metric=metric)["scores"][0]
            cached_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            ref = naive(adapter, tokens, index, metric, batch, teacher_logits) - (base if metric == "lm_loss" else 0)
            naive_t.append(time.perf_counter() - start)
            print(f"| {metric} | {block}.mlp | {cached_t[-1]:.2f} | {naive_t[-1]:.2f} | {got:.5f} | {ref:.5f} |", flush=True)
        per_metric[metric] = (sum(cached_t) / len(cached_t), sum(naive_t) / len(naive_t))
    for metric, (c, v) in per_metric.items():
        print(f"{metric}: mean {c:.2f} s cached vs {v:.2f} s naive per candidate over blocks spread evenly: "
              f"{100 * (1 - c / v):.0f}% of the scoring time saved")


if __name__ == "__main__":
    main()
