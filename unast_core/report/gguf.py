"""Export a student as a llama.cpp GGUF of the `deci` architecture (per-layer heads, KV heads, FFN widths).

llama.cpp's `deci` graph (written for Llama-3.1-Nemotron-51B) runs, per layer l:
    n_head[l] == 0                     -> no attention
    n_head[l] > 0, n_head_kv[l] == 0   -> "linear attention": h += wo @ attn_norm(h)   (no bias)
    n_head[l] > 0, n_head_kv[l] > 0    -> grouped-query attention with n_head[l] / n_head_kv[l] heads
    n_ff[l] > 0                        -> h += down(silu(gate(x) + b_g) * (up(x) + b_u)) + b_d,  x = ffn_norm(h)
    n_ff[l] == 0                       -> the layer ends here *and drops its attention output* (llama.cpp
                                          `continue`s before `inpL = cur`), so a layer with attention and
                                          no MLP gets a zero FFN of width 1 instead.
One head dim serves every layer. A UNAST block maps to one such layer where it can; the rest is rewritten
exactly (`Rewrite` names each one and why):
  - a linear attention with a bias: the bias goes into a width-1 FFN whose gate and up weights are zero
    (down @ (silu(c) * 1) = b), on the same layer; the block's MLP moves to a next, attention-free layer;
  - a linear MLP (W @ norm(h) + b): an extra layer whose linear attention is W (with the MLP's norm) and
    whose width-1 FFN adds b;
  - an attention with a smaller head dim: its query/key/value channels are zero-padded back to the teacher's
    head dim at the rotary channels they came from (same scores, same output, none of the saving).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unast_core.errors import UnastError
from unast_core.model.modeling_unast import family_of, get_blocks, teacher_dims
from unast_core.store import atomic_path

QUANTS = ("f16", "q8_0", "q4_k")
# llama.cpp's llama_ftype values: what llama_model_quantize is asked for ("q4_k" is the usual Q4_K_M mix).
_FTYPES = {"q8_0": 7, "q4_k": 15}
GGUF_FAMILIES = ("llama", "mistral")
_GATE_BIAS = 1.0  # the zero-weight gate of a width-1 FFN outputs silu(1) for every token


@dataclass
class DeciLayer:
    """One llama.cpp layer: its head counts, FFN width and tensors (GGUF names after `blk.N.`)."""

    n_head: int = 0
    n_head_kv: int = 0
    n_ff: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    block: int = -1  # the student's block it comes from


@dataclass(frozen=True)
class Rewrite:
    block: int
    kind: str       # attn | mlp
    operator: str   # the student's operator label
    how: str        # how llama.cpp runs it, and what that costs
    exact: bool = True


def target_problem(spec: dict[str, Any], kind: str, dims: dict[str, int]) -> str | None:
    """Why llama.cpp's deci cannot run operator `spec` as itself (None: it can, maybe with a zero-cost rewrite).
    This is what `search.target=llama.cpp` filters the pool with."""
    if spec.get("op") == "attention" and spec["head_dim"] != dims["head_dim"]:
        return (f"head dim {spec['head_dim']} < {dims['head_dim']}: llama.cpp's deci has one head dim for all "
                f"layers, so it would run zero-padded at the teacher's cost")
    return None


def check_family(config: Any) -> None:
    if config.model_type not in GGUF_FAMILIES:
        raise UnastError(f"GGUF export supports the {', '.join(GGUF_FAMILIES)} families (llama.cpp's deci is a "
                         f"Llama); this student's teacher is '{config.model_type}'; use --format hf")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UnastError("GGUF export: the teacher has attention/MLP biases, which llama.cpp's deci does not apply "
                         "to every projection; use --format hf")
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", scaling.get("rope_type", "default"))
    if rope_type != "default":
        raise UnastError(f"GGUF export: rope type '{rope_type}' is not written yet (only 'default'); use --format hf")


# --- tensors ---------------------------------------------------------------------------------------------


def _rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """(n_head * hd, in) q/k rows from the HF layout (channel i pairs with i + hd/2) to llama.cpp's
    (channel 2i pairs with 2i + 1)."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, 2, hd // 2, -1).transpose(1, 2).reshape(w.shape)


