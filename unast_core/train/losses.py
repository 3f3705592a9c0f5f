"""Model quality: LM loss / perplexity, KL to the teacher, and the loss terms the finetune trains on.

Full-vocabulary logits are the memory of a large-vocabulary model: Gemma 3's 262K tokens make one batch
of 4 x 256 positions 1 GB of fp32 logits per model, and the loss, its softmaxes and their gradients hold
several such buffers at once (the final finetune of Gemma 3 270M was OOM-killed at 23.4 GB). So the
losses here run each model's body once, keep its final hidden states (small), and turn them into logits
a chunk of tokens at a time; in training each chunk is checkpointed, so its logits are recomputed in the
backward pass instead of being held from the forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from unast_core.errors import UnastError

# fp32 logits per chunk: 2**26 floats = 256 MB, i.e. 256 tokens of a 262K vocabulary (1365 of SmolLM2's 49K).
LOGITS_PER_CHUNK = 2 ** 26
IGNORE = -100  # cross-entropy target of each row's last position (there is no next token)


@dataclass(frozen=True)
class Split:
    """A causal LM as its body (ids -> final, normed hidden states) and head (hidden states -> logits),
    which together give exactly `model(ids).logits`."""

    body: nn.Module
    head: nn.Module
    softcap: float | None  # Gemma 2's final_logit_softcapping: logits = cap * tanh(logits / cap)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return self.body(input_ids=ids, use_cache=False).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap

    @property
    def vocab(self) -> int:
        return self.head.weight.shape[0]


def body_and_head(model: nn.Module) -> Split:
    """Split an HF causal LM, a UNAST student (which wraps one) or a DeepSpeed engine (which wraps either):
    the body is the innermost `base_model`, the head the output embeddings."""
    if not isinstance(model, PreTrainedModel) and isinstance(getattr(model, "module", None), PreTrainedModel):
        model = model.module  # a DeepSpeed engine
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    body = model
    while (base := getattr(body, "base_model", body)) is not body:
        body = base
    if head is None or body is model:
        raise UnastError(f"{type(model).__name__} has no separate LM head; use a causal LM of a supported family")
    return Split(body, head, getattr(body.config, "final_logit_softcapping", None))


def _targets(ids: torch.Tensor) -> torch.Tensor:
    """Next token of every position (B * T,), IGNORE on each row's last, so positions chunk freely."""
    return torch.cat([ids[:, 1:], ids.new_full((len(ids), 1), IGNORE)], dim=1).flatten()


