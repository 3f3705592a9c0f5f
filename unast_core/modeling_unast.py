"""A UNAST student: a teacher architecture whose attention / MLP sublayers are individually replaced.

This file is self-contained (it imports only torch and transformers): `export` copies it next to the
checkpoint, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works where the
`unast` package is not installed. The core library uses the same code, so what is measured during the
search is exactly what is exported.

A decoder block is two pre-norm residual sublayers (DESIGN.md):
    h = h + post_attn(attn(pre_attn(h)))      # Self Attention
    h = h + post_mlp(mlp(pre_mlp(h)))         # Fully Connected
`FAMILIES` names those modules per model family; a sublayer choice is a small dict, e.g. {"op": "identity"}.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

# model_type -> where the blocks live and what each sublayer is made of (None: the family has no such norm).
_LLAMA = {"blocks": "model.layers", "attn": "self_attn", "attn_pre": "input_layernorm", "attn_post": None,
          "mlp": "mlp", "mlp_pre": "post_attention_layernorm", "mlp_post": None}
_GEMMA2 = {"blocks": "model.layers", "attn": "self_attn", "attn_pre": "input_layernorm",
           "attn_post": "post_attention_layernorm", "mlp": "mlp", "mlp_pre": "pre_feedforward_layernorm",
           "mlp_post": "post_feedforward_layernorm"}
_GPT2 = {"blocks": "transformer.h", "attn": "attn", "attn_pre": "ln_1", "attn_post": None,
         "mlp": "mlp", "mlp_pre": "ln_2", "mlp_post": None}
FAMILIES: dict[str, dict[str, str | None]] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": _LLAMA,
    "gemma2": _GEMMA2, "gemma3_text": _GEMMA2, "gpt2": _GPT2,
}
SUBLAYER_KINDS = ("attn", "mlp")
OPS = ("teacher", "identity")


def family_of(config: PretrainedConfig) -> dict[str, str | None]:
    if config.model_type not in FAMILIES:
        raise ValueError(f"model family '{config.model_type}' is not supported; supported: "
                         f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[config.model_type]


def get_blocks(model: nn.Module, family: dict[str, str | None]) -> nn.ModuleList:
    return model.get_submodule(family["blocks"])


class ZeroAttention(nn.Module):
    """A skipped attention sublayer: contributes 0 to the residual stream.

    It still appends a 1-float-per-token placeholder to the KV cache, so the cache length (which
    transformers reads from layer 0 to place positions and masks) stays right during generation.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, cache: Any = None, **kwargs: Any):
        cache = cache if cache is not None else kwargs.get("past_key_values")
        if cache is not None:
            B, T, _ = hidden_states.shape
            stub = hidden_states.new_zeros(B, 1, T, 1)  # (B, heads=1, T, head_dim=1)
            cache.update(stub, stub, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class ZeroMLP(nn.Module):
    """A skipped MLP sublayer: contributes 0 to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def replace_sublayer(block: nn.Module, family: dict[str, str | None], kind: str, spec: dict[str, Any]) -> None:
    """Swap sublayer `kind` ('attn' | 'mlp') of one decoder block for the operator `spec` in place."""
    op = spec.get("op")
    if op == "teacher":
        return
    if op != "identity":
        raise ValueError(f"unknown operator {op!r}; known: {', '.join(OPS)}")
    module = getattr(block, family[kind])
    zero = ZeroAttention(getattr(module, "layer_idx", 0)) if kind == "attn" else ZeroMLP()
    setattr(block, family[kind], zero)
    # The norms around a skipped sublayer do no useful work: drop their compute and parameters.
    for norm in (family[f"{kind}_pre"], family[f"{kind}_post"]):
        if norm is not None:
            setattr(block, norm, nn.Identity())


def apply_choices(model: nn.Module, layers: list[dict[str, dict[str, Any]]]) -> nn.Module:
    """Apply per-block choices `layers[b] = {"attn": spec, "mlp": spec}` to a teacher-shaped model."""
    family = family_of(model.config)
    blocks = get_blocks(model, family)
    if len(layers) != len(blocks):
        raise ValueError(f"{len(layers)} layer choices for a model with {len(blocks)} blocks")
    for block, choice in zip(blocks, layers):
        for kind in SUBLAYER_KINDS:
            replace_sublayer(block, family, kind, choice.get(kind, {"op": "teacher"}))
    return model


class UnastConfig(PretrainedConfig):
    """The teacher's configuration (`base_config`) plus the per-block operator choices (`unast_layers`)."""

    model_type = "unast"

    def __init__(self, base_config: dict[str, Any] | None = None,
                 unast_layers: list[dict[str, dict[str, Any]]] | None = None, **kwargs: Any):
        self.base_config = base_config or {}
        self.unast_layers = unast_layers or []
        super().__init__(**kwargs)

    def to_base_config(self) -> PretrainedConfig:
        base = copy.deepcopy(self.base_config)
        return AutoConfig.for_model(base.pop("model_type"), **base)


class UnastForCausalLM(PreTrainedModel):
    """The student. Forward and `generate()` are the teacher family's own, with replaced sublayers."""

    config_class = UnastConfig
    base_model_prefix = "student"
    _supports_sdpa = True

    def __init__(self, config: UnastConfig):
        super().__init__(config)
        self.student = AutoModelForCausalLM.from_config(config.to_base_config())
        apply_choices(self.student, config.unast_layers)
        self.post_init()

    def forward(self, *args: Any, **kwargs: Any):
        return self.student(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any):
        return self.student.generate(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.student.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.student.get_output_embeddings()

    def can_generate(self) -> bool:
        return True
