"""nemotron-nas export: the config schema vLLM reads, and a small reference DeciLM (written from vLLM's field
list: no-op sublayers, n_heads_in_group, ffn_mult widths) that loads the weights and matches the student."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from unast_core.errors import UnastError
from unast_core.model.modeling_unast import apply_choices
from unast_core.model.teacher import byte_tokenizer
from unast_core.report.nemotron import export_nemotron, ffn_mult, ffn_width, target_problem

# hidden 96: the teacher's MLP (512) and a narrower one (256) have an ffn_mult, a width of 200 has not
CONFIG = dict(vocab_size=257, hidden_size=96, intermediate_size=512, num_hidden_layers=5, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
CHOICES = [
    {"attn": {"op": "teacher"}, "mlp": {"op": "mlp", "hidden": 256}},
    {"attn": {"op": "attention", "heads": 4, "kv_heads": 1, "head_dim": 24}, "mlp": {"op": "teacher"}},
    {"attn": {"op": "identity"}, "mlp": {"op": "teacher"}},
    {"attn": {"op": "teacher"}, "mlp": {"op": "identity"}},
    {"attn": {"op": "teacher"}, "mlp": {"op": "mlp", "hidden": 200}},
]


def student(choices=CHOICES):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG), dtype=torch.float32).eval()
    apply_choices(model, choices)
    with torch.no_grad():  # bf16-representable weights: the export stores bf16
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    return model


class Reference(nn.Module):
    """DeciLM from config.json + safetensors, as vLLM's fields describe it (fp32, eager, no cache)."""

    def __init__(self, cfg: dict, state: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg, self.w = cfg, {k: v.float() for k, v in state.items()}

    def norm(self, x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"]) * self.w[name]

    def rope(self, x):  # (B, heads, T, hd), rotate-half layout
        hd, T = x.shape[-1], x.shape[-2]
        inv = 1.0 / self.cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
        ang = torch.outer(torch.arange(T).float(), inv)
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def attention(self, x, p, group):
        B, T, _ = x.shape
        n, hd = self.cfg["num_attention_heads"], self.cfg["head_dim"]
        q = (x @ self.w[f"{p}.q_proj.weight"].T).view(B, T, n, hd).transpose(1, 2)
        k = (x @ self.w[f"{p}.k_proj.weight"].T).view(B, T, n // group, hd).transpose(1, 2)
        v = (x @ self.w[f"{p}.v_proj.weight"].T).view(B, T, n // group, hd).transpose(1, 2)
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        out = nn.functional.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
        return out.transpose(1, 2).reshape(B, T, n * hd) @ self.w[f"{p}.o_proj.weight"].T

    def forward(self, ids):
        h = self.w["model.embed_tokens.weight"][ids]
        for i, block in enumerate(self.cfg["block_configs"]):
            p = f"model.layers.{i}"
            if not block["attention"]["no_op"]:
                h = h + self.attention(self.norm(h, f"{p}.input_layernorm.weight"), f"{p}.self_attn",
                                       block["attention"]["n_heads_in_group"])
            if not block["ffn"]["no_op"]:
                x = self.norm(h, f"{p}.post_attention_layernorm.weight")
                ffn = block["ffn"]  # vLLM: ffn_mult when present, else intermediate_size
                width = ffn_width(ffn["ffn_mult"], self.cfg["hidden_size"]) if "ffn_mult" in ffn else ffn["intermediate_size"]
                gate, up = self.w[f"{p}.mlp.gate_proj.weight"], self.w[f"{p}.mlp.up_proj.weight"]
                assert gate.shape[0] == up.shape[0] == width
                h = h + (nn.functional.silu(x @ gate.T) * (x @ up.T)) @ self.w[f"{p}.mlp.down_proj.weight"].T
        h = self.norm(h, "model.norm.weight")
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return h @ head.T


def test_ffn_mult_round_trips_vllm_widths():
    assert ffn_width(ffn_mult(1536, 576), 576) == 1536 and ffn_width(ffn_mult(768, 576), 576) == 768
    assert ffn_mult(700, 576) is None


def test_config_schema(tmp_path):
    out = export_nemotron(student(), CHOICES, byte_tokenizer(), tmp_path / "n")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["DeciLMForCausalLM"] and cfg["model_type"] == "nemotron-nas"
    for key in ("hidden_size", "num_attention_heads", "rms_norm_eps", "rope_theta", "vocab_size", "hidden_act"):
        assert key in cfg
    blocks = cfg["block_configs"]
    assert len(blocks) == cfg["num_hidden_layers"] == 5
    assert [b["attention"]["no_op"] for b in blocks] == [False, False, True, False, False]
    assert [b["attention"]["n_heads_in_group"] for b in blocks] == [2, 4, None, 2, 2]
    assert [b["ffn"]["no_op"] for b in blocks] == [False, False, False, True, False]
    assert ffn_width(blocks[0]["ffn"]["ffn_mult"], 96) == 256 and ffn_width(blocks[1]["ffn"]["ffn_mult"], 96) == 512
    assert [b["ffn"].get("intermediate_size") for b in blocks] == [256, 512, 512, None, 200]
    assert "ffn_mult" not in blocks[4]["ffn"]
    from transformers import AutoConfig

    loaded = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert loaded.block_configs[1].attention.n_heads_in_group == 4 and loaded.block_configs[2].attention.no_op
    assert not hasattr(loaded.block_configs[4].ffn, "ffn_mult")  # so vLLM reads intermediate_size


def test_reference_decilm_loads_the_weights_and_matches(tmp_path):
    model = student()
    out = export_nemotron(model, CHOICES, byte_tokenizer(), tmp_path / "n")
    state = load_file(out / "model.safetensors")
    assert "model.layers.2.self_attn.q_proj.weight" not in state and "model.layers.3.mlp.up_proj.weight" not in state
    ids = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        got = Reference(json.loads((out / "config.json").read_text()), state)(ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_inexpressible_operators_are_named(tmp_path):
    dims = {"heads": 4, "kv_heads": 2, "head_dim": 24, "hidden": 512, "hidden_size": 96}
    assert "linear" in target_problem({"op": "linear"}, "attn", dims)
    assert "query heads" in target_problem({"op": "attention", "heads": 2, "kv_heads": 1, "head_dim": 24}, "attn", dims)
    bad = [dict(c) for c in CHOICES]
    bad[2] = {"attn": {"op": "linear"}, "mlp": {"op": "teacher"}}
    with pytest.raises(UnastError, match="block 2 attn"):
        export_nemotron(student(bad), bad, byte_tokenizer(), tmp_path / "n")
