"""Teacher-sampled calibration text: sampling, the cache key, mixing into the splits (no downloads)."""

import pytest
import torch

from unast_core.config import DataConfig
from unast_core.data.corpus import build_splits, generated_rows
from unast_core.data.generated import _top_p_filter, generated_key, interleave, sample_rows
from unast_core.model.teacher import tiny_random_teacher


def test_samples_are_seeded_full_length_and_never_end():
    teacher = tiny_random_teacher()
    rows = sample_rows(teacher.model, teacher.tokenizer, 3, 12, seed=0, batch_size=2)
    assert rows.shape == (3, 12) and rows.dtype == torch.long
    assert (rows[:, 0] == teacher.tokenizer.eos_token_id).all()  # the byte tokenizer has no BOS: start at EOS
    assert not (rows[:, 1:] == teacher.tokenizer.eos_token_id).any()  # EOS is never sampled
    assert torch.equal(rows, sample_rows(teacher.model, teacher.tokenizer, 3, 12, seed=0, batch_size=2))
    assert not torch.equal(rows, sample_rows(teacher.model, teacher.tokenizer, 3, 12, seed=1, batch_size=2))


def test_random_start_opens_each_row_with_an_ordinary_token():
    teacher = tiny_random_teacher()
    tok = teacher.tokenizer
    rows = sample_rows(teacher.model, tok, 32, 6, seed=0, batch_size=8, start="random-token")
    assert rows.shape == (32, 6) and (rows[:, 0] == tok.eos_token_id).all()
    openers = set(rows[:, 1].tolist())
    assert not openers & set(tok.all_special_ids) and max(openers) < len(tok)
    assert len(openers) >= 16  # 32 uniform draws: the openers vary, where BOS-started rows share one prefix
    assert torch.equal(rows, sample_rows(teacher.model, tok, 32, 6, seed=0, batch_size=8, start="random-token"))
    bos = sample_rows(teacher.model, tok, 32, 6, seed=0, batch_size=8)
    assert not torch.equal(rows, bos)


def test_an_unknown_start_is_refused():
    teacher = tiny_random_teacher()
    with pytest.raises(ValueError, match="bos, random-token"):
        sample_rows(teacher.model, teacher.tokenizer, 1, 4, start="middle")


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(_top_p_filter(logits, 1.0)).all()
    assert torch.isfinite(_top_p_filter(logits, 0.01)).sum() == 1  # the most likely token always stays


def test_every_setting_changes_the_key():
    base = dict(rows=68, seq_len=256, temperature=1.0, top_p=0.95, seed=0, dtype="bfloat16")
    keys = {generated_key(**base)} | {generated_key(**{**base, k: v}) for k, v in
                                     [("rows", 69), ("seq_len", 128), ("temperature", 0.8), ("top_p", 0.9),
                                      ("seed", 1), ("dtype", "float32"), ("start", "random-token")]}
    assert len(keys) == 8 and generated_key(**base) == generated_key(**base)


def test_interleave_spreads_generated_rows_evenly():
    docs, gen = torch.zeros(6, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long)
    mixed = interleave(docs, gen)[:, 0].tolist()
    assert mixed == [0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert interleave(docs, gen[:0]).equal(docs)


def test_splits_take_the_configured_share_of_generated_rows():
    teacher = tiny_random_teacher()
    cfg = DataConfig(seq_len=32, calibration_seqs=8, validation_seqs=4, test_seqs=4, generated_fraction=0.5,
                     heldout=None)
    counts = generated_rows(cfg)
    assert counts == {"calibration": 4, "validation": 2, "test": 0}
    generated = torch.full((6, 32), 7, dtype=torch.long)  # recognisable rows
    splits = build_splits(teacher.tokenizer, cfg, generated)
    for split, n in counts.items():
        assert splits[split].shape == (getattr(cfg, f"{split}_seqs"), 32)
        assert sum(bool((row == 7).all()) for row in splits[split]) == n
    assert sum(bool((row == 7).all()) for row in splits["calibration"][:4]) == 2  # a prefix holds both
