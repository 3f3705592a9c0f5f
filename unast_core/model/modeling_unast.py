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
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

# model_type -> where the blocks live and what each sublayer is made of (None: the family has no such norm).
_LLAMA = {"blocks": "model.layers", "attn": "self_attn", "attn_pre": "input_layernorm", "attn_post": None,
          "mlp": "mlp", "mlp_pre": "post_attention_layernorm", "mlp_post": None, "rope": True,
          "final_norm": "model.norm"}
_GEMMA2 = {"blocks": "model.layers", "attn": "self_attn", "attn_pre": "input_layernorm",
           "attn_post": "post_attention_layernorm", "mlp": "mlp", "mlp_pre": "pre_feedforward_layernorm",
           "mlp_post": "post_feedforward_layernorm", "rope": True, "final_norm": "model.norm"}
_GPT2 = {"blocks": "transformer.h", "attn": "attn", "attn_pre": "ln_1", "attn_post": None,
         "mlp": "mlp", "mlp_pre": "ln_2", "mlp_post": None, "rope": False, "final_norm": "transformer.ln_f"}
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": _LLAMA,
    "gemma2": _GEMMA2, "gemma3_text": _GEMMA2, "gpt2": _GPT2,
}
SUBLAYER_KINDS = ("attn", "mlp")
# Operators: teacher (kept), identity (skipped), linear (one H x H layer), attention (fewer query / KV heads
# and / or a smaller head dim: {"heads", "kv_heads", "head_dim"}), mlp (a smaller hidden size: {"hidden"}).
# compressed: the teacher's own sublayer, its linear weights compressed (loaded over a copy).
OPS = ("teacher", "identity", "linear", "attention", "mlp", "compressed")


