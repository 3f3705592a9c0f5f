"""Compressed-teacher candidates (Appendix H): a sublayer of the teacher with its first linear module(s)
(QKV, or gate + up / FC1), its second (attention output, or down / FC2) or both compressed, calibrated on
the stored teacher states of that sublayer, not distilled. And their stored size (Appendix D)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unast_core.compress.apply import compress_weight
from unast_core.compress.gptq import accumulate_hessian
from unast_core.compress.spec import parse_sparsity
from unast_core.config import CompressConfig

FIRST = ("q_proj", "k_proj", "v_proj", "c_attn", "gate_proj", "up_proj", "c_fc", "fc1")
SECOND = ("o_proj", "down_proj", "c_proj", "fc2")


def linears_of(op: nn.Module, which: str) -> dict[str, nn.Module]:
    """The named linear modules of a sublayer's operator that `which` (first | second | both) compresses."""
    names = {"first": FIRST, "second": SECOND, "both": FIRST + SECOND}[which]
    return {n: getattr(op, n) for n in names if isinstance(getattr(op, n, None), nn.Module)}


def settings(spec: dict[str, Any]) -> CompressConfig:
    """A candidate spec's compression settings (defaults as `ptq`)."""
    fields = {k: spec[k] for k in ("method", "bits", "sparsity") if spec.get(k) is not None}
    return CompressConfig(**fields)


def _weight(layer: nn.Module) -> torch.Tensor:
    """(out, in) for Linear and GPT-2's Conv1D (stored in x out)."""
    return layer.weight.detach() if isinstance(layer, nn.Linear) else layer.weight.detach().T


@torch.no_grad()
def compress_linears(linears: dict[str, nn.Module], inputs: dict[str, torch.Tensor], cfg: CompressConfig) -> None:
    """Compress each layer in place from its calibration inputs (tokens, in)."""
    for name, layer in linears.items():
        hessian = accumulate_hessian(inputs[name])[0] if cfg.method != "rtn" else None
        stored, _, _ = compress_weight(_weight(layer), hessian, cfg)
        layer.weight.data.copy_((stored if isinstance(layer, nn.Linear) else stored.T).to(layer.weight.dtype))


def size_bytes(params: int, compressed_params: int, spec: dict[str, Any]) -> float:
    """Appendix D bytes of a sublayer with `params` parameters of which `compressed_params` are in the
    compressed linear modules: the rest at 16 bits; those at `bits`, or their non-zeros at 16 bits."""
    if spec.get("op") != "compressed":
        return 2.0 * params
    if spec["method"] == "sparsegpt":
        per_weight = 16 * (1 - parse_sparsity(spec["sparsity"])[0])
    else:
        per_weight = settings(spec).bits
    return 2.0 * (params - compressed_params) + compressed_params * per_weight / 8
