"""The exported form of a compressed student: its body linears packed (`PackedLinear`), the rest 16-bit."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from unast_core.model.modeling_unast import UnastForCausalLM, family_of


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def packed_copy(student: UnastForCausalLM, packed: dict[str, torch.Tensor], compression: dict[str, Any],
                dtype: torch.dtype = torch.bfloat16) -> UnastForCausalLM:
    """A copy of `student` as it is stored: every layer of `compression["layers"]` a PackedLinear filled from
    `packed` ({"3.mlp.down_proj.qweight": tensor, ...}, named from the block list), every other weight in
    `dtype` (Appendix D keeps embedding, head and norms at 16 bits)."""
    config = copy.deepcopy(student.config)
    config.unast_compression = compression
    config.dtype = dtype
    with _default_dtype(dtype):
        new = UnastForCausalLM(config)
    prefix = f"student.{family_of(new.student.config)['blocks']}."
    layers = compression["layers"]
    state = {k: v for k, v in student.state_dict().items()
             if not any(k == f"{prefix}{name}.weight" for name in layers)}
    state.update({prefix + k: v for k, v in packed.items()})
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise RuntimeError(f"packed state does not fit the student: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return new.eval()


def compression_summary(compression: dict[str, Any], weights_file: Path) -> dict[str, Any]:
    """What results.json records of a post-training compression: its settings, the Appendix D size and
    the size on disk of the exported weights. No int4 / sparse kernel runs here: the packed layers are
    rebuilt dense on load, so they save memory and disk, not time."""
    settings = {k: v for k, v in compression.items() if k not in ("layers", "packed")}
    disk = weights_file.stat().st_size
    return {**settings, "layers": len(compression["layers"]), "disk_bytes": disk,
            "disk_vs_app_d": disk / compression["app_d_bytes"], "speedup_kernel": False}
