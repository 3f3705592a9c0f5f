"""Compress every linear layer of a model's body (its decoder blocks), calibrated on its own activations.

GPTQ and SparseGPT take each layer's Hessian from the inputs it sees when every earlier block is already
compressed: the calibration sequences run through the embedding once, then block by block, and each block's
compressed output feeds the next (the sequential scheme of both papers). The embedding, the head and the
norms are not touched (Appendix D keeps them at 16 bits).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from unast_core.compress.gptq import accumulate_hessian, dequantize, gptq_quantize, rtn_quantize
from unast_core.compress.pack import app_d_bytes, pack_quantized, pack_sparse
from unast_core.compress.sparsegpt import sparsegpt_prune
from unast_core.compress.spec import check_width
from unast_core.config import CompressConfig
from unast_core.errors import UnastError


class _Stop(Exception):
    pass


def _exact(t: torch.Tensor) -> torch.autocast:
    """The algorithms' own arithmetic in fp32 even when the calibration forward runs under autocast: a bf16
    Hessian of SmolLM2's activations was indefinite, and GPTQ's error feedback needs the precision."""
    return torch.autocast(t.device.type, enabled=False)


def body_linears(blocks: nn.ModuleList) -> dict[str, nn.Linear]:
    """{"3.self_attn.q_proj": Linear, ...}: every nn.Linear inside the blocks, named from the block list."""
    return {name: m for name, m in blocks.named_modules() if isinstance(m, nn.Linear)}


def check_settings(cfg: CompressConfig, blocks: nn.ModuleList) -> None:
    """An n:m pattern must divide every compressed layer's input width (a config error naming the field)."""
    if cfg.method != "sparsegpt":
        return
    for name, layer in body_linears(blocks).items():
        try:
            check_width(cfg.sparsity, layer.in_features)
        except ValueError as exc:
            raise UnastError(f"invalid config field 'ptq.sparsity': {exc} (at {name})") from None


