"""Round-to-nearest and GPTQ weight quantization (Frantar et al. 2022), as pure functions.

A linear layer's weight W is (out, in) and its calibration inputs x are (..., in). Both methods quantize
W asymmetrically to `bits`, with one scale and zero point per output row (`group_size=None`) or per row and
group of `group_size` input columns. GPTQ quantizes one column at a time and spreads each column's rounding
error over the columns not yet quantized, weighted by the inverse Hessian H = 2 X X^T / N of the layer's
squared output error, so the layer's output moves less than with round-to-nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Quantized:
    """A quantized weight: `weight` the dequantized (out, in) float tensor, `codes` its integers (out, in)
    in [0, 2**bits), `scale` and `zero` (out, groups) with groups = ceil(in / group_size) (1 per row)."""

    weight: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int | None


def accumulate_hessian(x: torch.Tensor, hessian: torch.Tensor | None = None, count: int = 0
                       ) -> tuple[torch.Tensor, int]:
    """Running H = 2/N sum_n x_n x_n^T over calibration inputs x (..., in); returns (H (in, in) fp32, N).

    Call once per batch, passing the previous (H, N) back in; the state is returned, never mutated."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    new = len(x)
    if hessian is None:
        hessian = torch.zeros(x.shape[1], x.shape[1])
    total = count + new
    return hessian * (count / total) + (2.0 / total) * (x.T @ x), total


def quant_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max asymmetric scale and integer zero point per row of w (rows, cols): (rows, 1) each.
    The range always holds 0, so that a zero weight stays exactly zero."""
    maxq = 2 ** bits - 1
    lo, hi = w.min(dim=1, keepdim=True).values.clamp(max=0), w.max(dim=1, keepdim=True).values.clamp(min=0)
    scale = (hi - lo) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row
    return scale, torch.round(-lo / scale).clamp(0, maxq)


def _codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def _group_params(w: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero per row and group of columns of w (out, in): (out, groups) each."""
    size = group_size or w.shape[1]
    parts = [quant_params(w[:, c:c + size], bits) for c in range(0, w.shape[1], size)]
    return torch.cat([s for s, _ in parts], 1), torch.cat([z for _, z in parts], 1)


def _expand(params: torch.Tensor, columns: int, group_size: int | None) -> torch.Tensor:
    """(out, groups) -> (out, columns): each column's own group's value."""
    return params.repeat_interleave(group_size or columns, dim=1)[:, :columns]


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """W = scale * (codes - zero), each column with its group's scale and zero: (out, in) fp32."""
    cols = codes.shape[1]
    return _expand(scale, cols, group_size) * (codes.float() - _expand(zero, cols, group_size))


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int | None = None) -> Quantized:
    """Round every weight to its nearest level (the naive reference of Table 5)."""
    w = weight.detach().float()
    scale, zero = _group_params(w, bits, group_size)
    codes = _codes(w, _expand(scale, w.shape[1], group_size), _expand(zero, w.shape[1], group_size), bits)
    return Quantized(dequantize(codes, scale, zero, group_size), codes.to(torch.uint8), scale, zero, bits, group_size)


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, the form GPTQ / SparseGPT update with."""
    h = hessian.double()
    h = (h + h.T) / 2
    eye = torch.eye(len(h), dtype=h.dtype)
    # Inputs with a few huge channels (LLMs' "massive activations") leave H nearly singular in fp32 sums:
    # raise the dampening tenfold until the factorisation exists (as GPTQ implementations do).
    for attempt in range(6):
        factor, info = torch.linalg.cholesky_ex(h + damp * 10 ** attempt * h.diagonal().mean() * eye)
        if info == 0:
            break
    else:
        raise torch.linalg.LinAlgError("the Hessian stays indefinite even with 1e5 x the dampening")
    return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True).float()


def dead_columns(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that were always zero in calibration carry no information: their weights are set to 0 and
    their Hessian diagonal to 1 (so the factorisation exists). Returns new (W, H)."""
    dead = hessian.diagonal() == 0
    w, h = weight.detach().float().clone(), hessian.clone()
    h[dead, dead] = 1
    w[:, dead] = 0
    return w, h


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None = None,
                  act_order: bool = False, damp: float = 0.01, block: int = 128) -> Quantized:
    """GPTQ (Algorithm 1 of the paper) on W (out, in) with H (in, in) from `accumulate_hessian`.

    act_order quantizes the columns of largest Hessian diagonal first; with groups, each column keeps the
    scale and zero of its group in the original order (computed before any update), so the stored format
    is the same either way."""
    w, h = dead_columns(weight, hessian)
    cols = w.shape[1]
    static = act_order and group_size is not None
    if static:
        scale, zero = _group_params(w, bits, group_size)
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = inverse_hessian_factor(h, damp)
    block = group_size if group_size and not act_order else block
    if group_size is None:  # one scale per row, from the whole row before any update
        s, z = quant_params(w, bits)
    codes = torch.zeros_like(w)
    col_scale, col_zero = torch.zeros_like(w), torch.zeros_like(w)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, err1, hinv1 = w[:, start:end].clone(), torch.zeros(w.shape[0], end - start), hinv[start:end, start:end]
        if group_size is not None and not static:  # a group is one block: fit it to the updated weights
            s, z = quant_params(w1, bits)
        for i in range(end - start):
            if static:
                g = perm[start + i] // group_size
                s, z = scale[:, g:g + 1], zero[:, g:g + 1]
            col = w1[:, i:i + 1]
            q = _codes(col, s, z, bits)
            codes[:, start + i:start + i + 1], col_scale[:, start + i:start + i + 1] = q, s
            col_zero[:, start + i:start + i + 1] = z
            err = (col - s * (q - z)) / hinv1[i, i]
            w1[:, i:] -= err @ hinv1[i:i + 1, i:]
            err1[:, i:i + 1] = err
        w[:, end:] -= err1 @ hinv[start:end, end:]
    inv = torch.argsort(perm)
    codes, col_scale, col_zero = codes[:, inv], col_scale[:, inv], col_zero[:, inv]
    if not static:  # one value per group in the original column order
        size = group_size or cols
        scale, zero = col_scale[:, ::size].contiguous(), col_zero[:, ::size].contiguous()
    return Quantized(dequantize(codes, scale, zero, group_size), codes.to(torch.uint8), scale, zero, bits, group_size)


def layer_error(weight: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor) -> float:
    """Mean squared change of the layer's output: tr((W - W') H (W - W')^T) / 2 (H = 2 X X^T / N)."""
    d = (weight.float() - new.float())
    return float(((d @ hessian) * d).sum() / 2)
