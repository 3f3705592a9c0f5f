"""GGUF (llama.cpp deci) export: a tiny student with every kind of operator, loaded back in llama.cpp."""

import gguf
import pytest
import torch

from unast_core.errors import UnastError
from unast_core.model.modeling_unast import apply_choices
from unast_core.model.teacher import byte_tokenizer, tiny_random_config
from unast_core.report.gguf import const_ffn, deci_layers, export_gguf, target_problem
from transformers import AutoModelForCausalLM

# Every operator and rewrite: a smaller attention + narrower MLP; a linear attention with a bias; a skipped
# attention + linear MLP; a smaller head dim (zero-padded) with a skipped MLP.
CHOICES = [
    {"attn": {"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 16}, "mlp": {"op": "mlp", "hidden": 64}},
    {"attn": {"op": "linear"}, "mlp": {"op": "teacher"}},
    {"attn": {"op": "identity"}, "mlp": {"op": "linear"}},
    {"attn": {"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 8}, "mlp": {"op": "identity"}},
]


def bpe_tokenizer():
    """A byte-level BPE with merges (llama.cpp needs them), trained here on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    tok.train_from_iterator(["the cat sat on the mat and the dog sat on the log"] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


TOKENIZER = bpe_tokenizer()


def tiny_student(seed: int = 0, choices=CHOICES):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_random_config(len(TOKENIZER)), dtype=torch.float32).eval()
    apply_choices(model, choices)
    with torch.no_grad():  # random weights everywhere (linear biases too), rounded to f16 as the file stores them
        for p in model.parameters():
            p.copy_((torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and p.shape[0] == 64 else 0.0)).half().float())
        if choices is CHOICES:
            model.model.layers[3].self_attn.unast_rope_index.copy_(torch.tensor([0, 2, 5, 7, 8, 10, 13, 15]))
    return model


def test_deci_layers_map_every_operator():
    layers, rewrites = deci_layers(tiny_student(), CHOICES)
    # block 0 | block 1: linear attn + bias FFN, then its MLP | block 2: linear MLP as a linear attn | block 3
    assert [(x.n_head, x.n_head_kv, x.n_ff) for x in layers] == [(2, 1, 64), (4, 0, 1), (0, 0, 176), (4, 0, 1), (2, 1, 1)]
    assert [(r.block, r.kind) for r in rewrites] == [(1, "attn"), (2, "mlp"), (3, "attn")]
    assert layers[4].tensors["attn_q.weight"].shape == (2 * 16, 64)  # padded back to head dim 16


def test_const_ffn_adds_its_bias():
    bias = torch.randn(8)
    t = const_ffn(bias, 8)
    x = torch.randn(3, 8)
    hidden = torch.nn.functional.silu(x @ t["ffn_gate.weight"].T + t["ffn_gate.bias"]) * (x @ t["ffn_up.weight"].T + t["ffn_up.bias"])
    torch.testing.assert_close(hidden @ t["ffn_down.weight"].T, bias.expand(3, 8))


def test_target_problem_names_head_dim():
    dims = {"head_dim": 64}
    assert "head dim 32" in target_problem({"op": "attention", "heads": 3, "kv_heads": 1, "head_dim": 32}, "attn", dims)
    assert target_problem({"op": "attention", "heads": 3, "kv_heads": 1, "head_dim": 64}, "attn", dims) is None


def test_export_writes_deci_metadata(tmp_path):
    out, _ = export_gguf(tiny_student(), CHOICES, TOKENIZER, tmp_path / "s.gguf")
    reader = gguf.GGUFReader(out)
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "deci"
    heads = [int(fields["deci.attention.head_count"].parts[i][0]) for i in fields["deci.attention.head_count"].data]
    assert heads == [2, 4, 0, 4, 2]
    assert len(fields["tokenizer.ggml.tokens"].data) == len(TOKENIZER)
    assert bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"


def test_a_bpe_without_merges_is_refused(tmp_path):
    with pytest.raises(UnastError, match="without merges"):
        export_gguf(tiny_student(), CHOICES, byte_tokenizer(), tmp_path / "s.gguf")


def test_export_refuses_other_families(tmp_path):
    from tests.conftest import tiny_model

    with pytest.raises(UnastError, match="gpt2"):
        export_gguf(tiny_model("gpt2"), [{}] * 3, byte_tokenizer(), tmp_path / "s.gguf")


# Block 0's attention skipped: llama.cpp takes the head dim from its first layer's head count.
FIRST_SKIPPED = [{"attn": {"op": "identity"}, "mlp": {"op": "teacher"}}, *CHOICES[:3]]


def test_a_first_layer_without_attention_gets_a_zero_linear_one():
    layers, rewrites = deci_layers(tiny_student(choices=FIRST_SKIPPED), FIRST_SKIPPED)
    assert (layers[0].n_head, layers[0].n_head_kv, layers[0].n_ff) == (4, 0, 176)
    assert not layers[0].tensors["attn_output.weight"].any()
    assert (rewrites[-1].block, rewrites[-1].operator) == (0, "skip")


@pytest.mark.parametrize("choices", [CHOICES, FIRST_SKIPPED], ids=["every-operator", "first-attention-skipped"])
def test_llama_cpp_runs_the_export_with_the_same_logits(tmp_path, choices):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = tiny_student(choices=choices)
    out, _ = export_gguf(model, choices, TOKENIZER, tmp_path / "s.gguf")
    ids = torch.randint(0, len(TOKENIZER), (12,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
    llm = llama_cpp.Llama(str(out), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    got = torch.tensor(llm.scores[:len(ids)])
    llm.close()
    assert (got - expected).abs().max() < 2e-2 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).all()
