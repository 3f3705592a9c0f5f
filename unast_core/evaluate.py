"""Model quality and speed: LM loss / perplexity, KL to the teacher, interleaved latency."""

from __future__ import annotations

import itertools
import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unast_core.config import RegimeConfig


def lm_loss_terms(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy. logits (B, T, V), ids (B, T) -> scalar."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")


def kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Summed KL(teacher || student) over positions, on temperature-softened distributions. (B, T, V) -> scalar."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum()


@torch.inference_mode()
def lm_loss(model: nn.Module, tokens: torch.Tensor, batch_size: int,
            forward: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> float:
    """Mean next-token cross-entropy of `model` on tokens (N, T).

    `forward(ids, row_start) -> logits` lets callers run the model from a cached state (scoring).
    """
    forward = forward or (lambda ids, _start: model(ids, use_cache=False).logits)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        ids = tokens[start:start + batch_size].to(device)
        total += lm_loss_terms(forward(ids, start), ids).item()
        count += ids[:, 1:].numel()
    return total / count


def perplexity(model: nn.Module, tokens: torch.Tensor, batch_size: int) -> float:
    return math.exp(lm_loss(model, tokens, batch_size))


@torch.inference_mode()
def compare_to_teacher(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor, batch_size: int) -> dict[str, float]:
    """One pass over tokens (N, T): both models' mean LM loss and the mean per-token KL(teacher || student)."""
    device = next(student.parameters()).device
    loss_t = loss_s = kl = 0.0
    for start in range(0, len(tokens), batch_size):
        ids = tokens[start:start + batch_size].to(device)
        logits_t, logits_s = teacher(ids, use_cache=False).logits, student(ids, use_cache=False).logits
        loss_t += lm_loss_terms(logits_t, ids).item()
        loss_s += lm_loss_terms(logits_s, ids).item()
        kl += kd_terms(logits_s, logits_t).item()
    predicted = len(tokens) * (tokens.shape[1] - 1)
    return {"teacher_loss": loss_t / predicted, "student_loss": loss_s / predicted, "kl": kl / tokens.numel()}


@torch.inference_mode()
def kl_to_teacher(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor, batch_size: int) -> float:
    """Mean per-token KL(teacher || student) in nats."""
    device = next(student.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        ids = tokens[start:start + batch_size].to(device)
        total += kd_terms(student(ids, use_cache=False).logits, teacher(ids, use_cache=False).logits).item()
        count += ids.numel()
    return total / count


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
