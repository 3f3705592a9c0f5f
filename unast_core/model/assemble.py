"""Build a student from the teacher and per-sublayer choices (the ILP's one-hot z, Eq. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from unast_core.model.adapters import Adapter
from unast_core.model.modeling_unast import SUBLAYER_KINDS, UnastConfig, UnastForCausalLM
from unast_core.model.operators import load_candidate_state
from unast_core.model.ops import OpSpec
from unast_core.store import read_tensors

AUTO_MAP = {"AutoConfig": "modeling_unast.UnastConfig", "AutoModelForCausalLM": "modeling_unast.UnastForCausalLM"}
Layers = list[dict[str, dict[str, Any]]]


def layers_from_choice(choice: list[int], pool: list[dict[str, Any]]) -> Layers:
    """ILP choice (candidate index per sublayer, 2N long) -> per-block operator specs."""
    specs = [dict(pool[j]) for j in choice]
    return [dict(zip(SUBLAYER_KINDS, specs[b:b + 2])) for b in range(0, len(specs), 2)]


def describe(layers: Layers) -> str:
    """Compact architecture string, one char per sublayer: T teacher, - skipped, L linear, a / m downsized
    attention / MLP, c compressed teacher sublayer."""
    glyph = {"teacher": "T", "identity": "-", "linear": "L", "attention": "a", "mlp": "m", "compressed": "c"}
    return " ".join("".join(glyph.get(layer[k]["op"], "?") for k in SUBLAYER_KINDS) for layer in layers)


def student_config(teacher_config, layers: Layers) -> UnastConfig:
    base = teacher_config.to_dict()
    base.pop("quantization_config", None)
    return UnastConfig(base_config=base, unast_layers=layers, auto_map=dict(AUTO_MAP),
                       tie_word_embeddings=getattr(teacher_config, "tie_word_embeddings", False),
                       eos_token_id=teacher_config.eos_token_id, bos_token_id=teacher_config.bos_token_id,
                       pad_token_id=teacher_config.pad_token_id)


def freeze_compressed(adapter: Adapter, layers: Layers) -> None:
    """A compressed teacher sublayer's compressed linears keep their quantization grid / zeros: no finetune
    step moves them (Appendix H candidates are calibrated, never trained)."""
    from unast_core.compress.candidates import linears_of

    for sub in adapter.sublayers:
        spec = layers[sub.block][sub.kind]
        if spec["op"] == "compressed":
            for layer in linears_of(adapter.modules_of(sub)[adapter.family[sub.kind]], spec["linears"]).values():
                layer.weight.requires_grad_(False)


def freeze_kept(student: UnastForCausalLM, layers: Layers) -> int:
    """Leave only the replaced sublayers trainable (`trainable: replaced`): the sublayers kept from the
    teacher, the embeddings, the final norm and the head keep the teacher's weights through a finetune.
    Returns how many parameters stay trainable (0 when nothing replaced has weights)."""
    adapter = Adapter(student.student)
    replaced = {id(p) for sub in adapter.sublayers if layers[sub.block][sub.kind]["op"] != "teacher"
                for module in adapter.modules_of(sub).values() for p in module.parameters()}
    for param in student.parameters():
        if id(param) not in replaced:
            param.requires_grad_(False)
    return sum(p.numel() for p in student.parameters() if p.requires_grad)


def build_student(teacher: nn.Module, layers: Layers, weights: dict[str, str] | None = None) -> UnastForCausalLM:
    """A fresh student: the teacher's weights where its modules are kept, and each trained candidate's
    distilled weights (`weights`: {sublayer index: candidate .safetensors}) where they are replaced.
    With `weights=None` the replaced sublayers keep their structural init (the caller loads a full state)."""
    student = UnastForCausalLM(student_config(teacher.config, layers))
    own = student.student.state_dict()
    shared = {k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape}
    student.student.load_state_dict(shared, strict=False)
    adapter = Adapter(student.student)
    given = {int(k): v for k, v in (weights or {}).items()}
    for sub in adapter.sublayers:
        spec = layers[sub.block][sub.kind]
        if weights is None or not OpSpec.of(spec).trained:
            continue
        if sub.index not in given:
            raise RuntimeError(f"sublayer {sub.name} uses {spec['op']} but no trained weights were given")
        load_candidate_state(adapter.modules_of(sub), read_tensors(Path(given[sub.index])))
    freeze_compressed(adapter, layers)
    student.student.config._attn_implementation = teacher.config._attn_implementation
    return student.to(dtype=next(teacher.parameters()).dtype).eval()


