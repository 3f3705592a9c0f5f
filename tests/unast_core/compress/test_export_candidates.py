"""Compressed-teacher candidates (Appendix H) exported packed: their dense, frozen weights give back a packed
form that rebuilds them bit for bit, and a student that computes exactly what it computed dense."""

import pytest
import torch

from tests.conftest import assert_export_reloads, tiny_model
from unast_core.compress.apply import compress_weight, model_bytes
from unast_core.compress.candidates import compress_linears, linears_of, settings
from unast_core.compress.export import packed_candidates, packed_copy, recover_quantized, recover_sparse
from unast_core.compress.gptq import accumulate_hessian, dequantize
from unast_core.compress.pack import unpack_bits
from unast_core.config import CompressConfig, CompressedCandidate
from unast_core.model.assemble import build_student, layers_from_choice
from unast_core.model.modeling_unast import PackedLinear, family_of, get_blocks


def _weight_and_hessian(out=12, inp=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, inp, generator=g) @ torch.randn(inp, inp, generator=g)  # correlated inputs
    return torch.randn(out, inp, generator=g) * 0.1, accumulate_hessian(x)[0]


@pytest.mark.parametrize("method,bits,group_size", [("gptq", 3, 16), ("gptq", 4, None), ("gptq", 8, 16),
                                                    ("rtn", 4, 16), ("gptq", 2, 128)])
def test_a_quantized_weight_is_recovered_bit_exactly(method, bits, group_size):
    weight, hessian = _weight_and_hessian()
    stored, packed, _ = compress_weight(weight, hessian, CompressConfig(method=method, bits=bits, group_size=group_size))
    found = recover_quantized(stored, bits, group_size)
    assert found is not None
    codes_bytes = found["qweight"].numel()
    assert codes_bytes == packed["qweight"].numel() and found["scale"].shape == packed["scale"].shape
    codes = unpack_bits(found["qweight"], bits, stored.numel()).reshape(stored.shape)
    assert torch.equal(dequantize(codes, found["scale"].float(), found["zero"].float(), group_size), stored)


def test_a_weight_off_any_grid_is_not_packed():
    weight, _ = _weight_and_hessian()
    assert recover_quantized(weight, 4, 16) is None
    assert recover_sparse(weight) is None  # fp32 values: not 16-bit


def test_a_pruned_weight_keeps_its_zeros_and_values():
    weight, hessian = _weight_and_hessian()
    stored, packed, _ = compress_weight(weight, hessian, CompressConfig(method="sparsegpt", sparsity="2:4"))
    found = recover_sparse(stored)
    assert torch.equal(found["mask"], packed["mask"]) and torch.equal(found["values"], packed["values"])


SPECS = [CompressedCandidate(method="gptq", bits=4, linears="both").spec(),
         CompressedCandidate(method="sparsegpt", sparsity=0.5, linears="second").spec(),
         CompressedCandidate(method="gptq", bits=8, linears="first").spec()]


def _student_with_candidates():
    """Block 0's attention GPTQ 4-bit (both), block 1's MLP SparseGPT 50% (second), block 2's MLP 8-bit
    (first), calibrated on random inputs, as a run's candidates would be and then frozen."""
    pool = [{"op": "teacher"}, *SPECS]
    layers = layers_from_choice([1, 0, 0, 2, 0, 3], pool)
    student = build_student(tiny_model("llama"), layers)
    family = family_of(student.student.config)
    blocks = get_blocks(student.student, family)
    g = torch.Generator().manual_seed(1)
    for b, choice in enumerate(layers):
        for kind, spec in choice.items():
            if spec["op"] == "compressed":
                linears = linears_of(getattr(blocks[b], family[kind]), spec["linears"])
                inputs = {n: torch.randn(64, m.in_features, generator=g) for n, m in linears.items()}
                compress_linears(linears, inputs, settings(spec))
    return student, layers


def test_a_students_candidates_export_packed_and_compute_the_same(tmp_path):
    student, layers = _student_with_candidates()
    packed, meta, dense = packed_candidates(student, layers)
    assert dense == []
    assert set(meta) == {"0.self_attn.q_proj", "0.self_attn.k_proj", "0.self_attn.v_proj", "0.self_attn.o_proj",
                         "1.mlp.down_proj", "2.mlp.gate_proj", "2.mlp.up_proj"}
    assert {m["kind"] for m in meta.values()} == {"quant", "sparse"}
    exact = packed_copy(student, packed, {"method": "pool.compressed", "layers": meta}, dtype=torch.float32)
    mine, theirs = (get_blocks(m.student, family_of(m.student.config)) for m in (exact, student))
    for name in meta:
        packed_layer = mine.get_submodule(name)
        assert isinstance(packed_layer, PackedLinear)
        assert torch.equal(packed_layer.dense_weight(), theirs.get_submodule(name).weight)  # bit for bit
    ids = torch.randint(1, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(exact(ids).logits, student(ids).logits, rtol=0, atol=1e-6)
    stored = packed_copy(student, packed, {"method": "pool.compressed", "layers": meta})
    assert_export_reloads(stored, tmp_path)
    blocks = get_blocks(student.student, family_of(student.student.config))
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_size < 2 * model_bytes(student, blocks)["bytes"]


def test_a_candidate_weight_moved_off_its_grid_stays_dense():
    student, layers = _student_with_candidates()
    with torch.no_grad():
        get_blocks(student.student, family_of(student.student.config))[0].self_attn.q_proj.weight.add_(1e-3)
    _, meta, dense = packed_candidates(student, layers)
    assert dense == ["0.self_attn.q_proj"] and "0.self_attn.k_proj" in meta