def family_of(config: PretrainedConfig) -> dict[str, Any]:
    if config.model_type not in FAMILIES:
        raise ValueError(f"model family '{config.model_type}' is not supported; supported: "
                         f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[config.model_type]


def get_blocks(model: nn.Module, family: dict[str, Any]) -> nn.ModuleList:
    return model.get_submodule(family["blocks"])


def teacher_dims(config: PretrainedConfig) -> dict[str, int]:
    """The teacher's sublayer widths: query / KV heads, head dim, MLP hidden size, model width."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return {"heads": heads, "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": getattr(config, "head_dim", None) or hidden // heads, "hidden": inner, "hidden_size": hidden}


def _push_placeholder(layer_idx: int, hidden_states: torch.Tensor, cache: Any) -> None:
    """Append a 1-float-per-token entry to the KV cache, so its length (which transformers reads from
    layer 0 to place positions and masks) stays right during generation when attention is replaced."""
    if cache is not None:
        B, T, _ = hidden_states.shape
        stub = hidden_states.new_zeros(B, 1, T, 1)  # (B, heads=1, T, head_dim=1)
        cache.update(stub, stub, layer_idx)


class ZeroAttention(nn.Module):
    """A skipped attention sublayer: contributes 0 to the residual stream."""

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, cache: Any = None, **kwargs: Any):
        _push_placeholder(self.layer_idx, hidden_states, cache if cache is not None else kwargs.get("past_key_values"))
        return torch.zeros_like(hidden_states), None


class LinearAttention(nn.Module):
    """Attention replaced by one H x H linear layer on the (normalized) input: no mixing across tokens."""

    def __init__(self, layer_idx: int, hidden_size: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor, *args: Any, cache: Any = None, **kwargs: Any):
        _push_placeholder(self.layer_idx, hidden_states, cache if cache is not None else kwargs.get("past_key_values"))
        return self.proj(hidden_states), None


class ZeroMLP(nn.Module):
    """A skipped MLP sublayer: contributes 0 to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class LinearMLP(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states)


def _take(layer: nn.Module, rows: list[int] | None = None, cols: list[int] | None = None) -> nn.Module:
    """A copy of a Linear (weight: out x in) or GPT-2 Conv1D (weight: in x out) keeping output `rows`
    and input `cols` (indices into the teacher's layer)."""
    conv = not isinstance(layer, nn.Linear)
    weight = layer.weight.detach().t() if conv else layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = copy.copy(layer)
    new._parameters = dict(layer._parameters)
    new.weight = nn.Parameter((weight.t() if conv else weight).contiguous().clone())
    if bias is not None:
        new.bias = nn.Parameter(bias.contiguous().clone())
    if conv:
        new.nf = weight.shape[0]
    else:
        new.out_features, new.in_features = weight.shape
    return new


def _slice_rope(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Pre-hook of an attention with a smaller head dim: keep the rotary channels it was built from."""
    index = module.unast_rope_index
    if kwargs.get("position_embeddings") is not None:
        cos, sin = kwargs["position_embeddings"]
        kwargs = {**kwargs, "position_embeddings": (cos[..., index], sin[..., index])}
    elif len(args) > 1 and args[1] is not None:
        cos, sin = args[1]
        args = (args[0], (cos[..., index], sin[..., index]), *args[2:])
    return args, kwargs


def shrink_attention(attn: nn.Module, heads: list[int], kv_heads: list[int], qk_dims: list[int],
                     v_dims: list[int], rope: bool) -> nn.Module:
    """A copy of a teacher attention keeping query heads `heads` (grouped: consecutive runs of
    len(heads)/len(kv_heads) share one kept KV head), KV heads `kv_heads`, and per head the query/key
    channels `qk_dims` and value channels `v_dims`. Scaling stays the teacher's."""
    hd = attn.head_dim
    q_rows = [h * hd + c for h in heads for c in qk_dims]
    k_rows = [g * hd + c for g in kv_heads for c in qk_dims]
    v_rows = [g * hd + c for g in kv_heads for c in v_dims]
    o_cols = [h * hd + c for h in heads for c in v_dims]
    new = copy.copy(attn)
    new._modules = dict(attn._modules)
    new._parameters = dict(attn._parameters)
    new._buffers = dict(attn._buffers)
    new._forward_pre_hooks = copy.copy(attn._forward_pre_hooks)
    new._forward_pre_hooks_with_kwargs = copy.copy(attn._forward_pre_hooks_with_kwargs)
    if hasattr(attn, "c_attn"):  # GPT-2: one fused q|k|v projection, multi-head only
        width = attn.c_attn.nf // 3
        new.c_attn = _take(attn.c_attn, rows=q_rows + [width + r for r in k_rows] + [2 * width + r for r in v_rows])
        new.c_proj = _take(attn.c_proj, cols=o_cols)
        new.num_heads, new.split_size = len(heads), len(heads) * len(qk_dims)
    else:
        new.q_proj, new.k_proj = _take(attn.q_proj, rows=q_rows), _take(attn.k_proj, rows=k_rows)
        new.v_proj, new.o_proj = _take(attn.v_proj, rows=v_rows), _take(attn.o_proj, cols=o_cols)
        new.num_key_value_groups = len(heads) // len(kv_heads)
        for name in ("q_norm", "k_norm"):
            if getattr(attn, name, None) is not None:
                norm = copy.deepcopy(getattr(attn, name))
                norm.weight = nn.Parameter(norm.weight.detach()[qk_dims].clone())
                setattr(new, name, norm)
    new.head_dim = len(qk_dims)
    if rope and len(qk_dims) < hd:
        new.register_buffer("unast_rope_index", torch.tensor(qk_dims, dtype=torch.long))
        new.register_forward_pre_hook(_slice_rope, with_kwargs=True)
    return new


def shrink_mlp(mlp: nn.Module, channels: list[int]) -> nn.Module:
    """A copy of a teacher MLP keeping hidden `channels` (gated: gate/up/down; GPT-2: c_fc/c_proj)."""
    new = copy.copy(mlp)
    new._modules = dict(mlp._modules)
    if hasattr(mlp, "c_fc"):
        new.c_fc, new.c_proj = _take(mlp.c_fc, rows=channels), _take(mlp.c_proj, cols=channels)
    else:
        new.gate_proj, new.up_proj = _take(mlp.gate_proj, rows=channels), _take(mlp.up_proj, rows=channels)
        new.down_proj = _take(mlp.down_proj, cols=channels)
        if hasattr(mlp, "intermediate_size"):
            new.intermediate_size = len(channels)
    return new


def default_indices(spec: dict[str, Any], dims: dict[str, int], rope: bool) -> dict[str, list[int]]:
    """Which teacher heads / channels a downsized operator keeps when nothing better is known (the
    structure only; trained weights are loaded over it)."""
    if spec["op"] == "mlp":
        return {"channels": list(range(spec["hidden"]))}
    group = dims["heads"] // dims["kv_heads"]
    per_kv = spec["heads"] // spec["kv_heads"]
    heads = [g * group + r for g in range(spec["kv_heads"]) for r in range(per_kv)] if per_kv <= group \
        else list(range(spec["heads"]))
    d, full = spec["head_dim"], dims["head_dim"]
    qk = [*range(d // 2), *range(full // 2, full // 2 + d // 2)] if rope and d < full else list(range(d))
    return {"heads": heads, "kv_heads": list(range(spec["kv_heads"])), "qk_dims": qk, "v_dims": list(range(d))}


def build_operator(block: nn.Module, family: dict[str, Any], kind: str, spec: dict[str, Any],
                   config: PretrainedConfig, indices: dict[str, list[int]] | None = None) -> dict[str, nn.Module]:
    """The modules that replace sublayer `kind` of `block` for operator `spec`: {attribute: module}, the
    operator and its norms (nn.Identity where the operator has no use for them). Downsized operators
    are cut from the block's own modules (`indices` picks the heads / channels, default: the first)."""
    op = spec.get("op")
    if op not in OPS:
        raise ValueError(f"unknown operator {op!r}; known: {', '.join(OPS)}")
    if {"attention": "attn", "mlp": "mlp"}.get(spec["op"], kind) != kind:  # (unast_core.model.ops.OpSpec.kinds)
        raise ValueError(f"operator {op!r} cannot replace an {kind} sublayer")
    names = {"op": family[kind], "pre": family[f"{kind}_pre"], "post": family[f"{kind}_post"]}
    current = {role: getattr(block, name) for role, name in names.items() if name is not None}
    out = dict(current)
    if op == "teacher":
        pass
    elif op == "compressed":
        out["op"] = copy.deepcopy(current["op"])
    elif op in ("identity", "linear"):
        layer_idx = getattr(current["op"], "layer_idx", 0)
        hidden = config.hidden_size
        if kind == "attn":
            out["op"] = ZeroAttention(layer_idx) if op == "identity" else LinearAttention(layer_idx, hidden)
        else:
            out["op"] = ZeroMLP() if op == "identity" else LinearMLP(hidden)
        # The norms around a skipped sublayer do no useful work; a linear one keeps its input norm.
        drop = ("pre", "post") if op == "identity" else ("post",)
        out.update({role: nn.Identity() for role in drop if role in out})
    else:
        idx = indices or default_indices(spec, teacher_dims(config), family["rope"])
        if op == "mlp":
            out["op"] = shrink_mlp(current["op"], idx["channels"])
        else:
            out["op"] = shrink_attention(current["op"], idx["heads"], idx["kv_heads"], idx["qk_dims"],
                                         idx["v_dims"], family["rope"])
    return {names[role]: module for role, module in out.items()}


def replace_sublayer(block: nn.Module, family: dict[str, Any], kind: str, spec: dict[str, Any],
                     config: PretrainedConfig) -> None:
    """Swap sublayer `kind` ('attn' | 'mlp') of one decoder block for the operator `spec` in place."""
    for name, module in build_operator(block, family, kind, spec, config).items():
        setattr(block, name, module)


def apply_choices(model: nn.Module, layers: list[dict[str, dict[str, Any]]]) -> nn.Module:
    """Apply per-block choices `layers[b] = {"attn": spec, "mlp": spec}` to a teacher-shaped model."""
    family = family_of(model.config)
    blocks = get_blocks(model, family)
    if len(layers) != len(blocks):
        raise ValueError(f"{len(layers)} layer choices for a model with {len(blocks)} blocks")
    for block, choice in zip(blocks, layers):
        for kind in SUBLAYER_KINDS:
            replace_sublayer(block, family, kind, choice.get(kind, {"op": "teacher"}), model.config)
    return model


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """uint8 bytes -> the first `numel` integers of `bits` each, least significant bit first: int64 (numel,)."""
    stream = (packed.to(torch.int64)[:, None] >> torch.arange(8, device=packed.device)) & 1
    stream = stream.reshape(-1)[:numel * bits].reshape(numel, bits)
    return (stream << torch.arange(bits, device=packed.device)).sum(1)


class PackedLinear(nn.Module):
    """A body linear layer stored compressed (paper Section 5.3): `kind` "quant" keeps `bits`-bit codes
    (`qweight`, packed) with an fp16 `scale` and integer `zero` per row and group of `group_size` inputs;
    "sparse" keeps its `nnz` non-zeros (`values`) and a 1-bit `mask`. The dense weight is rebuilt once, on
    first use: there is no int4 or sparse kernel here, so it runs as fast as the dense layer."""

    def __init__(self, meta: dict[str, Any], bias: bool):
        super().__init__()
        self.meta = meta
        out, inp = meta["shape"]
        self.out_features, self.in_features = out, inp
        if meta["kind"] == "quant":
            self.register_buffer("qweight", torch.zeros(-(-out * inp * meta["bits"] // 8), dtype=torch.uint8))
            self.register_buffer("scale", torch.zeros(out, meta["groups"], dtype=torch.float16))
            self.register_buffer("zero", torch.zeros(out, meta["groups"], dtype=torch.uint8))
        else:
            self.register_buffer("values", torch.zeros(meta["nnz"], dtype=torch.bfloat16))
            self.register_buffer("mask", torch.zeros(-(-out * inp // 8), dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None
        self._dense: torch.Tensor | None = None

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight in fp32, rebuilt from the stored form."""
        out, inp = self.meta["shape"]
        if self.meta["kind"] == "sparse":
            kept = unpack_bits(self.mask, 1, out * inp).bool().reshape(out, inp)
            return torch.zeros(out, inp, device=kept.device).masked_scatter(kept, self.values.float())
        codes = unpack_bits(self.qweight, self.meta["bits"], out * inp).reshape(out, inp).float()
        size = self.meta["group_size"] or inp
        scale = self.scale.float().repeat_interleave(size, dim=1)[:, :inp]
        zero = self.zero.float().repeat_interleave(size, dim=1)[:, :inp]
        return scale * (codes - zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense is None or self._dense.dtype != x.dtype or self._dense.device != x.device:
            self._dense = self.dense_weight().to(x.device, x.dtype)
        return nn.functional.linear(x, self._dense, None if self.bias is None else self.bias.to(x.dtype))


def pack_linears(blocks: nn.ModuleList, layers: dict[str, dict[str, Any]]) -> None:
    """Swap the body linears named in `layers` ("3.mlp.down_proj": metadata) for `PackedLinear`s."""
    for name, meta in layers.items():
        parent, _, leaf = name.rpartition(".")
        owner = blocks.get_submodule(parent)
        setattr(owner, leaf, PackedLinear(meta, getattr(owner, leaf).bias is not None))


class UnastConfig(PretrainedConfig):
    """The teacher's configuration (`base_config`) plus the per-block operator choices (`unast_layers`)."""

    model_type = "unast"

    def __init__(self, base_config: dict[str, Any] | None = None,
                 unast_layers: list[dict[str, dict[str, Any]]] | None = None,
                 unast_compression: dict[str, Any] | None = None, **kwargs: Any):
        self.base_config = base_config or {}
        self.unast_layers = unast_layers or []
        self.unast_compression = unast_compression  # {"method", ..., "layers": {body linear: PackedLinear meta}}
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
        # One dtype throughout: from_pretrained sets the default dtype to the checkpoint's (`dtype="auto"`), but
        # the inner model follows its own config's dtype (the teacher's), and the replaced sublayers the default.
        self.student.to(torch.get_default_dtype())
        if config.unast_compression:  # after the cast: the packed buffers keep their own dtypes
            pack_linears(get_blocks(self.student, family_of(self.student.config)), config.unast_compression["layers"])
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