def _pad_heads(w: torch.Tensor, n_head: int, channels: list[int], hd: int, dim: int = 0) -> torch.Tensor:
    """Put each head's `channels` (of `hd`) back at their places along `dim`; the others are zero."""
    if len(channels) == hd:
        return w
    if dim == 1:
        return _pad_heads(w.T, n_head, channels, hd).T
    out = w.new_zeros(n_head, hd, w.shape[1])
    out[:, channels] = w.reshape(n_head, len(channels), -1)
    return out.reshape(n_head * hd, -1)


def attention_tensors(attn: nn.Module, norm: nn.Module, hd: int) -> tuple[DeciLayer, bool]:
    """A (possibly smaller) HF Llama attention as a deci attention layer; True if it was zero-padded."""
    n_q = attn.q_proj.out_features // attn.head_dim
    n_kv = attn.k_proj.out_features // attn.head_dim
    d = attn.head_dim
    qk = attn.unast_rope_index.tolist() if hasattr(attn, "unast_rope_index") else list(range(d))
    v = list(range(d))
    w = {"q": attn.q_proj.weight.detach(), "k": attn.k_proj.weight.detach(), "v": attn.v_proj.weight.detach()}
    tensors = {
        "attn_norm.weight": norm.weight.detach(),
        "attn_q.weight": _rope_rows(_pad_heads(w["q"], n_q, qk, hd), n_q),
        "attn_k.weight": _rope_rows(_pad_heads(w["k"], n_kv, qk, hd), n_kv),
        "attn_v.weight": _pad_heads(w["v"], n_kv, v, hd),
        "attn_output.weight": _pad_heads(attn.o_proj.weight.detach(), n_q, v, hd, dim=1),
    }
    if attn.o_proj.bias is not None:
        tensors["attn_output.bias"] = attn.o_proj.bias.detach()
    return DeciLayer(n_head=n_q, n_head_kv=n_kv, tensors=tensors), d != hd


def linear_attention(proj: nn.Linear, norm: nn.Module, n_head: int) -> DeciLayer:
    """h += W @ norm(h): deci's linear attention (its bias, if any, goes to `const_ffn`)."""
    return DeciLayer(n_head=n_head, n_head_kv=0,
                     tensors={"attn_norm.weight": norm.weight.detach(), "attn_output.weight": proj.weight.detach()})


def const_ffn(bias: torch.Tensor | None, hidden: int) -> dict[str, torch.Tensor]:
    """A width-1 FFN that adds the constant `bias` (H,) to every token (zero when None):
    gate and up weights are 0, so the hidden unit is silu(GATE_BIAS) * 1 and down = bias / silu(GATE_BIAS)."""
    scale = float(torch.nn.functional.silu(torch.tensor(_GATE_BIAS, dtype=torch.float64)))
    down = (bias.detach().double() / scale).float() if bias is not None else torch.zeros(hidden)
    return {"ffn_norm.weight": torch.ones(hidden), "ffn_gate.weight": torch.zeros(1, hidden),
            "ffn_gate.bias": torch.tensor([_GATE_BIAS]), "ffn_up.weight": torch.zeros(1, hidden),
            "ffn_up.bias": torch.ones(1), "ffn_down.weight": down.reshape(hidden, 1)}


def gated_ffn(mlp: nn.Module, norm: nn.Module) -> dict[str, torch.Tensor]:
    return {"ffn_norm.weight": norm.weight.detach(), "ffn_gate.weight": mlp.gate_proj.weight.detach(),
            "ffn_up.weight": mlp.up_proj.weight.detach(), "ffn_down.weight": mlp.down_proj.weight.detach()}


def _set_ffn(layer: DeciLayer, tensors: dict[str, torch.Tensor]) -> None:
    layer.n_ff = tensors["ffn_gate.weight"].shape[0]
    layer.tensors.update(tensors)


