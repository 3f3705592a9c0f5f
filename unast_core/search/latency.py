"""Every timing procedure, in one place: latency of one unit of the cost regime (a prefill, or a decode
step with a KV cache), timed interleaved against the teacher, the median kept.

Used by the cost table (`search.cost.build_lut`), the architecture check (`measure_ratios`) and the
evaluation (`student_latency`, `latency_vs_teacher`). Timing is only meaningful when nothing else computes
on the host: the tasks that call these hold the host's exclusive timing lock (`tasks.common.timing`).
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from unast_core.config import RegimeConfig
from unast_core.model.adapters import Adapter

def regime_inputs(regime: RegimeConfig, vocab_size: int, device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (regime.batch_size, regime.seq_len), generator=gen).to(device)


def prefill(model: nn.Module, ids: torch.Tensor) -> None:
    """One prefill: the whole prompt, logits of the last position only (what generate() computes)."""
    model(ids, use_cache=False, logits_to_keep=1)


@torch.inference_mode()
def regime_runner(model: nn.Module, ids: torch.Tensor, kind: str) -> Callable[[], None]:
    """A zero-argument callable running one unit of the regime: a prefill of `ids`, or (decode) one new
    token with a KV cache holding `ids` as context (built here, untimed, and cropped back after each step)."""
    if kind == "prefill":
        return lambda: prefill(model, ids)
    cache = model(ids, use_cache=True, logits_to_keep=1).cache
    last = ids[:, -1:]

    def step() -> None:
        model(last, cache=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)
    return step


@torch.no_grad()
def colocate(*modules: nn.Module) -> None:
    """Re-place the CPU weights of `modules` in fresh memory, allocating their tensors alternately (each
    module's in proportion to its size), so that models timed against each other sit in the same memory.

    On a virtual machine the speed of identical weights depends on where they sit: three deep copies of
    SmolLM2-135M, each allocated after the last, ran a prefill at 1.00 / 0.76 / 0.66 of the first one's
    time, while copies whose tensors were allocated alternately ran within 3% of each other. A tensor
    shared between modules is moved once; GPU tensors are left alone."""
    seen: set[int] = set()
    order: list[tuple[float, int, torch.Tensor]] = []
    for rank, module in enumerate(modules):
        tensors = []
        for t in itertools.chain(module.parameters(), module.buffers()):
            if id(t) not in seen and t.device.type == "cpu":
                seen.add(id(t))
                tensors.append(t)
        total, done = sum(t.numel() * t.element_size() for t in tensors) or 1, 0
        for t in tensors:
            order.append((done / total, rank, t))
            done += t.numel() * t.element_size()
    for _, _, t in sorted(order, key=lambda entry: entry[:2]):
        t.data = t.data.clone()


@torch.inference_mode()
def interleaved_latency(variants: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each zero-argument callable, timed round-robin so that machine noise
    (other processes, frequency changes) hits every variant alike."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            _sync()
            start = time.perf_counter()
            variants[name]()
            _sync()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def latency_vs_teacher(student: nn.Module, teacher: nn.Module, regime: RegimeConfig, warmup: int,
                       repeats: int) -> dict[str, float]:
    device = next(teacher.parameters()).device
    ids = regime_inputs(regime, teacher.config.vocab_size, device)
    colocate(teacher, student)
    medians = interleaved_latency({"teacher": regime_runner(teacher, ids, regime.kind),
                                   "student": regime_runner(student, ids, regime.kind)}, warmup, repeats)
    return {"teacher_s": medians["teacher"], "student_s": medians["student"],
            "latency_ratio": medians["student"] / medians["teacher"]}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# Part of every stored latency's key: tables and measurements taken before the weights of timed variants
# were colocated (see `evaluate.colocate`) are measured afresh instead of reused.
MEASUREMENT = "colocated-1"


def swapped_runs(adapter: Adapter, ids: torch.Tensor, variants: dict[str, dict[int, dict[str, torch.nn.Module]]],
                  kind: str) -> dict[str, Callable[[], None]]:
    """Zero-argument callables, one per variant: one unit of the regime (prefill, or a decode step) of the
    adapter's model with the variant's prebuilt {sublayer: {attribute: module}} swapped in. Any KV cache is
    built once, outside the timed calls, and the model's and the replacements' weights are re-placed side
    by side in memory (`colocate`) so that no variant is timed on faster memory than another."""
    colocate(adapter.model, *(torch.nn.ModuleList(m for _, parts in sorted(built.items()) for m in parts.values())
                              for built in variants.values()))

    def runner(built: dict[int, dict[str, torch.nn.Module]]) -> Callable[[], None]:
        with adapter.installed(built):
            step = regime_runner(adapter.model, ids, kind)

        def run() -> None:
            with adapter.installed(built):
                step()
        return run
    return {name: runner(built) for name, built in variants.items()}


def built_variants(adapter: Adapter, choices: dict[int, dict[str, Any]]) -> dict[int, dict[str, torch.nn.Module]]:
    return {index: adapter.build(index, spec) for index, spec in choices.items()}


def measure_ratios(model: torch.nn.Module, layer_sets: list[list[dict[str, Any]]], regime: RegimeConfig, warmup: int,
                   repeats: int) -> list[float]:
    """Measured latency of each architecture (the teacher with its sublayers swapped) over the teacher's,
    all timed interleaved in one loop: the check that a prediction from the table holds."""
    adapter = Adapter(model)
    ids = regime_inputs(regime, model.config.vocab_size, next(model.parameters()).device)

    def choices(layers: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        return {s.index: layers[s.block][s.kind] for s in adapter.sublayers if layers[s.block][s.kind]["op"] != "teacher"}

    variants = {"teacher": {}, **{f"arch{k}": built_variants(adapter, choices(layers)) for k, layers in enumerate(layer_sets)}}
    medians = interleaved_latency(swapped_runs(adapter, ids, variants, regime.kind), warmup, repeats)
    return [medians[f"arch{k}"] / medians["teacher"] for k in range(len(layer_sets))]


def student_latency(teacher: torch.nn.Module, student: torch.nn.Module, layers: list[dict[str, Any]],
                    regime: RegimeConfig, warmup: int, repeats: int) -> dict[str, float]:
    """A built student's latency against the teacher's, by the procedure of the table and the architecture
    check: the student's own (trained) modules of every replaced sublayer installed in the teacher, timed
    interleaved with the teacher, weights colocated. Kept sublayers cost what the teacher's do (same shapes),
    so this is the student's computation; it leaves out where a separately built model's memory happens to
    sit, which on a virtual machine moved readings by up to 0.1 (see `evaluate.colocate`)."""
    medians = students_latency(teacher, {"student": (student, layers)}, regime, warmup, repeats)
    return {"teacher_s": medians["teacher"], "student_s": medians["student"],
            "latency_ratio": medians["student"] / medians["teacher"]}


def students_latency(teacher: torch.nn.Module, students: dict[str, tuple[torch.nn.Module, list[dict[str, Any]]]],
                     regime: RegimeConfig, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of the teacher ("teacher") and of each student {name: (its decoder, its layers)}, all
    timed in one interleaved loop as in `student_latency`: the side-by-side reading of several models."""
    if "teacher" in students:
        raise ValueError("'teacher' names the reference timing; rename that student")
    adapter = Adapter(teacher)
    variants: dict[str, dict[int, dict[str, torch.nn.Module]]] = {"teacher": {}}
    for name, (student, layers) in students.items():
        own = Adapter(student)
        variants[name] = {s.index: own.modules_of(own.sublayers[s.index]) for s in adapter.sublayers
                          if layers[s.block][s.kind]["op"] != "teacher"}
    ids = regime_inputs(regime, teacher.config.vocab_size, next(teacher.parameters()).device)
    return interleaved_latency(swapped_runs(adapter, ids, variants, regime.kind), warmup, repeats)




def resolve_device(name: str) -> str:
    """`auto`: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
