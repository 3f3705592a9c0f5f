"""Model quality: LM loss / perplexity, KL to the teacher, and the loss terms the finetune trains on."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


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


