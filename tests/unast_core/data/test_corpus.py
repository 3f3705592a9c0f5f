"""Tests for unast_core.data.corpus: loading, packing, leak-free splitting and fingerprints (no downloads)."""

from __future__ import annotations

import json
import string

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from unast_core.config import DataConfig
from unast_core.data.corpus import SPLITS, build_outside, build_splits, data_fingerprint, load_texts, outside_fingerprint, pack
from unast_core.errors import UnastError


def _docs(**fields) -> DataConfig:
    """The docs alone, split by these tests themselves: no Wikipedia and no teacher samples mixed in."""
    return DataConfig(**{"source": "cpython-docs", "generated_fraction": 0.0, **fields})


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _letter_docs(tmp_path, n_docs=52, seed=0):
    """One document per letter, made only of that letter, with varied lengths: every token names its document."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(20, 200, (n_docs,), generator=gen).tolist()
    letters = (string.ascii_uppercase + string.ascii_lowercase)[:n_docs]
    return _write_jsonl(tmp_path / "letters.jsonl", [{"text": c * n} for c, n in zip(letters, lengths)])


# --- load_texts ---------------------------------------------------------------------------------


def test_cpython_docs_loads_deterministically():
    from pydoc_data.topics import topics

    texts = load_texts("cpython-docs")
    assert len(texts) > 50 and all(isinstance(t, str) and t.strip() for t in texts)
    assert texts == load_texts("cpython-docs")
    assert texts[0] == topics[sorted(topics)[0]]


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\nsecond line\n\n  \n\nthird\n\n\n  fourth  \n", encoding="utf-8")
    assert load_texts(str(path)) == ["first line\nsecond line", "third", "fourth"]


def test_jsonl_loads_field_and_skips_blank_lines(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"content": "alpha", "id": 1}\n\n{"content": "beta", "id": 2}\n', encoding="utf-8")
    assert load_texts(str(path), text_field="content") == ["alpha", "beta"]


def test_parquet_loads_column(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"body": ["one", "two", None, "three"], "n": [1, 2, 3, 4]}), path)
    assert load_texts(str(path), text_field="body") == ["one", "two", "three"]


def test_missing_text_field_names_available_fields(tmp_path):
    jsonl = _write_jsonl(tmp_path / "c.jsonl", [{"content": "x", "meta": 1}])
    with pytest.raises(UnastError, match="no field 'text'.*content, meta"):
        load_texts(str(jsonl))
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"]}), parquet)
    with pytest.raises(UnastError, match="available: body"):
        load_texts(str(parquet))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(UnastError, match="does not exist"):
        load_texts(str(tmp_path / "nope.txt"))
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UnastError, match="unsupported"):
        load_texts(str(csv))


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(UnastError, match="line 2"):
        load_texts(str(path))


def test_unknown_hf_dataset_offline_raises(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The libraries read these variables at import time, which may already have happened.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UnastError, match="could not load HF dataset 'no-such-user/no-such-dataset'") as info:
        load_texts("no-such-user/no-such-dataset")
    message = str(info.value)
    assert "cpython-docs" in message and "\n" not in message


# --- pack -----------------------------------------------------------------------------------------


def test_pack_with_eos():
    rows = pack([[1, 2, 3], [4, 5]], seq_len=2, eos_id=9)
    assert rows.dtype == torch.long
    assert rows.tolist() == [[1, 2], [3, 9], [4, 5]]  # the trailing eos is the dropped remainder


def test_pack_without_eos_and_empty():
    assert pack([[1, 2, 3], [4, 5]], seq_len=2, eos_id=None).tolist() == [[1, 2], [3, 4]]
    assert pack([], seq_len=4, eos_id=0).shape == (0, 4)
    assert pack([[1, 2]], seq_len=4, eos_id=None).shape == (0, 4)


# --- build_splits ---------------------------------------------------------------------------------


def test_build_splits_cpython_shapes_and_determinism(tokenizer):
    cfg = _docs(seq_len=64, calibration_seqs=8, validation_seqs=4, test_seqs=4)
    splits, again = build_splits(tokenizer, cfg), build_splits(tokenizer, cfg)
    assert tuple(splits) == SPLITS
    for name in SPLITS:
        assert splits[name].shape == (getattr(cfg, f"{name}_seqs"), 64)
        assert splits[name].dtype == torch.long
        assert torch.equal(splits[name], again[name])
    other = build_splits(tokenizer, cfg.model_copy(update={"seed": 1}))
    assert not torch.equal(splits["test"], other["test"])


def test_build_splits_default_config(tokenizer):
    cfg = _docs()
    splits = build_splits(tokenizer, cfg)
    assert {name: tuple(t.shape) for name, t in splits.items()} == {
        name: (getattr(cfg, f"{name}_seqs"), cfg.seq_len) for name in SPLITS}
    assert build_outside(tokenizer, cfg, "heldout").shape == (cfg.heldout_seqs, cfg.seq_len)


def test_splits_share_no_rows(tokenizer):
    splits = build_splits(tokenizer, _docs(seq_len=32, calibration_seqs=16, validation_seqs=8, test_seqs=8))
    rows = {name: {tuple(r) for r in splits[name].tolist()} for name in SPLITS}
    assert not rows["calibration"] & rows["validation"]
    assert not rows["calibration"] & rows["test"]
    assert not rows["validation"] & rows["test"]


def test_splits_are_disjoint_at_document_level(tokenizer, tmp_path):
    path = _letter_docs(tmp_path)
    cfg = _docs(source=str(path), seq_len=16, calibration_seqs=12, validation_seqs=4, test_seqs=4, seed=3)
    splits = build_splits(tokenizer, cfg)
    eos = tokenizer.eos_token_id
    docs = {name: set(splits[name].flatten().tolist()) - {eos} for name in SPLITS}
    assert all(docs.values())
    assert not docs["calibration"] & docs["validation"]
    assert not docs["calibration"] & docs["test"]
    assert not docs["validation"] & docs["test"]


def test_empty_data_raises(tokenizer, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(UnastError, match="is empty"):
        build_splits(tokenizer, _docs(source=str(blank)))
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}, {"text": "  "}])
    with pytest.raises(UnastError, match="is empty"):
        build_splits(tokenizer, _docs(source=str(empty)))


def test_too_small_data_reports_numbers(tokenizer, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("x" * 49 + "\n\n" + "y" * 49, encoding="utf-8")  # 2 docs x (49 + eos) = 100 tokens
    cfg = _docs(source=str(path), seq_len=16, calibration_seqs=8, validation_seqs=4, test_seqs=4)
    with pytest.raises(UnastError, match=r"need 256 tokens.*only 100 are available.*seq_len") as info:
        build_splits(tokenizer, cfg)
    assert "\n" not in str(info.value)


def test_whole_document_assignment_can_exhaust_data(tokenizer, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("z" * 99, encoding="utf-8")  # a single document of 100 tokens: the test split takes it all
    cfg = _docs(source=str(path), seq_len=10, calibration_seqs=1, validation_seqs=1, test_seqs=1)
    with pytest.raises(UnastError, match="lost at split boundaries.*validation split got 0 of 1"):
        build_splits(tokenizer, cfg)


def test_tokenizer_without_eos(tokenizer, tmp_path):
    path = _letter_docs(tmp_path)
    no_eos = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    assert no_eos.eos_token_id is None
    cfg = _docs(source=str(path), seq_len=8, calibration_seqs=4, validation_seqs=2, test_seqs=2)
    splits = build_splits(no_eos, cfg)
    assert splits["calibration"].shape == (4, 8)


# --- data_fingerprint -----------------------------------------------------------------------------


def test_fingerprint_tracks_settings_tokenizer_and_content(tmp_path):
    base = _docs()
    key = data_fingerprint(base, "tok-a")
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == data_fingerprint(_docs(), "tok-a")
    changed = [
        data_fingerprint(base.model_copy(update={"seq_len": 128}), "tok-a"),
        data_fingerprint(base.model_copy(update={"seed": 1}), "tok-a"),
        data_fingerprint(base.model_copy(update={"test_seqs": 4}), "tok-a"),
        data_fingerprint(base, "tok-b"),
    ]
    assert len({key, *changed}) == 5
    # text outside the calibration data has keys of its own and leaves this one alone
    outside = [base.model_copy(update=u) for u in ({"heldout": None}, {"heldout_seqs": 4}, {"select_on": "enwiki"})]
    assert {data_fingerprint(cfg, "tok-a") for cfg in outside} == {key}
    held = outside_fingerprint(base, "heldout", "tok-a")
    assert held != outside_fingerprint(outside[1], "heldout", "tok-a")
    assert held != outside_fingerprint(base.model_copy(update={"seq_len": 128}), "heldout", "tok-a")
    assert held != outside_fingerprint(base, "heldout", "tok-b")
    assert held == outside_fingerprint(base.model_copy(update={"calibration_seqs": 4}), "heldout", "tok-a")

    path = tmp_path / "corpus.txt"
    path.write_text("hello", encoding="utf-8")
    cfg = _docs(source=str(path))
    before = data_fingerprint(cfg, "tok-a")
    path.write_text("hello again", encoding="utf-8")
    assert data_fingerprint(cfg, "tok-a") != before


def test_text_that_is_not_utf8_is_refused(tmp_path):
    from unast_core.data.corpus import check_source

    noise = tmp_path / "noise.txt"
    noise.write_bytes("fine text\n\n".encode() + bytes([0xC3, 0x28]) + b" more")
    for read in (lambda: load_texts(str(noise)), lambda: check_source(str(noise))):
        with pytest.raises(UnastError, match=r"is not UTF-8 text \(invalid byte 0xc3 at offset 11\)"):
            read()
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(UnastError, match="line 2 is not UTF-8"):
        load_texts(str(rows))


def test_check_source_reads_only_the_start(tmp_path):
    """The pre-flight check: a missing file, a missing field and a bad suffix stop at once; a multi-byte
    character cut at the end of the part it reads is not an error; built-in and HF names pass."""
    from unast_core.data.corpus import check_source

    with pytest.raises(UnastError, match="does not exist; check data.heldout"):
        check_source(str(tmp_path / "gone.txt"), setting="data.heldout")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(UnastError, match=r"has no field 'text' \(available: body\)"):
        check_source(str(rows))
    check_source(str(rows), text_field="body")
    (tmp_path / "t.csv").write_text("a,b\n")
    with pytest.raises(UnastError, match="unsupported data file"):
        check_source(str(tmp_path / "t.csv"))
    long = tmp_path / "long.txt"
    long.write_text("é" * 40000, encoding="utf-8")  # 80000 bytes: the first 64 KiB end on a whole character
    check_source(str(long))
    long.write_bytes(b"a" + "é".encode() * 40000)  # ... and here in the middle of one
    check_source(str(long))
    for name in ("cpython-docs", "lee-news", "some-org/some-dataset"):
        check_source(name)
