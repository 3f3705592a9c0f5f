"""Export a student as a Hugging Face checkpoint that loads with trust_remote_code and no `unast` install."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from unast_core.model import modeling_unast
from unast_core.model.modeling_unast import UnastForCausalLM
from unast_core.store import atomic_dir, write_json


def export_checkpoint(student: UnastForCausalLM, tokenizer, out_dir: Path, card: str,
                      results: dict[str, Any] | None = None) -> Path:
    """Write config (with auto_map), weights (safetensors), modeling code, tokenizer, model card, results."""
    with atomic_dir(Path(out_dir)) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(modeling_unast.__file__, tmp / "modeling_unast.py")
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card)
        if results is not None:
            write_json(tmp / "results.json", results)
    return Path(out_dir)