@torch.no_grad()
def _block_inputs(model: nn.Module, blocks: nn.ModuleList, tokens: torch.Tensor, batch: int
                  ) -> tuple[list[torch.Tensor], list[list[dict[str, Any]]]]:
    """Hidden states entering block 0 per batch, and every block's other arguments per batch (masks and
    position embeddings differ by layer in some families), from one forward pass of the model."""
    kwargs: list[list[dict[str, Any]]] = [[] for _ in blocks]
    first: list[torch.Tensor] = []

    def grab(b: int):
        def hook(module: nn.Module, args: tuple, kw: dict) -> None:
            if b == 0:
                first.append(args[0] if args else kw["hidden_states"])
            kwargs[b].append({k: v for k, v in kw.items() if k != "hidden_states"} | dict(
                enumerate(args[1:], 1)))
            if b == len(blocks) - 1:
                raise _Stop
        return hook

    handles = [block.register_forward_pre_hook(grab(b), with_kwargs=True) for b, block in enumerate(blocks)]
    try:
        for start in range(0, len(tokens), batch):
            try:
                model(tokens[start:start + batch], use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return first, kwargs


def _run_block(block: nn.Module, h: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    args = [kw[i] for i in sorted(k for k in kw if isinstance(k, int))]
    out = block(h, *args, **{k: v for k, v in kw.items() if isinstance(k, str)})
    return out[0] if isinstance(out, tuple) else out


def _hessians(block: nn.Module, linears: dict[str, nn.Linear], hs: list[torch.Tensor], kws: list[dict]
              ) -> dict[str, torch.Tensor]:
    state: dict[str, tuple[torch.Tensor | None, int]] = {name: (None, 0) for name in linears}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            with _exact(args[0]):
                state[name] = accumulate_hessian(args[0], *state[name])
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in linears.items()]
    try:
        for h, kw in zip(hs, kws):
            _run_block(block, h, kw)
    finally:
        for handle in handles:
            handle.remove()
    # a layer the calibration never reached (none in a plain block) is rounded as if its inputs were white
    return {name: hess if hess is not None else torch.eye(linears[name].in_features) for name, (hess, _) in state.items()}


def compress_weight(weight: torch.Tensor, hessian: torch.Tensor | None, cfg: CompressConfig
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
    """One layer: (the weight as it will be stored, rebuilt in fp32; its packed tensors; its metadata)."""
    shape = list(weight.shape)
    if cfg.method == "sparsegpt":
        pruned, _ = sparsegpt_prune(weight, hessian, cfg.sparsity, cfg.damp)
        pruned = pruned.to(torch.bfloat16)  # stored 16-bit (Appendix D)
        packed = pack_sparse(pruned)
        return pruned.float(), packed, layer_meta(cfg, shape, packed)
    if cfg.method == "gptq":
        q = gptq_quantize(weight, hessian, cfg.bits, cfg.group_size, cfg.act_order, cfg.damp)
    else:
        q = rtn_quantize(weight, cfg.bits, cfg.group_size)
    packed = pack_quantized(q.codes, q.scale, q.zero, cfg.bits)
    stored = dequantize(q.codes, packed["scale"].float(), packed["zero"].float(), cfg.group_size)
    return stored, packed, layer_meta(cfg, shape, packed)


def layer_meta(cfg: CompressConfig, shape: list[int], packed: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A packed layer's metadata (`PackedLinear`): its kind and shape, with its non-zeros or bits and groups."""
    if cfg.method == "sparsegpt":
        return {"kind": "sparse", "shape": shape, "nnz": int(packed["values"].numel())}
    return {"kind": "quant", "shape": shape, "bits": cfg.bits, "group_size": cfg.group_size,
            "groups": int(packed["scale"].shape[1])}


@torch.no_grad()
def compress_model(model: nn.Module, blocks: nn.ModuleList, tokens: torch.Tensor, cfg: CompressConfig,
                   batch: int = 4, on_block: Callable[[int], None] | None = None
                   ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Compress every Linear in `blocks` in place (their weights become what is stored, in fp32), calibrated
    on `tokens` (N, T) run through `model`. Returns ({layer: packed tensors}, {layer: metadata}), layers
    named from the block list ("3.mlp.down_proj")."""
    check_settings(cfg, blocks)
    # The calibration forward runs in fp32 whatever autocast the caller holds: on SmolLM2-135M, GPTQ 3-bit
    # calibrated on 16 sequences through a bf16-autocast forward (as bench/table5.py first called it) gave 80.4
    # in-domain and 291 held-out, through fp32 39.2 and 173 (4-bit: 20.5 / 59.8 against 19.5 / 54.7).
    with _exact(tokens):
        return _compress(model, blocks, tokens, cfg, batch, on_block)


def _compress(model: nn.Module, blocks: nn.ModuleList, tokens: torch.Tensor, cfg: CompressConfig, batch: int,
              on_block: Callable[[int], None] | None) -> tuple[dict, dict]:
    packed, meta = {}, {}
    needs_data = cfg.method != "rtn"
    hs, kws = _block_inputs(model, blocks, tokens[:cfg.calibration_seqs], batch) if needs_data else ([], [])
    for b, block in enumerate(blocks):
        linears = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
        hessians = _hessians(block, linears, hs, kws[b]) if needs_data else {}
        for name, layer in linears.items():
            with _exact(layer.weight):
                stored, packed[f"{b}.{name}"], meta[f"{b}.{name}"] = compress_weight(layer.weight.detach(),
                                                                                     hessians.get(name), cfg)
            layer.weight.data.copy_(stored.to(layer.weight.dtype))
        if needs_data:
            hs = [_run_block(block, h, kw) for h, kw in zip(hs, kws[b])]
        if on_block:
            on_block(b)
    return packed, meta


def model_bytes(model: nn.Module, blocks: nn.ModuleList, meta: dict[str, dict[str, Any]] | None = None
                ) -> dict[str, float]:
    """Appendix D size of a model: embedding, head and every parameter outside the body's linear layers at
    16 bits (a tied head counts once, as stored); each body linear at its bits, or its non-zeros at 16 bits.
    Returns {"bytes", "gib", "outer_params", "body_params"}."""
    linear_ids = {id(m.weight) for m in body_linears(blocks).values()}
    seen: set[int] = set()
    outer = 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in linear_ids:
            outer += p.numel()
        seen.add(id(p))
    bits = 0.0
    for name, layer in body_linears(blocks).items():
        info = (meta or {}).get(name)
        n = layer.weight.numel()
        if info is None:
            bits += 16 * n
        elif info["kind"] == "sparse":
            bits += 16 * info["nnz"]
        else:
            bits += info["bits"] * n
    body = sum(layer.weight.numel() for layer in body_linears(blocks).values())
    total = app_d_bytes(outer, 0) + bits / 8
    return {"bytes": total, "gib": total / 2 ** 30, "outer_params": outer, "body_params": body}

