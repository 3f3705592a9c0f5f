"""Refine a searched architecture by re-linearising Eq. 2 around it (a trust-region local search).

Eq. 2 scores each candidate with every other sublayer left the teacher's, and the ILP adds the scores up. Skips
in different blocks do not add up: on SmolLM2-135M the 17 scattered skips of a searched 0.75 architecture raised
the held-out loss by 2.04 nats where their single scores sum to 1.57 (bench/results/additivity.md), and the sum
ranks the architectures that finetune best last. Refining measures what the sum leaves out:

    1. with the architecture A in place, score every candidate j at every sublayer i in A's context:
       e_ij(A) = loss(A with sublayer i set to j) - loss(A); A's own choices score 0;
    2. solve the same ILP (Eq. 3 budget, one solution) on e(A), plus `mu` for every sublayer that leaves A's
       choice (a trust region: mu = 0 first, raised when the step does not pay);
    3. keep the new architecture only if its measured loss is lower than A's, and go on from it.

Every loss is measured on whole architectures, so what step 3 keeps is better on the measured rows, not
only by the linear model. Each context runs the model from the state entering the sublayer's block under A,
so a round costs about what the score stage does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from unast_core.model.adapters import Adapter
from unast_core.model.operators import load_candidate_modules
from unast_core.store import read_tensors
from unast_core.train.activations import load_boundary
from unast_core.train.losses import lm_loss_terms
from unast_core.train.precision import autocast

Modules = dict[str, nn.Module]


class Evaluator:
    """Measures whole architectures (a `choice`: candidate index per sublayer) on validation tokens (N, T), as
    KL to the teacher's next-token distributions (`metric="kl"`, nats per token) or as LM loss (`"lm_loss"`).
    Every candidate's modules are built once, up front, from the teacher's own modules: building one while
    another architecture is installed would take that architecture's norms."""

    def __init__(self, model: nn.Module, tokens: torch.Tensor, states_dir: Path, pool: list[dict[str, Any]],
                 weights: list[list[str | None]], available: list[list[bool]], batch_size: int = 4,
                 metric: str = "kl", dtype: str = "float32", score_rows: int | None = None):
        if metric not in ("kl", "lm_loss"):
            raise ValueError(f"refine metric must be kl or lm_loss, got {metric!r}")
        self.adapter, self.metric, self.dtype = Adapter(model), metric, dtype
        self.available = available
        self.batches = [(s, tokens[s:s + batch_size]) for s in range(0, len(tokens), batch_size)]
        # (batch, leading rows of it): every row, and the first `score_rows` the candidates' scores run on
        self.every = [(k, len(ids)) for k, (_, ids) in enumerate(self.batches)]
        limit = len(tokens) if score_rows is None else min(score_rows, len(tokens))
        self.scored = [(k, min(len(ids), limit - s)) for k, (s, ids) in enumerate(self.batches) if s < limit]
        self.scored_rows = limit
        self.device = str(next(model.parameters()).device)
        self.modules: dict[tuple[int, int], Modules] = {}
        for i in range(len(self.adapter.sublayers)):
            for j, spec in enumerate(pool):
                if available[i][j]:
                    source = weights[i][j] if weights else None
                    self.modules[i, j] = (load_candidate_modules(self.adapter, i, spec, read_tensors(Path(source)))
                                          if source else self.adapter.build(i, spec))
        self.embedded = load_boundary(states_dir, 0)[:len(tokens)]
        self.teacher: list[tuple[torch.Tensor, torch.Tensor]] = []
        # KL: the teacher's probabilities (N x T x vocabulary floats) and each row's sum of p log p, run from the
        # state entering its last block
        if metric == "kl":
            last = load_boundary(states_dir, 2 * (self.adapter.n_blocks - 1))[:len(tokens)]
            with torch.inference_mode(), autocast(dtype, self.device):
                for s, ids in self.batches:
                    logp = torch.log_softmax(self._logits(self.adapter.n_blocks - 1, last, ids, s).float(), dim=-1)
                    p = logp.exp()
                    self.teacher.append((p, (p * logp).sum(dim=(1, 2))))
        self.forwards = 0

    def installed(self, choice: list[int]):
        return self.adapter.installed({i: self.modules[i, j] for i, j in enumerate(choice)})

    def _logits(self, block: int, hidden: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        with self.adapter.start_at(block, hidden[start:start + len(ids)]):
            return self.adapter.model(ids, use_cache=False).logits

    def _terms(self, k: int, n: int, logits: torch.Tensor) -> float:
        """The summed KL(teacher || model) (sum p log p - sum p log q, the first precomputed) or LM loss of the
        first n rows of batch k, from the model's logits for (at least) those rows."""
        ids, logits = self.batches[k][1][:n], logits[:n]
        if self.metric == "lm_loss":
            return lm_loss_terms(logits, ids).item()
        p, p_log_p = self.teacher[k]
        return p_log_p[:n].sum().item() - (p[:n] * torch.log_softmax(logits.float(), dim=-1)).sum().item()

    def _count(self, parts: list[tuple[int, int]]) -> int:
        """Tokens the loss over these (batch, rows) parts averages over."""
        width = self.batches[0][1].shape[1] - (self.metric == "lm_loss")
        return sum(n for _, n in parts) * width

    def _measure(self, block: int, hidden: torch.Tensor, parts: list[tuple[int, int]] | None = None) -> float:
        """The installed model's loss per token on `parts` (every row by default), run from `block`."""
        parts = self.every if parts is None else parts
        self.forwards += 1
        terms = [self._terms(k, n, self._logits(block, hidden, self.batches[k][1][:n], self.batches[k][0]))
                 for k, n in parts]
        return sum(terms) / self._count(parts)

    def _block_inputs(self) -> tuple[float, float, list[torch.Tensor]]:
        """The installed architecture's loss on every row, its loss on the scored rows, and the residual state
        entering each of its blocks, (N, T, H) each."""
        seen: dict[int, list[torch.Tensor]] = {b: [] for b in range(self.adapter.n_blocks)}

        def hook(b: int):
            def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
                seen[b].append(args[0] if args else kwargs["hidden_states"])
            return capture

        handles = [block.register_forward_pre_hook(hook(b), with_kwargs=True)
                   for b, block in enumerate(self.adapter.blocks)]
        self.forwards += 1
        scored = dict(self.scored)
        every = fewer = 0.0
        try:
            for k, (start, ids) in enumerate(self.batches):
                logits = self._logits(0, self.embedded, ids, start)
                whole = self._terms(k, len(ids), logits)
                every += whole
                rows = scored.get(k, 0)
                fewer += whole if rows == len(ids) else self._terms(k, rows, logits) if rows else 0.0
        finally:
            for handle in handles:
                handle.remove()
        return (every / self._count(self.every), fewer / self._count(self.scored),
                [torch.cat(seen[b]) for b in range(self.adapter.n_blocks)])

    @torch.inference_mode()
    def loss(self, choice: list[int]) -> float:
        """The measured loss of the whole architecture."""
        with autocast(self.dtype, self.device), self.installed(choice):
            return self._measure(0, self.embedded)

    @torch.inference_mode()
    def contextual(self, choice: list[int],
                   on_sublayer: Callable[[int], None] | None = None) -> tuple[float, list[list[float]]]:
        """(loss of `choice`, e(choice)): every available candidate's loss change when it alone replaces
        `choice`'s operator at its sublayer, the rest of `choice` in place; 0 at `choice` itself, NaN where the
        candidate is unavailable. The loss is measured on every row, the changes on the scored rows."""
        scores = []
        with autocast(self.dtype, self.device), self.installed(choice):
            loss, base, inputs = self._block_inputs()
            for i, sub in enumerate(self.adapter.sublayers):
                row = []
                for j, ok in enumerate(self.available[i]):
                    if not ok:
                        row.append(math.nan)
                    elif j == choice[i]:
                        row.append(0.0)
                    else:
                        with self.adapter.installed({i: self.modules[i, j]}):
                            moved = self._measure(sub.block, inputs[sub.block], self.scored)
                        row.append(moved - base if math.isfinite(moved) else math.nan)
                scores.append(row)
                if on_sublayer:
                    on_sublayer(i)
        return loss, scores


def penalised(scores: list[list[float]], choice: list[int], mu: float) -> list[list[float]]:
    """`scores` plus `mu` on every candidate other than `choice`'s at its sublayer (the trust region)."""
    return [[e + (mu if j != c and math.isfinite(e) else 0.0) for j, e in enumerate(row)]
            for row, c in zip(scores, choice)]


@dataclass
class Refined:
    choice: list[int]
    loss: float                                          # measured loss of `choice`
    start_loss: float                                    # of the architecture refined
    rounds: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    # every kept step in order, {"choice", "loss"}, the last one `choice`: a caller whose architecture misses a
    # measured budget steps back through them
    steps: list[dict[str, Any]] = field(default_factory=list)


def refine(choice: list[int], contextual: Callable[[list[int]], tuple[float, list[list[float]]]],
           loss: Callable[[list[int]], float], solve: Callable[[list[list[float]]], list[int]], rounds: int,
           mu0: float = 0.01, tries: int = 3, log: Callable[[str], None] = lambda _: None) -> Refined:
    """Up to `rounds` re-linearised steps from `choice` (module docstring). `solve(scores)` returns the ILP's
    best choice under the budget for per-candidate scores; a step whose architecture measures no better is
    retried with a trust region (mu0, then 4x as much), `tries` solves in all, and the search stops when no try
    pays or the ILP returns the current architecture."""
    started = time.perf_counter()
    current, current_loss, start_loss, history, steps = list(choice), None, None, [], []
    for r in range(rounds):
        current_loss, scores = contextual(current)  # the measured loss of `current` comes with its scores
        start_loss = current_loss if start_loss is None else start_loss
        mu, step = 0.0, None
        for _ in range(tries):
            proposal = solve(penalised(scores, current, mu))
            changed = sum(a != b for a, b in zip(proposal, current))
            if not changed:
                log(f"refine round {r + 1}: the ILP keeps the architecture (trust region {mu:g})")
                break
            measured = loss(proposal)
            predicted = sum(scores[i][j] for i, j in enumerate(proposal))
            history.append({"round": r + 1, "mu": mu, "changed": changed, "predicted_change": predicted,
                            "measured": measured, "from": current_loss, "kept": measured < current_loss})
            log(f"refine round {r + 1}: {changed} sublayers changed (trust region {mu:g}), loss "
                f"{current_loss:.4f} -> {measured:.4f} (linear model: {predicted:+.4f})")
            if measured < current_loss:
                step = (proposal, measured)
                break
            mu = mu0 if mu == 0 else 4 * mu
        if step is None:
            break
        current, current_loss = step
        steps.append({"choice": list(current), "loss": current_loss})
    if current_loss is None:  # no rounds
        start_loss = current_loss = loss(current)
    return Refined(choice=current, loss=current_loss, start_loss=start_loss, rounds=history,
                   wall_s=time.perf_counter() - started, steps=steps)
