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


def _group_view(weight: torch.Tensor, size: int) -> torch.Tensor:
    """(out, in) -> (out, groups, size), the last group padded with NaN."""
    out, cols = weight.shape
    pad = -cols % size
    return torch.cat([weight, weight.new_full((out, pad), float("nan"))], 1).reshape(out, -1, size)


def _masked_min(t: torch.Tensor) -> torch.Tensor:
    """Minimum over the last dim, ignoring NaN (the padding of `_group_view`)."""
    return torch.where(t.isnan(), torch.full_like(t, float("inf")), t).amin(-1)


def _grid_scale(values: torch.Tensor, bits: int) -> float | None:
    """The fp16 step of one group's grid, for a group the vectorised guess missed (one level used, or no two
    adjacent levels): the smallest step s = d / k (d its smallest gap or largest magnitude) that puts every
    value on an integer multiple within 2**bits levels. None when there is none."""
    v = values[~values.isnan()].double()
    levels = torch.unique(v)
    if len(levels) == 1 and levels[0] == 0:
        return 1.0
    base = (levels[1:] - levels[:-1]).min() if len(levels) > 1 else levels.abs().max()
    for k in range(1, 2 ** bits):
        s = float(torch.tensor(float(base) / k, dtype=torch.float16))
        m = v / s
        if s > 0 and torch.equal(m.round() * s, v) and float(m.max() - m.min()) <= 2 ** bits - 1:
            return s
    return None


def recover_quantized(weight: torch.Tensor, bits: int, group_size: int | None) -> dict[str, torch.Tensor] | None:
    """The packed form (`pack_quantized`) of a dense weight whose every row and group of `group_size` columns
    lies on a grid s * (c - z) with an fp16 step s and integers c, z in [0, 2**bits): a compressed-teacher
    candidate as it was trained, frozen, and saved. The codes and zero points found may differ from the
    calibration's (any shift that fits gives the same values); the dequantized weight is bit-identical to
    `weight`, or None is returned."""
    from unast_core.compress.gptq import dequantize
    from unast_core.compress.pack import pack_quantized

    w = weight.detach().float()
    size, maxq = group_size or w.shape[1], 2 ** bits - 1
    groups = _group_view(w, size)
    ordered = groups.sort(-1).values
    gaps = ordered[..., 1:] - ordered[..., :-1]
    scale = torch.where(gaps > 0, gaps, torch.full_like(gaps, float("inf"))).amin(-1)
    scale = torch.where(scale.isinf(), torch.ones_like(scale), scale).half().float()
    steps = groups / scale[..., None]
    on_grid = ((steps.round() * scale[..., None] == groups) | groups.isnan()).all(-1)
    fits = -_masked_min(-steps) - _masked_min(steps) <= maxq
    for r, g in (~(on_grid & fits)).nonzero().tolist():
        s = _grid_scale(groups[r, g], bits)
        if s is None:
            return None
        scale[r, g] = s
    steps = (groups / scale[..., None]).round()
    zero = (-_masked_min(steps)).clamp(min=0)
    codes = (steps + zero[..., None]).reshape(w.shape[0], -1)[:, :w.shape[1]]
    if codes.min() < 0 or codes.max() > maxq:
        return None
    packed = pack_quantized(codes, scale, zero, bits)
    if not torch.equal(dequantize(codes, packed["scale"].float(), packed["zero"].float(), group_size), w):
        return None
    return packed


def recover_sparse(weight: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The packed form (`pack_sparse`) of a pruned weight whose non-zeros are 16-bit (bf16) values, or None."""
    from unast_core.compress.pack import pack_sparse

    w = weight.detach().float()
    return pack_sparse(w) if torch.equal(w.bfloat16().float(), w) else None


def packed_candidates(student: UnastForCausalLM, layers: list[dict[str, dict[str, Any]]]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], list[str]]:
    """The compressed-teacher candidates (Appendix H) of a built student in their packed form: ({"3.mlp.
    down_proj.qweight": tensor, ...}, {"3.mlp.down_proj": PackedLinear metadata}, [linears left dense]). A
    linear is left dense when its weight is not exactly on the grid (or the zeros) its candidate stored."""
    from unast_core.compress.apply import layer_meta
    from unast_core.compress.candidates import linears_of, settings
    from unast_core.model.modeling_unast import get_blocks

    family = family_of(student.student.config)
    blocks = get_blocks(student.student, family)
    packed, meta, dense = {}, {}, []
    for b, choice in enumerate(layers):
        for kind, spec in choice.items():
            if spec.get("op") != "compressed":
                continue
            cfg = settings(spec)
            for name, layer in linears_of(getattr(blocks[b], family[kind]), spec["linears"]).items():
                full = f"{b}.{family[kind]}.{name}"
                if not isinstance(layer, torch.nn.Linear):  # GPT-2's Conv1D: no packed form
                    dense.append(full)
                    continue
                w = layer.weight
                parts = recover_sparse(w) if cfg.method == "sparsegpt" else recover_quantized(w, cfg.bits, cfg.group_size)
                if parts is None:
                    dense.append(full)
                    continue
                packed.update({f"{full}.{k}": v for k, v in parts.items()})
                meta[full] = layer_meta(cfg, list(w.shape), parts)
    return packed, meta, dense