def _chunks(n_tokens: int, vocab: int, chunk: int | None) -> list[slice]:
    step = chunk or max(1, LOGITS_PER_CHUNK // vocab)
    return [slice(start, start + step) for start in range(0, n_tokens, step)]


def lm_loss_terms(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy. logits (B, T, V), ids (B, T) -> scalar."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")


def kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Summed KL(teacher || student) over positions, on temperature-softened distributions. (B, T, V) -> scalar."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum()


class _ChunkLoss(torch.autograd.Function):
    """lm_scale * cross-entropy + kd_scale * KL(teacher || student) of one chunk's logits (N, V), summed,
    with its gradient worked out in the forward: lm_scale * (softmax(z) - onehot(target)) + kd_scale / T *
    (softmax(z / T) - p_teacher). Autograd's graph of the same expression keeps about six vocabulary-wide
    buffers per chunk (two log-softmaxes, the teacher's probabilities, their gradients); this keeps one,
    and most work in place. The teacher's logits are made here too, so they live only inside the call."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, h_t: torch.Tensor | None, target: torch.Tensor, teacher: Split | None,
                lm_scale: float, kd_scale: float, temperature: float) -> torch.Tensor:
        z = logits.float()
        valid = (target != IGNORE)[:, None]
        index = target.clamp(min=0)[:, None]
        loss, grad = z.new_zeros(()), None
        logp = F.log_softmax(z, dim=-1) if lm_scale or temperature == 1 else None
        if lm_scale:
            loss = loss - lm_scale * (logp.gather(1, index) * valid).sum()
        if teacher is not None:
            t = F.log_softmax(teacher.logits(h_t).float() / temperature, dim=-1)
            s = logp if temperature == 1 else F.log_softmax(z / temperature, dim=-1)
            p_t = t.exp()
            loss = loss + kd_scale * t.sub_(s).mul_(p_t).sum()
            del t
            grad = (s.exp() if s is logp else s.exp_()).sub_(p_t).mul_(kd_scale / temperature)
            del p_t, s
        if lm_scale:
            soft = logp.exp_().mul_(valid)  # softmax(z) - onehot(target); rows without a target give nothing
            soft.scatter_add_(1, index, -valid.to(soft.dtype)).mul_(lm_scale)
            grad = soft if grad is None else grad.add_(soft)
        ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (None if grad is None else (grad * grad_loss).to(ctx.dtype)), None, None, None, None, None, None


def _chunk_loss(h_s: torch.Tensor, h_t: torch.Tensor | None, target: torch.Tensor, student: Split,
                teacher: Split | None, lm_scale: float, kd_scale: float, temperature: float) -> torch.Tensor:
    """lm_scale * cross-entropy + kd_scale * KL(teacher || student), summed over one chunk of positions."""
    return _ChunkLoss.apply(student.logits(h_s), h_t, target, teacher, lm_scale, kd_scale, temperature)


def chunked_distill_loss(student: nn.Module, teacher: nn.Module | None, ids: torch.Tensor, lm_weight: float,
                         kd_weight: float, temperature: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """Per-token training loss of one batch (B, T): lm_weight * mean cross-entropy + kd_weight * T^2 *
    mean KL(teacher || student), equal to the full-logits `lm_loss_terms` / `kd_terms` form, with at most
    one chunk's logits (`chunk` tokens, default LOGITS_PER_CHUNK / vocab) alive at a time."""
    split_s = body_and_head(student)
    use_teacher = kd_weight > 0 and teacher is not None
    split_t = body_and_head(teacher) if use_teacher else None
    h_s = split_s.hidden(ids).flatten(0, 1)
    h_t = None
    if split_t is not None:
        with torch.no_grad():
            h_t = split_t.hidden(ids).flatten(0, 1)
    target = _targets(ids)
    loss_of = partial(_chunk_loss, student=split_s, teacher=split_t, lm_scale=lm_weight / ids[:, 1:].numel(),
                   kd_scale=kd_weight * temperature ** 2 / ids.numel(), temperature=temperature)
    total = h_s.new_zeros((), dtype=torch.float32)
    for part in _chunks(len(h_s), split_s.vocab, chunk):
        args = (h_s[part], None if h_t is None else h_t[part], target[part])
        # checkpointed: the chunk's logits are recomputed in backward rather than held from the forward
        total = total + (checkpoint(loss_of, *args, use_reentrant=False) if h_s.requires_grad else loss_of(*args))
    return total


@torch.inference_mode()
def _summed(student: nn.Module | None, teacher: nn.Module | None, ids: torch.Tensor,
            chunk: int | None = None) -> dict[str, float]:
    """Summed cross-entropy of each given model ("student", "teacher") and, with both, summed
    KL(teacher || student), over one batch (B, T), a chunk of positions' logits at a time."""
    splits = {name: body_and_head(m) for name, m in (("student", student), ("teacher", teacher)) if m is not None}
    hidden = {name: split.hidden(ids).flatten(0, 1) for name, split in splits.items()}
    target = _targets(ids)
    sums = dict.fromkeys([*splits, *(["kl"] if len(splits) == 2 else [])], 0.0)
    for part in _chunks(len(target), next(iter(splits.values())).vocab, chunk):
        logits = {name: split.logits(hidden[name][part]).float() for name, split in splits.items()}
        for name, value in logits.items():
            sums[name] += F.cross_entropy(value, target[part], ignore_index=IGNORE, reduction="sum").item()
        if "kl" in sums:
            sums["kl"] += kd_terms(logits["student"], logits["teacher"]).item()
    return sums


@torch.inference_mode()
def lm_loss(model: nn.Module, tokens: torch.Tensor, batch_size: int,
            forward: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> float:
    """Mean next-token cross-entropy of `model` on tokens (N, T).

    `forward(ids, row_start) -> logits` lets callers run the model from a cached state (scoring); without
    it the loss is taken a chunk of positions at a time (no full logits held).
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        ids = tokens[start:start + batch_size].to(device)
        total += lm_loss_terms(forward(ids, start), ids).item() if forward else _summed(model, None, ids)["student"]
        count += ids[:, 1:].numel()
    return total / count


def perplexity(model: nn.Module, tokens: torch.Tensor, batch_size: int) -> float:
    return math.exp(lm_loss(model, tokens, batch_size))


def compare_to_teacher(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor, batch_size: int) -> dict[str, float]:
    """One pass over tokens (N, T): both models' mean LM loss and the mean per-token KL(teacher || student)."""
    device = next(student.parameters()).device
    loss_t = loss_s = kl = 0.0
    for start in range(0, len(tokens), batch_size):
        sums = _summed(student, teacher, tokens[start:start + batch_size].to(device))
        loss_t, loss_s, kl = loss_t + sums["teacher"], loss_s + sums["student"], kl + sums["kl"]
    predicted = len(tokens) * (tokens.shape[1] - 1)
    return {"teacher_loss": loss_t / predicted, "student_loss": loss_s / predicted, "kl": kl / tokens.numel()}


def kl_to_teacher(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor, batch_size: int) -> float:
    """Mean per-token KL(teacher || student) in nats."""
    return compare_to_teacher(student, teacher, tokens, batch_size)["kl"]
