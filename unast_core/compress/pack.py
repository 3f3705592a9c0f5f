"""Bit packing of quantized codes and sparsity masks, and the model size of Appendix D.

Stored forms (all safetensors-friendly tensors, unpacked by the exported modeling code):
- quantized: `qweight` uint8 (the (out, in) codes, `bits` each, packed LSB first), `scale` fp16 and
  `zero` uint8 (out, groups);
- sparse: `values` 16-bit (the kept weights, row-major) and `mask` uint8 (1 bit per weight, 1 = kept).
"""

from __future__ import annotations

import torch

from unast_core.model.modeling_unast import unpack_bits  # the exported code unpacks; one copy

__all__ = ["app_d_bytes", "pack_bits", "pack_quantized", "pack_sparse", "unpack_bits"]

GIB = 2 ** 30


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers in [0, 2**bits) (any shape) -> uint8 bytes, `bits` per value, least significant bit first."""
    flat = codes.reshape(-1).to(torch.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= 2 ** bits):
        raise ValueError(f"codes do not fit in {bits} bits")
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)                      # (numel * bits,) bits
    stream = torch.cat([stream, stream.new_zeros(-len(stream) % 8)]).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.int64)).sum(1).to(torch.uint8)


def pack_quantized(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    return {"qweight": pack_bits(codes, bits), "scale": scale.to(torch.float16), "zero": zero.to(torch.uint8)}


def pack_sparse(weight: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """A pruned weight (out, in) -> its non-zeros and a 1-bit mask of where they are."""
    kept = weight != 0
    return {"values": weight[kept].to(dtype), "mask": pack_bits(kept.to(torch.int64), 1)}


def app_d_bytes(outer_params: float, body_params: float, bits: float = 16, sparsity: float = 0.0) -> float:
    """Appendix D: embedding and output layer at 16 bits; the body at `bits` per weight, or (sparsity) its
    non-zeros at 16 bits. (2.1e9 * 16 + 3.7e9 * 4) / 8 bytes = 5.63 GiB, the paper's "GB"."""
    body_bits = 16 * (1 - sparsity) if sparsity else bits
    return (outer_params * 16 + body_params * body_bits) / 8
