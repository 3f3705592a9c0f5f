"""Benchmark of unast_core.search.ilp.solve: 100 diverse solutions, 80 sublayers x 16 candidates.

Latency-like costs: candidate 0 is the teacher (best score, highest cost); cheaper candidates
score worse. The latency limit is 0.6 of the teacher (all index-0) cost. Run:
    .venv/bin/python bench/bench_search.py [--sublayers 80] [--candidates 16] [--k 100] [--seed 0]
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unast_core.search.ilp import solve


def make_instance(n: int, m: int, seed: int):
    rng = random.Random(seed)
    scores, latency = [], []
    for _ in range(n):
        base = rng.uniform(0.5, 2.0)  # teacher latency of this sublayer
        fracs = sorted((rng.uniform(0.1, 1.0) for _ in range(m - 1)), reverse=True)
        lat = [base] + [base * f for f in fracs]
        sens = rng.uniform(0.1, 3.0)  # how much this sublayer suffers from compression
        scores.append([0.0] + [sens * (1.0 - f) ** 1.5 + rng.uniform(0.0, 0.05) for f in fracs])
        latency.append(lat)
    limit = 0.6 * sum(row[0] for row in latency)
    return scores, {"latency": latency}, {"latency": limit}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sublayers", type=int, default=80)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    scores, costs, limits = make_instance(args.sublayers, args.candidates, args.seed)
    t0 = time.perf_counter()
    sols = solve(scores, costs, limits, k=args.k, max_overlap=0.7)  # default time_limit_s
    wall = time.perf_counter() - t0
    n_feasible = sum(s.status != "optimal" for s in sols)
    print(f"{args.sublayers} sublayers x {args.candidates} candidates, k={args.k}: "
          f"{len(sols)} solutions in {wall:.2f} s ({n_feasible} not proven optimal); "
          f"objective first={sols[0].objective:.4f} mean={sum(s.objective for s in sols) / len(sols):.4f} "
          f"last={sols[-1].objective:.4f}; "
          f"latency first={sols[0].costs['latency']:.3f} <= {limits['latency']:.3f}")


if __name__ == "__main__":
    main()
