"""Timing in llama.cpp (through llama-cpp-python): the same regime units as `latency.py` (a prefill of
batch x seq_len tokens; one decode step with seq_len tokens of context), timed with its interleaved median.

llama.cpp keeps one sequence per context here, so a prefill of batch > 1 is `batch` prefills in a row."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from unast_core.config import RegimeConfig
from unast_core.errors import UnastError
from unast_core.search.latency import interleaved_latency


def llama_cpp_module() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise UnastError("llama.cpp is not installed: pip install 'unast[llamacpp]' (see README: llama.cpp)") from None
    return llama_cpp


def default_threads() -> int:
    """The cores this process may use (llama.cpp's own default counts every core of the host)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_gguf(path: Path, n_ctx: int, threads: int | None = None, logits_all: bool = False) -> Any:
    llama_cpp = llama_cpp_module()
    threads = threads or default_threads()
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                           n_threads_batch=threads, logits_all=logits_all, verbose=False)


def gguf_runner(llm: Any, ids: list[int], kind: str, batch: int = 1) -> Callable[[], None]:
    """A zero-argument callable running one regime unit in `llm`: a prefill of `ids` (from an empty cache),
    or one decode step after `ids` (the context is evaluated here, untimed; each step is undone after)."""
    if kind == "prefill":
        def prefill() -> None:
            for _ in range(batch):
                llm.reset()
                llm.eval(ids)
        return prefill
    llm.reset()
    llm.eval(ids)
    context = llm.n_tokens

    def step() -> None:
        llm.n_tokens = context  # eval() drops the cache beyond n_tokens first
        llm.eval(ids[-1:])
    return step


def gguf_latency(paths: dict[str, Path], regime: RegimeConfig, warmup: int, repeats: int, vocab_size: int,
                 threads: int | None = None, seed: int = 0, group: int = 6) -> dict[str, float]:
    """Median seconds of one regime unit for each GGUF in `paths`, timed round-robin. At most `group` models are
    loaded at once (13 SmolLM2-sized contexts did not all load on a 23 GB host): the first file ("teacher" if
    there is one) is timed in every group, and each group's times are scaled to its first group's reading."""
    import torch

    ids = torch.randint(0, vocab_size, (regime.seq_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    ref = "teacher" if "teacher" in paths else next(iter(paths))
    others = [name for name in paths if name != ref]
    medians: dict[str, float] = {}
    for start in range(0, max(len(others), 1), group - 1):
        names = [ref, *others[start:start + group - 1]]
        models = {name: load_gguf(paths[name], regime.seq_len + 8, threads) for name in names}
        try:
            runners = {name: gguf_runner(llm, ids, regime.kind, regime.batch_size) for name, llm in models.items()}
            timed = interleaved_latency(runners, warmup, repeats)
        finally:
            for llm in models.values():
                llm.close()
        scale = medians[ref] / timed[ref] if ref in medians else 1.0
        medians.update({name: t * scale for name, t in timed.items() if name not in medians})
    return medians


def as_layers(n_blocks: int, choices: dict[int, dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """{sublayer index (2 * block + 0 attn / 1 mlp): spec} -> per-block {"attn": spec, "mlp": spec}."""
    kinds = ("attn", "mlp")
    return [{k: choices.get(2 * b + i, {"op": "teacher"}) for i, k in enumerate(kinds)} for b in range(n_blocks)]


def _has_attention(choices: dict[int, dict[str, Any]], n_blocks: int) -> bool:
    """Whether some block keeps a real (KV-caching) attention: the teacher's or a smaller one."""
    return any(choices.get(2 * b, {"op": "teacher"})["op"] in ("teacher", "attention") for b in range(n_blocks))


def gguf_measure(model: Any, tokenizer: Any, work: Path, regime: RegimeConfig, warmup: int, repeats: int,
                 quant: str = "f16", threads: int | None = None) -> Callable[[dict[str, dict[int, dict[str, Any]]]], dict[str, float]]:
    """The cost table's timing done in llama.cpp: a function of {variant: {sublayer index: spec}} that writes each
    variant of `model` (the teacher with those sublayers replaced) as a deci GGUF under `work` and returns the
    median seconds of one regime unit of each, timed interleaved (`gguf_latency`)."""
    import copy

    from unast_core.model.modeling_unast import apply_choices, family_of, get_blocks
    from unast_core.report.gguf import export_gguf

    n_blocks = len(get_blocks(model, family_of(model.config)))

    def measure(variants: dict[str, dict[int, dict[str, Any]]]) -> dict[str, float]:
        # llama.cpp cannot run a model without any attention (its KV cache would be empty): such a variant keeps
        # block 0's teacher attention, and so does a helper that replaces its attentions only; block 0's share
        # is then taken out as the helper's saving per block (the table's own additivity assumption).
        anchored = {name for name, c in variants.items() if not _has_attention(c, n_blocks)}
        timed = {name: ({i: spec for i, spec in c.items() if i} if name in anchored else c)
                 for name, c in variants.items()}
        helpers = {f"{name}/attn": {i: spec for i, spec in timed[name].items() if i % 2 == 0} for name in anchored}
        medians = _time(dict(timed, teacher=timed.get("teacher", {}), **helpers))
        for name in anchored:
            block0 = (medians["teacher"] - medians[f"{name}/attn"]) / (n_blocks - 1)
            medians[name] -= block0
        return {name: medians[name] for name in variants}

    def _time(variants: dict[str, dict[int, dict[str, Any]]]) -> dict[str, float]:
        paths = {}
        for i, (name, choices) in enumerate(variants.items()):
            layers = as_layers(n_blocks, choices)
            variant = apply_choices(copy.deepcopy(model), layers)
            paths[name], _ = export_gguf(variant, layers, tokenizer, Path(work) / f"variant-{i}.gguf", quant)
            del variant
        try:
            return gguf_latency(paths, regime, warmup, repeats, model.config.vocab_size, threads)
        finally:
            for path in paths.values():
                path.unlink(missing_ok=True)
    return measure


def as_choices(layers: list[dict[str, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Per-block layers -> {sublayer index: spec} of the replaced sublayers (the inverse of `as_layers`)."""
    return {2 * b + i: layer[kind] for b, layer in enumerate(layers) for i, kind in enumerate(("attn", "mlp"))
            if layer.get(kind, {"op": "teacher"})["op"] != "teacher"}


def gguf_ratios(measure: Callable[[dict[str, dict[int, dict[str, Any]]]], dict[str, float]],
                layer_sets: list[list[dict[str, dict[str, Any]]]]) -> list[float]:
    """Latency of each architecture over the teacher's, timed in one interleaved `measure` (llama.cpp)."""
    timed = measure({"teacher": {}, **{f"arch{k}": as_choices(layers) for k, layers in enumerate(layer_sets)}})
    return [timed[f"arch{k}"] / timed["teacher"] for k in range(len(layer_sets))]
