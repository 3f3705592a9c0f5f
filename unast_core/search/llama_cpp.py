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
                 threads: int | None = None, seed: int = 0) -> dict[str, float]:
    """Median seconds of one regime unit for each GGUF in `paths`, timed round-robin."""
    import torch

    ids = torch.randint(0, vocab_size, (regime.seq_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    models = {name: load_gguf(p, regime.seq_len + 8, threads) for name, p in paths.items()}
    try:
        runners = {name: gguf_runner(llm, ids, regime.kind, regime.batch_size) for name, llm in models.items()}
        return interleaved_latency(runners, warmup, repeats)
    finally:
        for llm in models.values():
            llm.close()
