"""Select's own text (data.select_on): Wikipedia markup reduced to paragraphs, its split and its key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.conftest import STAND_IN_WIKI
from unast_core.config import DataConfig
from unast_core.data.corpus import build_outside, build_splits, load_texts, outside_fingerprint, outside_splits
from unast_core.data.heldout import wiki_articles, wiki_plain_text
from unast_core.errors import UnastError

ARTICLE = """{{Infobox river|name=Test}}
[[File:River.jpg|thumb|A bend of the river in spring]]
The '''Test''' is a [[river]] in [[Hampshire|southern England]] that flows into the sea near Southampton.<ref>{{cite book|title=Rivers}} A long citation that must not survive.</ref>

== Course ==
It rises near Ashe and runs south through chalk downs, fed by many small springs along the way.
{| class="wikitable"
| Length || 64 km of water in the table
|}
Too short a line.
[[Category:Rivers of Hampshire]]
"""


def test_wiki_plain_text_keeps_the_prose_only():
    text = wiki_plain_text(ARTICLE)
    assert text.split("\n\n") == [
        "The Test is a river in southern England that flows into the sea near Southampton.",
        "It rises near Ashe and runs south through chalk downs, fed by many small springs along the way.",
    ]


def _page(title: str, ns: int, body: str, redirect: bool = False) -> str:
    marker = '<redirect title="X" />' if redirect else ""
    return f"<page><title>{title}</title><ns>{ns}</ns>{marker}<revision><text>{body}</text></revision></page>"


def test_wiki_articles_reads_main_namespace_pages_in_order():
    prose = "One two three four five six seven eight nine words here."
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
           + _page("A", 0, prose) + _page("Talk:A", 1, prose) + _page("B", 0, "#REDIRECT [[A]]", redirect=True)
           + _page("C", 0, "Short.") + _page("D", 0, "Second " + prose) + "</mediawiki>")
    assert wiki_articles(xml.encode()) == [prose, "Second " + prose]


def test_select_split_comes_from_select_on(tokenizer):
    cfg = DataConfig(source="cpython-docs", generated_fraction=0.0, seq_len=32, calibration_seqs=8, validation_seqs=4,
                     test_seqs=4, heldout_seqs=4, select_on="enwiki", select_on_seqs=6)
    assert outside_splits(cfg) == ["heldout", "select"] and "select" not in build_splits(tokenizer, cfg)
    rows = build_outside(tokenizer, cfg, "select")
    assert rows.shape == (6, 32)
    wiki = set(tokenizer("".join(STAND_IN_WIKI), add_special_tokens=False)["input_ids"])
    assert set(rows.flatten().tolist()) - {tokenizer.eos_token_id} <= wiki
    assert outside_splits(cfg.model_copy(update={"select_on": None, "heldout": None})) == []
    assert load_texts("enwiki") == STAND_IN_WIKI
    with pytest.raises(UnastError, match="data.select_on 'enwiki' holds only .* lower data.select_on_seqs"):
        build_outside(tokenizer, cfg.model_copy(update={"select_on_seqs": 10_000}), "select")


@pytest.mark.parametrize("same", ["cpython-docs", "lee-news"])
def test_select_on_must_be_a_third_domain(same):
    with pytest.raises(ValidationError, match="data.select_on must be a third domain"):
        DataConfig(select_on=same)


def test_select_text_has_a_key_of_its_own():
    wiki = DataConfig(source="cpython-docs", select_on="enwiki")
    key = outside_fingerprint(wiki, "select", "tok")
    assert outside_fingerprint(wiki.model_copy(update={"select_on_seqs": 3}), "select", "tok") != key
    assert outside_fingerprint(wiki.model_copy(update={"heldout_seqs": 3}), "select", "tok") == key
    assert outside_fingerprint(wiki, "heldout", "tok") != key