def deci_layers(model: nn.Module, choices: list[dict[str, dict[str, Any]]]) -> tuple[list[DeciLayer], list[Rewrite]]:
    """The student's blocks (a Llama-family model with replaced sublayers, `choices[b] = {"attn": spec,
    "mlp": spec}`) as deci layers, and every block that needed a rewrite (see the module docstring)."""
    from unast_core.model.ops import OpSpec

    family = family_of(model.config)
    dims = teacher_dims(model.config)
    H, hd = dims["hidden_size"], dims["head_dim"]
    layers: list[DeciLayer] = []
    rewrites: list[Rewrite] = []
    for b, block in enumerate(get_blocks(model, family)):
        attn_spec, mlp_spec = (OpSpec.of(choices[b].get(k, {"op": "teacher"})) for k in ("attn", "mlp"))
        attn, mlp = getattr(block, family["attn"]), getattr(block, family["mlp"])
        attn_norm, mlp_norm = getattr(block, family["attn_pre"]), getattr(block, family["mlp_pre"])
        layer, after = DeciLayer(), None  # `after`: a linear MLP's extra layer
        if attn_spec.op in ("teacher", "attention"):
            layer, padded = attention_tensors(attn, attn_norm, hd)
            if padded:
                rewrites.append(Rewrite(b, "attn", attn_spec.label, f"zero-padded to head dim {hd}: exact, but "
                                        f"runs at the cost of head dim {hd}", exact=True))
        elif attn_spec.op == "linear":
            layer = linear_attention(attn.proj, attn_norm, dims["heads"])
            if attn.proj.bias is not None and bool(attn.proj.bias.detach().any()):
                _set_ffn(layer, const_ffn(attn.proj.bias, H))
                rewrites.append(Rewrite(b, "attn", "linear", "llama.cpp's linear attention has no bias: the bias "
                                        "is a width-1 FFN on this layer and the block's MLP an attention-free next "
                                        "layer (exact; one more layer of norms)"))
        if mlp_spec.op in ("teacher", "mlp"):
            ffn = gated_ffn(mlp, mlp_norm)
        elif mlp_spec.op == "linear":
            ffn = None
            after = linear_attention(mlp.proj, mlp_norm, dims["heads"])
            _set_ffn(after, const_ffn(mlp.proj.bias, H))
            rewrites.append(Rewrite(b, "mlp", "linear", "deci has no linear FFN: runs as the linear attention of "
                                    "an extra layer, its bias as that layer's width-1 FFN (exact)"))
        else:
            ffn = None
        if ffn is not None and layer.n_ff:  # the bias FFN took this layer's slot
            layers.append(layer)
            layer = DeciLayer()
        if ffn is not None:
            _set_ffn(layer, ffn)
        elif layer.n_head and not layer.n_ff:  # see the module docstring: an FFN-less layer drops its attention
            _set_ffn(layer, const_ffn(None, H))
        if layer.n_head or layer.n_ff:
            layers.append(layer)
        if after is not None:
            layers.append(after)
        for added in layers:
            added.block = b if added.block < 0 else added.block
    if layers and not layers[0].n_head:
        # llama.cpp derives the head dim from the first layer's head count: with none there, every later
        # attention fails to load (head dim 0). A zero linear attention adds nothing and gives it the heads.
        layers[0].n_head = dims["heads"]
        layers[0].tensors.update({"attn_norm.weight": torch.ones(H), "attn_output.weight": torch.zeros(H, H)})
        rewrites.append(Rewrite(layers[0].block, "attn", "skip", "llama.cpp needs heads on its first layer: the "
                                "skipped attention is a zero linear attention (exact; one H x H matmul)"))
    return layers, rewrites


# --- tokenizer ---------------------------------------------------------------------------------------------


def _pre_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, read from tokenizer.json's structure."""
    if pre and pre.get("type") == "ByteLevel":
        return "gpt-2" if pre.get("use_regex", True) else "default"
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else []
    kinds = [(s.get("type"), s.get("individual_digits")) for s in steps]
    if kinds == [("Digits", True), ("ByteLevel", None)] and steps[1].get("use_regex", True):
        return "smollm"  # digits one by one, then GPT-2's regex
    raise UnastError(f"GGUF export: tokenizer pre-tokenizer {json.dumps(pre)[:120]} is not one llama.cpp's byte-level "
                     f"BPE names here (ByteLevel, or Digits + ByteLevel); use --format hf")


