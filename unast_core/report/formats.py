"""`unast export DIR --format ...`: an exported student directory rewritten for a serving engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unast_core.errors import UnastError
from unast_core.store import write_json

FORMATS = ("gguf", "nemotron-nas")


def check_student_dir(path: Path) -> None:
    if not (Path(path) / "config.json").exists():
        raise UnastError(f"{path} is not an exported student (no config.json); point at a run's --output directory")


def load_student_dir(path: Path) -> tuple[Any, Any, list[dict[str, dict[str, Any]]]]:
    """(the student's inner HF model in fp32, its tokenizer, its per-block choices) from an export directory."""
    path = Path(path)
    check_student_dir(path)
    import torch
    from transformers import PreTrainedTokenizerFast

    from unast_core.model.modeling_unast import UnastForCausalLM

    try:
        student = UnastForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise UnastError(f"{path} does not load as a UNAST student: {str(exc).splitlines()[0][:120]}") from None
    # not AutoTokenizer: config.json's auto_map would make it ask whether to run the modeling code
    return student.student, PreTrainedTokenizerFast.from_pretrained(path), student.config.unast_layers


def default_output(src: Path, fmt: str, quant: str) -> Path:
    return Path(src) / (f"model-{quant}.gguf" if fmt == "gguf" else "nemotron-nas")


def export_dir(src: Path, fmt: str, quant: str = "f16", out: Path | None = None) -> dict[str, Any]:
    """Write the student in `src` as `fmt`; returns {"path", "rewrites": [...]} (also written to PATH.json
    for a GGUF: which blocks llama.cpp runs through a rewrite, and why)."""
    if fmt not in FORMATS:
        raise UnastError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if fmt != "gguf" and quant != "f16":
        raise UnastError("--quant applies to --format gguf only")
    model, tokenizer, choices = load_student_dir(src)
    out = Path(out) if out else default_output(src, fmt, quant)
    if fmt == "nemotron-nas":
        from unast_core.report.nemotron import export_nemotron

        return {"path": str(export_nemotron(model, choices, tokenizer, out)), "rewrites": []}
    from unast_core.report.gguf import export_gguf

    path, rewrites = export_gguf(model, choices, tokenizer, out, quant, name=f"UNAST student ({Path(src).name})")
    record = {"path": str(path), "format": fmt, "quant": quant,
              "rewrites": [{"block": r.block, "kind": r.kind, "operator": r.operator, "how": r.how} for r in rewrites]}
    write_json(Path(f"{path}.json"), record)
    return record


def engine_exports(out_dir: Path, cfg: Any) -> dict[str, Any]:
    """The formats `export` (ExportConfig) asks for, written into the run's output directory."""
    done: dict[str, Any] = {}
    if cfg.gguf:
        done["gguf"] = export_dir(out_dir, "gguf", cfg.gguf)
    if cfg.nemotron_nas:
        done["nemotron_nas"] = export_dir(out_dir, "nemotron-nas")["path"]
    return done
