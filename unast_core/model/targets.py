"""Serving targets (`search.target`): which operators an engine runs as themselves, so that the search only
picks what the export can write. torch runs everything; llama.cpp (deci GGUF) and vLLM (nemotron-nas) less."""

from __future__ import annotations

import logging
from typing import Any, Callable

TARGETS = ("torch", "llama.cpp", "vllm")


def target_problem(spec: dict[str, Any], target: str, dims: dict[str, int]) -> str | None:
    """Why `target` cannot run operator `spec` as itself (None: it can)."""
    if target == "llama.cpp":
        from unast_core.report.gguf import target_problem as problem
    elif target == "vllm":
        from unast_core.report.nemotron import target_problem as problem
    else:
        return None
    kind = "attn" if spec.get("op") == "attention" else "mlp"
    return problem(spec, kind, dims)


def check_target_family(target: str, config: Any) -> None:
    """The engine's model family must be the teacher's (an error naming the setting otherwise)."""
    from unast_core.errors import UnastError

    if target in ("llama.cpp", "vllm") and config.model_type not in ("llama", "mistral"):
        raise UnastError(f"search.target={target} needs a Llama-family teacher (llama, mistral); this one is "
                         f"'{config.model_type}'; use search.target=torch")
    if target == "llama.cpp":
        from unast_core.report.gguf import check_family

        check_family(config)


def pool_for_target(pool: list[dict[str, Any]], target: str, config: Any, dims: dict[str, int],
                    warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The pool without the operators `target` cannot run, each dropped one named through `warn`."""
    check_target_family(target, config)
    warn = warn or logging.getLogger("unast").warning
    kept = []
    for spec in pool:
        why = target_problem(spec, target, dims)
        if why:
            warn(f"search.target={target}: pool operator {spec} dropped: {why}")
        else:
            kept.append(spec)
    return kept
