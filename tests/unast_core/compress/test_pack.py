import pytest
import torch

from unast_core.compress.gptq import accumulate_hessian, dequantize, gptq_quantize
from unast_core.compress.pack import GIB, app_d_bytes, pack_bits, pack_quantized, pack_sparse, unpack_bits
from unast_core.model.modeling_unast import PackedLinear
from unast_core.compress.sparsegpt import sparsegpt_prune


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_pack_bits_round_trips_exactly(bits):
    torch.manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (6, 13))  # 78 values: not a whole number of bytes at 3 bits
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and len(packed) == -(-78 * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, 78).reshape(6, 13), codes)
    with pytest.raises(ValueError, match="fit"):
        pack_bits(codes + 2 ** bits, bits)


def test_packed_gptq_layer_rebuilds_bit_exactly():
    torch.manual_seed(0)
    w, x = torch.randn(6, 8), torch.randn(64, 8)
    q = gptq_quantize(w, accumulate_hessian(x)[0], 3, group_size=4)
    packed = pack_quantized(q.codes, q.scale, q.zero, 3)
    codes = unpack_bits(packed["qweight"], 3, 48).reshape(6, 8)
    assert torch.equal(codes, q.codes.long())
    rebuilt = dequantize(codes, packed["scale"].float(), packed["zero"].float(), 4)
    assert torch.equal(rebuilt, dequantize(q.codes, q.scale.half().float(), q.zero, 4))


def _loaded(meta: dict, packed: dict) -> PackedLinear:
    layer = PackedLinear(meta, bias=False)
    layer.load_state_dict(packed, strict=True)
    return layer


def test_packed_gptq_linear_rebuilds_bit_exactly():
    torch.manual_seed(0)
    w, x = torch.randn(6, 8), torch.randn(64, 8)
    q = gptq_quantize(w, accumulate_hessian(x)[0], 4, group_size=None)
    packed = pack_quantized(q.codes, q.scale, q.zero, 4)
    layer = _loaded({"kind": "quant", "shape": [6, 8], "bits": 4, "group_size": None, "groups": 1}, packed)
    assert torch.equal(layer.dense_weight(), dequantize(q.codes, q.scale.half().float(), q.zero, None))
    assert torch.equal(layer(x), x @ layer.dense_weight().T)


def test_packed_sparse_layer_rebuilds_bit_exactly():
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    pruned, _ = sparsegpt_prune(w, torch.eye(8), "2:4")
    pruned = pruned.bfloat16()
    packed = pack_sparse(pruned)
    assert packed["values"].numel() == 24 and packed["mask"].numel() == 6
    layer = _loaded({"kind": "sparse", "shape": [6, 8], "nnz": 24}, packed)
    assert torch.equal(layer.dense_weight(), pruned.float())


def test_appendix_d_worked_examples():
    # UNAST 50% + GPTQ 4b on GPT3-8B: 2.1B embedding + output at 16 bits, 3.7B body at 4 bits
    assert round(app_d_bytes(2.1e9, 3.7e9, bits=4) / GIB, 2) == 5.63
    # UNAST 50% + SparseGPT 50%: (2.1B + 3.7B * 0.5) * 16 bits
    assert round(app_d_bytes(2.1e9, 3.7e9, sparsity=0.5) / GIB, 2) == 7.36
    assert app_d_bytes(1, 1) == 4


def test_pattern_checks_the_widths_each_choice_of_linears_prunes():
    from unast_core.compress.spec import check_pattern

    dims = {"hidden_size": 32, "heads": 4, "head_dim": 8, "hidden": 50}
    check_pattern("3:4", "first", dims)
    for linears in ("second", "both"):
        with pytest.raises(ValueError, match="multiple of 4; it is 50"):
            check_pattern("3:4", linears, dims)
