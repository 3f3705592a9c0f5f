"""Stages 6-7: short finetune of each searched architecture, and the final finetune of the winner.

Loss = kd_weight * KL(teacher || student) * T^2 + lm_weight * cross-entropy, Adam with warm-up and
cosine decay from lr_max to lr_min (paper Table 7). Metrics are returned, never logged here; progress
goes through `on_step(step, metrics)`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import nn

from unast_core.config import TrainConfig
from unast_core.train.engine import make_engine
from unast_core.errors import UnastError
from unast_core.train.losses import chunked_distill_loss, kd_terms, lm_loss, lm_loss_terms
from unast_core.train.precision import autocast


class Diverged(UnastError):
    """Training produced a non-finite loss."""


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr_max * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.lr_min + 0.5 * (cfg.lr_max - cfg.lr_min) * (1 + math.cos(math.pi * progress))


def batches(tokens: torch.Tensor, batch_size: int, seed: int):
    """Endless epochs over rows of tokens (N, T), reshuffled per epoch with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(tokens), generator=gen)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield tokens[order[start:start + batch_size]]
        if len(tokens) < batch_size:
            yield tokens


def distill_loss(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, cfg: TrainConfig,
                 full_logits: bool = False) -> torch.Tensor:
    """Per-token loss of one batch (B, T), from chunks of positions (`losses.chunked_distill_loss`): full
    logits of both models for a 262K vocabulary ran the Gemma 3 270M finetune out of memory. The
    full-logits form (`full_logits=True`) is kept as the reference the chunked one is tested and
    benchmarked against."""
    if not full_logits:
        return chunked_distill_loss(student, teacher, ids, cfg.lm_weight, cfg.kd_weight, cfg.temperature)
    logits = student(ids, use_cache=False).logits
    loss = cfg.lm_weight * lm_loss_terms(logits, ids) / ids[:, 1:].numel()
    if cfg.kd_weight > 0:
        with torch.no_grad():
            teacher_logits = teacher(ids, use_cache=False).logits
        kd = kd_terms(logits, teacher_logits, cfg.temperature) * cfg.temperature ** 2 / ids.numel()
        loss = loss + cfg.kd_weight * kd
    return loss


def finetune(student: nn.Module, teacher: nn.Module, train: torch.Tensor, validation: torch.Tensor,
             cfg: TrainConfig, seed: int = 0, eval_batch_size: int = 4,
             on_step: Callable[[int, dict[str, float]], None] | None = None,
             measure_before: bool = True, dtype: str = "float32") -> dict[str, Any]:
    """Train `student` in place on train tokens (N, T); return losses, curve and wall time (the
    validation loss before training is skipped, as None, with `measure_before=False`). The training
    forward passes run under autocast to `dtype` (fp32 master weights); validation runs in fp32."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    val_before = lm_loss(student, validation, eval_batch_size) if measure_before else None
    engine = make_engine(student, cfg) if cfg.steps else None  # no steps: no optimizer (it may have no parameters)
    curve: list[dict[str, float]] = []
    student.train()
    stream = batches(train, cfg.batch_size, seed)
    device = next(student.parameters()).device
    for step in range(cfg.steps):
        lr = cosine_lr(step, cfg)
        engine.set_lr(lr)
        with autocast(dtype, str(device)):
            loss = distill_loss(engine.module, teacher, next(stream).to(device), cfg)
        if not torch.isfinite(loss):
            student.eval()
            raise Diverged(f"training diverged at step {step} (loss {loss.item()}); lower the learning rate")
        engine.step(loss)
        curve.append({"step": step + 1, "loss": loss.item(), "lr": lr})
        if on_step:
            on_step(step + 1, curve[-1])
    student.eval()
    val_after = lm_loss(student, validation, eval_batch_size)
    return {"val_loss_before": val_before, "val_loss": val_after, "steps": cfg.steps, "curve": curve,
            "tokens": cfg.steps * cfg.batch_size * train.shape[1], "engine": cfg.engine, "dtype": dtype, "wall_s": time.perf_counter() - started}