def tokenizer_fields(tokenizer: Any) -> dict[str, Any]:
    """The GGUF tokenizer of a fast byte-level BPE tokenizer: tokens by id, types, merges, special ids."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise UnastError(f"GGUF export: tokenizer model {spec['model']['type']} is not written yet (only byte-level "
                         f"BPE); use --format hf")
    vocab = dict(spec["model"]["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    vocab.update({c: t["id"] for c, t in added.items()})
    size = max(vocab.values()) + 1
    tokens, types = [f"[PAD{i}]" for i in range(size)], [5] * size  # 5: unused
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = (3 if added[text].get("special") else 4) if text in added else 1  # control / user / normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    if not merges:
        raise UnastError("GGUF export: the tokenizer is a BPE without merges, which llama.cpp does not load; "
                         "use --format hf")
    specials = {name: tokenizer.convert_tokens_to_ids(tok) for name in ("bos", "eos", "unk", "pad")
                if (tok := getattr(tokenizer, f"{name}_token", None)) is not None}
    probe = tokenizer("a").input_ids
    return {"pre": _pre_name(spec.get("pre_tokenizer")), "tokens": tokens, "types": types, "merges": merges,
            "specials": specials, "add_bos": bool(probe) and probe[0] == specials.get("bos"),
            "chat_template": getattr(tokenizer, "chat_template", None)}


# --- writing -------------------------------------------------------------------------------------------------


def _array(t: torch.Tensor, half: bool) -> np.ndarray:
    """Matrices in f16 (the `f16` file; llama.cpp quantizes from it), vectors stay f32 as llama.cpp expects."""
    return t.detach().float().cpu().numpy().astype(np.float16 if half and t.dim() > 1 else np.float32)


def write_deci(path: Path, config: Any, layers: list[DeciLayer], embed: torch.Tensor, norm: torch.Tensor,
               head: torch.Tensor | None, tok: dict[str, Any], name: str) -> Path:
    """Write an f16 deci GGUF (atomically): hyperparameters, tokenizer, then tensors."""
    import gguf

    dims = teacher_dims(config)
    with atomic_path(Path(path)) as tmp:
        w = gguf.GGUFWriter(str(tmp), "deci")
        w.add_name(name)
        w.add_file_type(1)  # mostly f16
        w.add_context_length(config.max_position_embeddings)
        w.add_embedding_length(dims["hidden_size"])
        w.add_block_count(len(layers))
        w.add_feed_forward_length([layer.n_ff for layer in layers])
        w.add_head_count([layer.n_head for layer in layers])
        w.add_head_count_kv([layer.n_head_kv for layer in layers])
        w.add_key_length(dims["head_dim"])
        w.add_value_length(dims["head_dim"])
        w.add_rope_dimension_count(dims["head_dim"])
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 1e4)
        w.add_rope_freq_base(float(theta))
        w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        w.add_vocab_size(embed.shape[0])
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        for key, value in tok["specials"].items():
            getattr(w, f"add_{key}_token_id")(value)
        w.add_add_bos_token(tok["add_bos"])
        if tok["chat_template"]:
            w.add_chat_template(tok["chat_template"])
        w.add_tensor("token_embd.weight", _array(embed, True))
        for i, layer in enumerate(layers):
            for key, value in layer.tensors.items():
                w.add_tensor(f"blk.{i}.{key}", _array(value, True))
        w.add_tensor("output_norm.weight", _array(norm, False))
        if head is not None:
            w.add_tensor("output.weight", _array(head, True))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return Path(path)


def quantize(src: Path, dst: Path, quant: str, threads: int = 0) -> Path:
    """Quantize an f16 GGUF with llama.cpp's own quantizer (needs the `llama-cpp-python` extra)."""
    try:
        import llama_cpp
    except ImportError:
        raise UnastError(f"--quant {quant} quantizes with llama.cpp: pip install 'unast[llamacpp]' (or use --quant f16)") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[quant]
    params.nthread = threads
    with atomic_path(Path(dst)) as tmp:
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
            raise UnastError(f"llama.cpp could not quantize {src} to {quant}")
    return Path(dst)


def export_gguf(model: nn.Module, choices: list[dict[str, dict[str, Any]]], tokenizer: Any, out: Path,
                quant: str = "f16", name: str = "unast student") -> tuple[Path, list[Rewrite]]:
    """The student (an HF Llama-family model with replaced sublayers) as `out`, a deci GGUF in `quant`."""
    if quant not in QUANTS:
        raise UnastError(f"--quant {quant}: use one of {', '.join(QUANTS)}")
    config = model.config
    check_family(config)
    tok = tokenizer_fields(tokenizer)
    layers, rewrites = deci_layers(model, choices)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == embed.data_ptr() or bool(getattr(config, "tie_word_embeddings", False))
    final_norm = model.get_submodule(family_of(config)["final_norm"]).weight
    out = Path(out)
    f16 = out if quant == "f16" else out.with_name(out.stem + ".f16.gguf")
    write_deci(f16, config, layers, embed, final_norm, None if tied else head, tok, name)
    if quant != "f16":
        quantize(f16, out, quant)
        f16.unlink()
    return out, rewrites
