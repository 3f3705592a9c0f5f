"""Build a student from the teacher and per-sublayer choices (the ILP's one-hot z, Eq. 3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unast_core.modeling_unast import SUBLAYER_KINDS, UnastConfig, UnastForCausalLM

AUTO_MAP = {"AutoConfig": "modeling_unast.UnastConfig", "AutoModelForCausalLM": "modeling_unast.UnastForCausalLM"}
Layers = list[dict[str, dict[str, Any]]]


def layers_from_choice(choice: list[int], pool: list[str]) -> Layers:
    """ILP choice (candidate index per sublayer, 2N long) -> per-block operator specs."""
    specs = [{"op": pool[j]} for j in choice]
    return [dict(zip(SUBLAYER_KINDS, specs[b:b + 2])) for b in range(0, len(specs), 2)]


def describe(layers: Layers) -> str:
    """Compact architecture string: one char per sublayer, T = teacher, - = skipped."""
    glyph = {"teacher": "T", "identity": "-"}
    return " ".join("".join(glyph.get(layer[k]["op"], "?") for k in SUBLAYER_KINDS) for layer in layers)


def student_config(teacher_config, layers: Layers) -> UnastConfig:
    base = teacher_config.to_dict()
    base.pop("quantization_config", None)
    return UnastConfig(base_config=base, unast_layers=layers, auto_map=dict(AUTO_MAP),
                       tie_word_embeddings=getattr(teacher_config, "tie_word_embeddings", False),
                       eos_token_id=teacher_config.eos_token_id, bos_token_id=teacher_config.bos_token_id,
                       pad_token_id=teacher_config.pad_token_id)


def build_student(teacher: nn.Module, layers: Layers) -> UnastForCausalLM:
    """A fresh student whose kept modules hold copies of the teacher's weights."""
    student = UnastForCausalLM(student_config(teacher.config, layers))
    result = student.student.load_state_dict(teacher.state_dict(), strict=False)
    if result.missing_keys:
        raise RuntimeError(f"student has weights the teacher lacks: {result.missing_keys[:5]}")
    student.student.config._attn_implementation = teacher.config._attn_implementation
    return student.to(dtype=next(teacher.parameters()).dtype).eval()


def load_student_weights(student: UnastForCausalLM, state: dict[str, torch.Tensor]) -> UnastForCausalLM:
    student.load_state_dict(state, strict=True)
    if getattr(student.config, "tie_word_embeddings", False):
        student.student.tie_weights()
    return student
