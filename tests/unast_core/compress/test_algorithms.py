"""GPTQ, SparseGPT, round-to-nearest and magnitude pruning on an 8x6 Linear (8 inputs, 6 outputs)."""

import pytest
import torch
from torch import nn

from unast_core.compress.gptq import accumulate_hessian, dequantize, gptq_quantize, layer_error, rtn_quantize
from unast_core.compress.sparsegpt import check_width, magnitude_prune, parse_sparsity, sparsegpt_prune


def _layer_and_inputs(seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    """Correlated inputs: 8 features driven by 3 latent factors plus a little noise."""
    torch.manual_seed(seed)
    layer = nn.Linear(8, 6)
    x = torch.randn(4, 64, 3) @ torch.randn(3, 8) + 0.1 * torch.randn(4, 64, 8)
    return layer, x


def test_hessian_accumulates_in_batches_like_all_at_once():
    _, x = _layer_and_inputs()
    h, n = None, 0
    for batch in x:
        h, n = accumulate_hessian(batch, h, n)
    flat = x.reshape(-1, 8)
    assert n == 256
    assert torch.allclose(h, 2 * flat.T @ flat / 256, atol=1e-5)
    state = h.clone()
    accumulate_hessian(x[0], h, n)
    assert torch.equal(h, state)  # returns new state, leaves the old one alone


@pytest.mark.parametrize("bits,group_size,act_order", [(3, None, False), (4, None, False), (4, 4, False),
                                                       (3, 4, True), (4, None, True)])
def test_gptq_error_below_round_to_nearest(bits, group_size, act_order):
    layer, x = _layer_and_inputs()
    h, _ = accumulate_hessian(x)
    w = layer.weight.detach()
    rtn = rtn_quantize(w, bits, group_size)
    gptq = gptq_quantize(w, h, bits, group_size, act_order=act_order)
    assert gptq.weight.shape == w.shape and gptq.codes.shape == w.shape
    assert gptq.scale.shape == (6, 1 if group_size is None else 8 // group_size)
    assert int(gptq.codes.max()) < 2 ** bits
    # the codes, scales and zeros are the whole story: they rebuild the weight exactly
    assert torch.equal(dequantize(gptq.codes, gptq.scale, gptq.zero, group_size), gptq.weight)
    # at most 2**bits levels per row and group
    for row in range(6):
        assert len(torch.unique(gptq.weight[row, :group_size or 8])) <= 2 ** bits
    err_rtn, err_gptq = layer_error(w, rtn.weight, h), layer_error(w, gptq.weight, h)
    assert err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)


def test_round_to_nearest_is_nearest_level():
    torch.manual_seed(1)
    w = torch.randn(6, 8)
    q = rtn_quantize(w, 4)
    levels = q.scale * (torch.arange(16).float() - q.zero)  # (6, 16)
    nearest = levels.gather(1, (w[:, :, None] - levels[:, None, :]).abs().argmin(2))
    assert torch.allclose(q.weight, nearest, atol=1e-6)
    assert (q.weight - w).abs().max() <= q.scale.max() / 2 + 1e-6


def test_sparsegpt_two_four_mask_exact_and_better_than_magnitude():
    layer, x = _layer_and_inputs()
    h, _ = accumulate_hessian(x)
    w = layer.weight.detach()
    pruned, mask = sparsegpt_prune(w, h, "2:4")
    groups = (pruned == 0).reshape(6, 2, 4)
    assert torch.equal(groups.sum(2), torch.full((6, 2), 2))      # exactly 2 zeros in every 4
    assert torch.equal(mask, pruned == 0)
    mag, mag_mask = magnitude_prune(w, "2:4")
    assert torch.equal(mag_mask.reshape(6, 2, 4).sum(2), torch.full((6, 2), 2))
    assert layer_error(w, pruned, h) < 0.8 * layer_error(w, mag, h)


def test_sparsegpt_unstructured_fraction_and_error():
    layer, x = _layer_and_inputs(2)
    h, _ = accumulate_hessian(x)
    w = layer.weight.detach()
    pruned, mask = sparsegpt_prune(w, h, 0.5)
    assert int(mask.sum()) == 24 and torch.equal(mask, pruned == 0)
    mag, _ = magnitude_prune(w, 0.5)
    assert layer_error(w, pruned, h) < layer_error(w, mag, h)


def test_sparsity_settings():
    assert parse_sparsity("2:4") == (0.5, 2, 4)
    assert parse_sparsity("1:4") == (0.25, 1, 4)
    assert parse_sparsity(0.5) == (0.5, 0, 0)
    for bad in (1.0, 0.0, "4:4", "3:x", "5"):
        with pytest.raises(ValueError, match="sparsity"):
            parse_sparsity(bad)
    with pytest.raises(ValueError, match="multiple of 4; it is 6"):
        check_width("3:4", 6)
    with pytest.raises(ValueError, match="multiple of 4"):
        sparsegpt_prune(torch.randn(8, 6), torch.eye(6), "3:4")


def test_near_singular_hessian_gets_more_dampening_not_an_error():
    """A few huge input channels (LLMs' massive activations) leave an fp32 Hessian indefinite in its small
    directions; the factorisation raises the dampening until it exists."""
    h = torch.diag(torch.tensor([1e8, 1.0, -1e-3, 1.0, 2.0, 1.0]))
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    q = gptq_quantize(w, h, 4, damp=1e-12)
    assert torch.isfinite(q.weight).all()
