"""SparseGPT pruning (Frantar & Alistarh 2023) and magnitude pruning, as pure functions.

Sparsity is a fraction of zeros (0.5: unstructured, half the weights of every row block) or "n:m": n zeros
in every m consecutive weights along the input dimension (2:4: NVIDIA's semi-structured pattern; 1:4 is
25%, as in Table 5). SparseGPT picks, per block of columns, the weights whose removal costs least
(w^2 / [H^-1]_ii^2) and updates the remaining weights with the inverse Hessian to compensate, so the
layer's output moves less than when the smallest weights are simply dropped.
"""

from __future__ import annotations

import torch

from unast_core.compress.gptq import dead_columns, inverse_hessian_factor
from unast_core.compress.spec import check_width, parse_sparsity

Sparsity = float | str
__all__ = ["check_width", "magnitude_prune", "parse_sparsity", "sparsegpt_prune"]


def _nm_mask(cost: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Mask (True = pruned) of the n cheapest of every m consecutive columns of cost (rows, cols)."""
    groups = cost.reshape(cost.shape[0], -1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, n, dim=2, largest=False).indices, True)
    return mask.reshape(cost.shape)


def _fraction_mask(cost: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask of the round(fraction * numel) cheapest entries of cost."""
    k = round(fraction * cost.numel())
    mask = torch.zeros(cost.numel(), dtype=torch.bool)
    mask[torch.topk(cost.flatten(), k, largest=False).indices] = True
    return mask.reshape(cost.shape)


def magnitude_prune(weight: torch.Tensor, sparsity: Sparsity) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: drop the smallest |w| (per row block of m for n:m, per row for a fraction).
    Returns (pruned W (out, in) fp32, mask (out, in) True where pruned)."""
    fraction, n, m = parse_sparsity(sparsity)
    w = weight.detach().float()
    check_width(sparsity, w.shape[1])
    cost = w.abs()
    mask = _nm_mask(cost, n, m) if n else torch.stack([_fraction_mask(row[None], fraction)[0] for row in cost])
    return w.masked_fill(mask, 0), mask


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: Sparsity, damp: float = 0.01,
                    block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Algorithm 1 of the paper) on W (out, in) with H (in, in) from `accumulate_hessian`.

    Unstructured: the mask of each block of `block` columns is chosen at once (adaptive mask selection);
    n:m: each group of m columns when the sweep reaches it. Returns (pruned W, mask True where pruned)."""
    fraction, n, m = parse_sparsity(sparsity)
    check_width(sparsity, weight.shape[1])
    w, h = dead_columns(weight, hessian)
    hinv = inverse_hessian_factor(h, damp)
    block = block // m * m if m else block
    cols = w.shape[1]
    mask = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, err1, hinv1 = w[:, start:end].clone(), torch.zeros(w.shape[0], end - start), hinv[start:end, start:end]
        d = hinv1.diagonal()
        mask1 = torch.zeros_like(w1, dtype=torch.bool) if n else _fraction_mask(w1.pow(2) / d.pow(2), fraction)
        for i in range(end - start):
            if n and i % m == 0:
                mask1[:, i:i + m] = _nm_mask(w1[:, i:i + m].pow(2) / d[i:i + m].pow(2), n, m)
            col = w1[:, i:i + 1]
            kept = col.masked_fill(mask1[:, i:i + 1], 0)
            err = (col - kept) / hinv1[i, i]
            w1[:, i:] -= err @ hinv1[i:i + 1, i:]
            w1[:, i:i + 1] = kept
            err1[:, i:i + 1] = err
        w[:, start:end], mask[:, start:end] = w1, mask1
        w[:, end:] -= err1 @ hinv[start:end, end:]
    return w.masked_fill(mask, 0), mask
