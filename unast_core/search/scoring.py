"""Stage 3, score: e_ij of Eq. 2, how much worse the model gets when only sublayer i is replaced by
candidate j and every other sublayer stays the teacher's. Metrics (`ScoreConfig.metric`):
  lm_loss      change of the validation LM loss (the paper's)
  kl           KL(teacher || model) of the next-token distributions, nats per token
  hidden_nmse  normalized MSE of the final hidden state (after the final norm, what the head reads) against
               the teacher's; the cheapest, as the LM head is never run (the paper scores by such an MSE)

The model is run from the cached residual state entering sublayer i's block (stage 1), not from the
embedding, so scoring a late sublayer costs a few blocks instead of the whole model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from unast_core.train.activations import load_boundary
from unast_core.model.adapters import Adapter
from unast_core.train.losses import kd_terms, lm_loss
from unast_core.model.operators import load_candidate_modules
from unast_core.model.ops import OpSpec
from unast_core.store import read_tensors
from unast_core.train.precision import autocast


def score_sublayer(model: torch.nn.Module, tokens: torch.Tensor, states_dir: Path, index: int,
                   candidates: list[dict[str, Any]], base_loss: float, batch_size: int,
                   weights: list[str | dict | None] | None = None,
                   on_candidate: Callable[[int, float], None] | None = None, metric: str = "lm_loss",
                   dtype: str = "float32", block: bool = False) -> dict[str, Any]:
    """Scores of every candidate at sublayer `index` on validation tokens (N, T).

    `weights[j]` is the trained candidate's .safetensors, {"error": why} when its distillation failed,
    or None for operators that are not trained. Returns {"scores": [e_i0, e_i1, ...], "losses": [...],
    "errors": [...], "wall_s": s}; the teacher candidate scores 0 by definition and is not run. A
    candidate that cannot replace this kind of sublayer scores NaN with no error; one that fails or gives
    a non-finite loss scores NaN with its error recorded (the search leaves both out). Under a `dtype` other
    than float32 the model runs under autocast and the teacher's loss is measured the same way (not taken
    from `base_loss`, an fp32 figure), so that a score compares like with like; hidden_nmse stays fp32.
    With `block`, an attention sublayer also scores its whole block skipped (attention and MLP both
    identity) as "block_score" (None when the pool has no identity or the block has no MLP sublayer).
    """
    adapter = Adapter(model)
    sub = adapter.sublayers[index]
    hidden = load_boundary(states_dir, 2 * sub.block)  # (N, T, H) entering the block
    start_time = time.perf_counter()
    dtype = "float32" if metric == "hidden_nmse" else dtype
    with autocast(dtype, str(hidden.device)):
        measure = _metric(adapter, sub.block, hidden, tokens, states_dir, batch_size, metric)
        base = (base_loss if dtype == "float32" else measure()) if metric == "lm_loss" else 0.0
        result = _score_candidates(adapter, index, candidates, weights, measure, base, on_candidate, metric,
                                   start_time)
        if block:
            result["block_score"] = _block_score(adapter, index, candidates, measure, base)
            result["wall_s"] = time.perf_counter() - start_time
        return result


def carries_block_score(kind: str, candidates: list[dict[str, Any]]) -> bool:
    """Whether a sublayer of this kind carries its block's whole-skip score: it is the block's attention
    (every block has an attention and an MLP sublayer) and the pool can skip both."""
    return kind == "attn" and any(spec["op"] == "identity" for spec in candidates)


def _block_score(adapter: Adapter, index: int, candidates: list[dict[str, Any]], measure: Callable[[], float],
                 base: float) -> float | None:
    """The score of skipping the whole block of attention sublayer `index`. Two skips in one block are not
    additive: on SmolLM2-135M, removing ShortGPT's 8 blocks at once raised the held-out loss by 1.40 nats,
    where the 16 single skips sum to 1.62 (bench/results/additivity.md)."""
    sub = adapter.sublayers[index]
    if not carries_block_score(sub.kind, candidates):
        return None
    skip = {s.index: {"op": "identity"} for s in adapter.sublayers if s.block == sub.block}
    with adapter.swapped(skip):
        loss = measure()
    return loss - base if math.isfinite(loss) else None


def _score_candidates(adapter: Adapter, index: int, candidates: list[dict[str, Any]],
                      weights: list[str | dict | None] | None, measure: Callable[[], float], base: float,
                      on_candidate: Callable[[int, float], None] | None, metric: str,
                      start_time: float) -> dict[str, Any]:
    sub = adapter.sublayers[index]
    scores, losses, errors = [], [], []
    weights = weights or [None] * len(candidates)
    for j, (spec, source) in enumerate(zip(candidates, weights)):
        error = None
        try:
            if spec["op"] == "teacher":
                loss = base
            elif not OpSpec.of(spec).applies(sub.kind):
                loss = math.nan
            elif isinstance(source, dict) or (OpSpec.of(spec).trained and not source):
                loss, error = math.nan, f"not distilled: {(source or {}).get('error', 'no trained weights')}"
            else:
                modules = (load_candidate_modules(adapter, index, spec, read_tensors(Path(source))) if source
                           else adapter.build(index, spec))
                with adapter.installed({index: modules}):
                    loss = measure()
            if not math.isfinite(loss) and error is None and OpSpec.of(spec).applies(sub.kind):
                error = f"non-finite loss {loss}"
        except Exception as exc:  # noqa: BLE001 - recorded per candidate by design
            loss, error = math.nan, f"{type(exc).__name__}: {exc}"
        losses.append(loss)
        scores.append(math.nan if error or not math.isfinite(loss) else loss - base)
        errors.append(error)
        if on_candidate:
            on_candidate(j, scores[-1])
    return {"scores": scores, "losses": losses, "errors": errors, "metric": metric, "wall_s": time.perf_counter() - start_time}


def _metric(adapter: Adapter, block: int, hidden: torch.Tensor, tokens: torch.Tensor, states_dir: Path,
            batch_size: int, metric: str) -> Callable[[], float]:
    """A zero-argument function measuring the model as currently swapped, from the state entering `block`."""
    model = adapter.model
    if metric == "lm_loss":
        return lambda: lm_loss(model, tokens, batch_size, forward=_from_state(adapter, block, hidden))
    batches = [(start, tokens[start:start + batch_size]) for start in range(0, len(tokens), batch_size)]
    if metric == "hidden_nmse":
        norm = model.get_submodule(adapter.family["final_norm"])
        with torch.inference_mode():
            final = norm(load_boundary(states_dir, 2 * adapter.n_blocks))

        @torch.inference_mode()
        def hidden_nmse() -> float:
            err = tot = 0.0
            for start, ids in batches:
                target = final[start:start + len(ids)]
                out = norm(adapter.run_until(block, hidden[start:start + len(ids)], adapter.blocks[-1], output=True))
                err += (out - target).double().pow(2).sum().item()
                tot += target.double().pow(2).sum().item()
            return err / tot
        return hidden_nmse
    if metric == "kl":
        # The teacher's logits, run from the state entering its last block (one block + head per batch).
        last = load_boundary(states_dir, 2 * (adapter.n_blocks - 1))
        with torch.inference_mode():
            teacher = [_from_state(adapter, adapter.n_blocks - 1, last)(ids, start) for start, ids in batches]

        @torch.inference_mode()
        def kl() -> float:
            total = sum(kd_terms(_from_state(adapter, block, hidden)(ids, start), t).item()
                        for (start, ids), t in zip(batches, teacher))
            return total / tokens.numel()
        return kl
    raise ValueError(f"unknown score metric {metric!r}")


def block_loss(adapter: Adapter, block: int, choices: dict[int, dict[str, Any]], tokens: torch.Tensor, states_dir: Path,
               batch_size: int) -> float:
    """Validation LM loss with `choices` swapped in (all at or after `block`), run from the stored state
    entering `block`."""
    measure = _metric(adapter, block, load_boundary(states_dir, 2 * block), tokens, states_dir, batch_size, "lm_loss")
    with adapter.swapped(choices):
        return measure()


def _from_state(adapter: Adapter, block: int, hidden: torch.Tensor):
    def forward(ids: torch.Tensor, row: int) -> torch.Tensor:
        with adapter.start_at(block, hidden[row:row + len(ids)]):
            return adapter.model(ids, use_cache=False).logits
    return forward
