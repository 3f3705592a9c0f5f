"""Text sampled from the teacher: calibration data from the distribution the student has to match.

The teacher writes from its beginning-of-text token with temperature and nucleus (top-p) sampling, a
seeded generator and no end-of-text (each row is `seq_len` tokens of its prose). With `start="random-token"`
the token after BOS is drawn uniformly from the non-special vocabulary (the data-free distillation of
LLM-QAT): each row then opens somewhere else, rather than where the teacher most likes to begin. Rows are
cached in the run store under a key of every setting that shapes them (`generated_key`), so a rerun samples
nothing.
"""

from __future__ import annotations

from typing import Callable

import torch

from unast_core.store import content_key
from unast_core.train.precision import deployed

_VERSION = 2  # bump when the sampling procedure changes (2: batches of 64 rows)


STARTS = ("bos", "random-token")


def generated_key(rows: int, seq_len: int, temperature: float, top_p: float, seed: int, dtype: str,
                  start: str = "bos") -> str:
    return content_key("generated", _VERSION, rows, seq_len, temperature, top_p, seed, dtype, start)


def _start_token(tokenizer) -> int:
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return token
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start sampling from")


def _openers(tokenizer, vocab_size: int) -> torch.Tensor:
    """Token ids a row may open with after BOS: every id both the tokenizer and the model have (an embedding
    table is often padded past the tokenizer), less the tokenizer's special ones."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    allowed = [i for i in range(min(len(tokenizer), vocab_size)) if i not in special]
    if not allowed:
        raise ValueError("the vocabulary has no ordinary token to start a sample from")
    return torch.tensor(allowed, dtype=torch.long)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits outside the smallest set of tokens whose probability reaches top_p set to -inf."""
    ordered, index = logits.sort(dim=-1, descending=True)
    mass = ordered.softmax(-1).cumsum(-1)
    drop = mass - ordered.softmax(-1) >= top_p  # a token is kept if the mass before it is below top_p
    return logits.scatter(-1, index, ordered.masked_fill(drop, float("-inf")))


@torch.inference_mode()
def sample_rows(model: torch.nn.Module, tokenizer, rows: int, seq_len: int, temperature: float = 1.0,
                top_p: float = 0.95, seed: int = 0, dtype: str = "float32", batch_size: int = 64,
                on_batch: Callable[[int, int], None] | None = None, start: str = "bos") -> torch.Tensor:
    """LongTensor (rows, seq_len) of teacher samples: token 0 is the start token, the rest are sampled
    (with start="random-token", token 1 is drawn uniformly from the ordinary vocabulary)."""
    if start not in STARTS:
        raise ValueError(f"unknown sampling start {start!r}: use one of {', '.join(STARTS)}")
    with deployed(dtype, model) as (cast,):  # a cast copy: autocast would cast every weight at every step
        return _sample(cast, tokenizer, rows, seq_len, temperature, top_p, seed, batch_size, on_batch, start)


def _sample(model: torch.nn.Module, tokenizer, rows: int, seq_len: int, temperature: float, top_p: float, seed: int,
            batch_size: int, on_batch: Callable[[int, int], None] | None, start: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    bos, banned = _start_token(tokenizer), tokenizer.eos_token_id
    device = next(model.parameters()).device
    openers = _openers(tokenizer, model.config.vocab_size) if start == "random-token" else None
    out = []
    for first in range(0, rows, batch_size):
        ids = torch.full((min(batch_size, rows - first), 1), bos, dtype=torch.long, device=device)
        if openers is not None:
            pick = torch.randint(len(openers), (len(ids),), generator=gen)
            ids = torch.cat([ids, openers[pick].unsqueeze(1).to(device)], dim=1)
        cache, step_ids = None, ids
        for _ in range(seq_len - ids.shape[1]):
            result = model(step_ids, cache=cache, use_cache=True)
            cache, logits = result.cache, result.logits[:, -1].float() / temperature
            if banned is not None:
                logits[:, banned] = float("-inf")
            probs = _top_p_filter(logits, top_p).softmax(-1)
            step_ids = torch.multinomial(probs.cpu(), 1, generator=gen).to(device)
            ids = torch.cat([ids, step_ids], dim=1)
        out.append(ids.cpu())
        if on_batch:
            on_batch(len(out), -(-rows // batch_size))
    return torch.cat(out)


def interleave(docs: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Docs rows and generated rows spread evenly in one order, so that every prefix (distillation takes the
    first rows of calibration, scoring the first of validation) holds both in proportion."""
    n = len(docs) + len(generated)
    is_generated = [(k + 1) * len(generated) // n > k * len(generated) // n for k in range(n)]
    docs_iter, gen_iter = iter(docs), iter(generated)
    return torch.stack([next(gen_iter) if flag else next(docs_iter) for flag in is_generated])
