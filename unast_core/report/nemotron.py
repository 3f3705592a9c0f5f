"""Export a student as a DeciLM / "nemotron-nas" checkpoint, the heterogeneous Llama vLLM serves natively
(`DeciLMForCausalLM`).

vLLM reads, per layer, `block_configs[l]`:
    attention.no_op            the attention sublayer (and its input norm) is skipped
    attention.n_heads_in_group query heads per KV head; query heads stay `num_attention_heads`
    ffn.no_op                  the MLP sublayer (and its norm) is skipped
    ffn.ffn_mult               if present: MLP width = next multiple of 256 of int(2 * ffn_mult * hidden_size / 3)
    ffn.intermediate_size      else: the MLP width
Weights keep the Llama names (model.layers.l.self_attn.q_proj.weight, ...). So a student is expressible when
every attention keeps the teacher's query heads and head dim (KV groups may change) and nothing is linear.
Every block gets `intermediate_size`, and `ffn_mult` too where one gives that width exactly (the shipped
configuration_decilm.py leaves an absent field absent, so vLLM then reads intermediate_size).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from unast_core.errors import UnastError
from unast_core.model.modeling_unast import family_of, get_blocks, teacher_dims
from unast_core.store import atomic_dir

_CONFIG_CODE = Path(__file__).with_name("configuration_decilm.py")


def ffn_width(ffn_mult: float, hidden_size: int) -> int:
    """The MLP width vLLM builds for `ffn_mult` (its rounding: up to a multiple of 256)."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


def ffn_mult(width: int, hidden_size: int) -> float | None:
    """An `ffn_mult` that gives exactly `width`, or None when no multiplier does."""
    mult = round(3 * width / (2 * hidden_size), 6)
    return mult if ffn_width(mult, hidden_size) == width else None


def target_problem(spec: dict[str, Any], kind: str, dims: dict[str, int]) -> str | None:
    """Why vLLM's nemotron-nas cannot run operator `spec` (None: it can). `search.target=vllm` filters with it."""
    op = spec.get("op")
    if op == "linear":
        return "vLLM's nemotron-nas has no linear replacement"
    if op == "attention":
        if spec["heads"] != dims["heads"] or spec["head_dim"] != dims["head_dim"]:
            return (f"{spec['heads']} query heads of dim {spec['head_dim']}: nemotron-nas keeps the teacher's "
                    f"{dims['heads']} query heads of dim {dims['head_dim']} (only KV groups change)")
    return None


def block_configs(choices: list[dict[str, dict[str, Any]]], dims: dict[str, int]) -> list[dict[str, Any]]:
    """`block_configs` for per-block `choices`; an inexpressible operator is an error naming the blocks."""
    problems = [f"block {b} {kind}: {why}" for b, c in enumerate(choices) for kind in ("attn", "mlp")
                if (why := target_problem(c.get(kind, {"op": "teacher"}), kind, dims))]
    if problems:
        raise UnastError("nemotron-nas export: " + "; ".join(problems) + " (search with --set search.target=vllm)")
    out = []
    for c in choices:
        attn, mlp = c.get("attn", {"op": "teacher"}), c.get("mlp", {"op": "teacher"})
        kv = attn.get("kv_heads", dims["kv_heads"])
        width = mlp.get("hidden", dims["hidden"])
        ffn: dict[str, Any] = {"no_op": mlp["op"] == "identity", "replace_with_linear": False}
        if mlp["op"] != "identity":
            ffn["intermediate_size"] = width
            if (mult := ffn_mult(width, dims["hidden_size"])) is not None:
                ffn["ffn_mult"] = mult
        out.append({
            "attention": {"no_op": attn["op"] == "identity", "replace_with_linear": False,
                          "n_heads_in_group": None if attn["op"] == "identity" else dims["heads"] // kv},
            "ffn": ffn,
        })
    return out


def nemotron_config(config: Any, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    dims = teacher_dims(config)
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 1e4)
    return {
        "architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas",
        "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig"},
        "hidden_size": dims["hidden_size"], "num_hidden_layers": len(blocks),
        "num_attention_heads": dims["heads"], "head_dim": dims["head_dim"], "intermediate_size": dims["hidden"],
        "vocab_size": config.vocab_size, "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": theta,
        "hidden_act": config.hidden_act, "tie_word_embeddings": bool(config.tie_word_embeddings),
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "block_configs": blocks,
    }


def nemotron_state(model: nn.Module, blocks: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The Llama-named weights vLLM loads: the no-op sublayers (and their norms) have none."""
    family = family_of(model.config)
    state = {"model.embed_tokens.weight": model.get_input_embeddings().weight,
             "model.norm.weight": model.get_submodule(family["final_norm"]).weight}
    if not model.config.tie_word_embeddings:
        state["lm_head.weight"] = model.get_output_embeddings().weight
    for b, (block, cfg) in enumerate(zip(get_blocks(model, family), blocks)):
        prefix = f"model.layers.{b}"
        if not cfg["attention"]["no_op"]:
            state[f"{prefix}.input_layernorm.weight"] = block.input_layernorm.weight
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                state[f"{prefix}.self_attn.{name}.weight"] = getattr(block.self_attn, name).weight
        if not cfg["ffn"]["no_op"]:
            state[f"{prefix}.post_attention_layernorm.weight"] = block.post_attention_layernorm.weight
            for name in ("gate_proj", "up_proj", "down_proj"):
                state[f"{prefix}.mlp.{name}.weight"] = getattr(block.mlp, name).weight
    return {k: v.detach().to(torch.bfloat16).contiguous().clone() for k, v in state.items()}


def export_nemotron(model: nn.Module, choices: list[dict[str, dict[str, Any]]], tokenizer: Any, out_dir: Path) -> Path:
    """`out_dir`: config.json (+ its configuration code), model.safetensors (bf16), tokenizer."""
    if model.config.model_type not in ("llama", "mistral"):
        raise UnastError(f"nemotron-nas export needs a Llama-family teacher; this one is '{model.config.model_type}'")
    blocks = block_configs(choices, teacher_dims(model.config))
    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "config.json").write_text(json.dumps(nemotron_config(model.config, blocks), indent=2))
        shutil.copy(_CONFIG_CODE, tmp / "configuration_decilm.py")
        save_file(nemotron_state(model, blocks), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
