"""Stage 3, score: e_ij of Eq. 2, the change in validation LM loss when only sublayer i is replaced
by candidate j and every other sublayer stays the teacher's.

The model is run from the cached residual state entering sublayer i's block (stage 1), not from the
embedding, so scoring a late sublayer costs a few blocks instead of the whole model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from unast_core.activations import load_boundary
from unast_core.adapters import Adapter
from unast_core.evaluate import lm_loss


def score_sublayer(model: torch.nn.Module, tokens: torch.Tensor, states_dir: Path, index: int,
                   candidates: list[dict[str, Any]], base_loss: float, batch_size: int,
                   on_candidate: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Scores of every candidate at sublayer `index` on validation tokens (N, T).

    Returns {"scores": [e_i0, e_i1, ...], "losses": [...], "errors": [...], "wall_s": s}; the teacher
    candidate scores 0 by definition and is not run. A candidate that fails or gives a non-finite loss
    scores NaN with its error recorded (the search leaves it out); the others are unaffected.
    """
    adapter = Adapter(model)
    sub = adapter.sublayers[index]
    hidden = load_boundary(states_dir, 2 * sub.block)  # (N, T, H) entering the block
    start_time = time.perf_counter()
    scores, losses, errors = [], [], []
    for j, spec in enumerate(candidates):
        error = None
        try:
            if spec["op"] == "teacher":
                loss = base_loss
            else:
                with adapter.swapped({index: spec}):
                    loss = lm_loss(model, tokens, batch_size, forward=_from_state(adapter, sub.block, hidden))
            if not math.isfinite(loss):
                error = f"non-finite loss {loss}"
        except Exception as exc:  # noqa: BLE001 - recorded per candidate by design
            loss, error = math.nan, f"{type(exc).__name__}: {exc}"
        losses.append(loss)
        scores.append(math.nan if error else loss - base_loss)
        errors.append(error)
        if on_candidate:
            on_candidate(j, scores[-1])
    return {"scores": scores, "losses": losses, "errors": errors, "wall_s": time.perf_counter() - start_time}


def _from_state(adapter: Adapter, block: int, hidden: torch.Tensor):
    def forward(ids: torch.Tensor, row: int) -> torch.Tensor:
        with adapter.start_at(block, hidden[row:row + len(ids)]):
            return adapter.model(ids, use_cache=False).logits
    return forward
