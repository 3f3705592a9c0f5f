"""Configuration of a UNAST student exported as "nemotron-nas" (vLLM's DeciLMForCausalLM).

Shipped next to config.json (`auto_map`), so `transformers` and `vllm --trust-remote-code` can read it
without the `unast` package. `block_configs` become objects with attribute access, as vLLM reads them
(`block_config.attention.no_op`, `block_config.ffn.ffn_mult`, ...).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from transformers import PretrainedConfig


class DeciLMConfig(PretrainedConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs: list[Any] | None = None, hidden_size: int = 4096, num_hidden_layers: int = 32,
                 num_attention_heads: int = 32, head_dim: int | None = None, intermediate_size: int = 11008,
                 vocab_size: int = 32000, max_position_embeddings: int = 2048, rms_norm_eps: float = 1e-6,
                 rope_theta: float = 10000.0, hidden_act: str = "silu",
                 attention_bias: bool = False, mlp_bias: bool = False, **kwargs: Any):
        self.block_configs = [b if isinstance(b, SimpleNamespace) else
                              SimpleNamespace(attention=SimpleNamespace(**b["attention"]), ffn=SimpleNamespace(**b["ffn"]))
                              for b in block_configs or []]
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.head_dim = num_attention_heads, head_dim or hidden_size // num_attention_heads
        self.intermediate_size, self.vocab_size = intermediate_size, vocab_size
        self.max_position_embeddings, self.rms_norm_eps = max_position_embeddings, rms_norm_eps
        self.rope_theta, self.hidden_act = rope_theta, hidden_act
        self.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
        self.attention_bias, self.mlp_bias = attention_bias, mlp_bias
        # vLLM takes the KV-cache layout from this; per layer it is num_attention_heads / n_heads_in_group.
        groups = [b.attention.n_heads_in_group for b in self.block_configs if not b.attention.no_op]
        self.num_key_value_heads = num_attention_heads // min(groups) if groups else num_attention_heads
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["block_configs"] = [{"attention": vars(b.attention), "ffn": vars(b.ffn)} for b in self.block_configs]
        out.pop("rope_parameters", None)
        return out
