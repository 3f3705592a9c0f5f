import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from unast_core.model.adapters import Adapter, check_seq_len
from unast_core.errors import UnastError


def _ids(vocab=97, batch=2, seq=12, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_sublayer_view(family_model):
    adapter = Adapter(family_model)
    assert len(adapter.sublayers) == 2 * adapter.n_blocks == 6
    assert [s.kind for s in adapter.sublayers[:2]] == ["attn", "mlp"]
    body = sum(adapter.sublayer_params(s) for s in adapter.sublayers)
    assert 0 < body < adapter.total_params()


@torch.no_grad()
def test_start_at_cached_state_matches_full_forward(family_model):
    adapter = Adapter(family_model)
    ids = _ids()
    sink = {}
    handles = adapter.boundary_hooks(sink)
    full = family_model(ids).logits
    for h in handles:
        h.remove()
    assert sorted(sink) == list(range(2 * adapter.n_blocks + 1))
    assert all(len(states) == 1 for states in sink.values())  # one record per boundary per forward
    for block in range(adapter.n_blocks):
        with adapter.start_at(block, sink[2 * block][0]):
            part = family_model(ids).logits
        torch.testing.assert_close(part, full, rtol=1e-4, atol=1e-5)
    # the model is restored afterwards
    torch.testing.assert_close(family_model(ids).logits, full)


@torch.no_grad()
def test_swapped_identity_is_a_skip_and_restores(family_model):
    adapter = Adapter(family_model)
    ids = _ids()
    full = family_model(ids).logits
    teacher_states, swapped_states = {}, {}
    handles = adapter.boundary_hooks(teacher_states)
    family_model(ids)
    for h in handles:
        h.remove()
    with adapter.swapped({1: {"op": "identity"}}):  # skip the MLP of block 0
        handles = adapter.boundary_hooks(swapped_states)
        family_model(ids)
        for h in handles:
            h.remove()
    # with block 0's MLP skipped, block 0 outputs the state between its two sublayers
    torch.testing.assert_close(swapped_states[2][0], teacher_states[1][0])
    torch.testing.assert_close(family_model(ids).logits, full)


def test_unsupported_family_names_supported_ones():
    config = AutoConfig.for_model("opt", vocab_size=50, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                  num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnastError, match="not supported.*Llama.*Gemma.*GPT-2"):
        Adapter(model)


def test_sequence_length_beyond_model_is_an_error(family_model):
    with pytest.raises(UnastError, match="longer than the model supports"):
        check_seq_len(Adapter(family_model), 10_000, "data.seq_len")
