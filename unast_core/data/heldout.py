"""The held-out evaluation set: text from a domain that no stage trains on.

`lee-news` is the Lee corpus (Lee, Pincombe and Welsh, 2005): 300 English news articles from the
Australian Broadcasting Corporation's news mail service, one per line, ~60K words. It ships inside the
gensim wheel on PyPI, so a machine that reaches only a package index can fetch it; it is checked by
sha256 and cached. News prose about bushfires, elections and cricket shares neither vocabulary nor form
with the CPython language reference, so a student that only learned the docs shows it here. The default
calibration data's Wikipedia leads are prose too, but encyclopedic, with no news report among them; the two
share no run of 10 words.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from unast_core.fetch import package_file
from unast_core.integrity import intact
from unast_core.store import atomic_path

LEE_NEWS = "lee-news"
GENSIM_WHEEL = "gensim==4.4.0"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"
LEE_SHA256 = "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"
ENWIKI = "enwiki"
ENWIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
ENWIKI_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
_MIN_WORDS = 8  # a kept paragraph has at least this many words (drops headings, list stubs, leftover markup)


def data_cache_dir() -> Path:
    return Path(os.environ.get("UNAST_CACHE", Path.home() / ".cache" / "unast")) / "data"


def lee_news_path() -> Path:
    """The cached Lee corpus (fetched from the gensim wheel once)."""
    return package_file(GENSIM_WHEEL, LEE_MEMBER, LEE_SHA256, data_cache_dir() / "lee_background.txt",
                        fix=f"set data.heldout to a local .txt file, or None, or copy {data_cache_dir()} "
                            "from a machine that has it")


def lee_news_texts() -> list[str]:
    return [line.strip() for line in lee_news_path().read_text(encoding="utf-8").splitlines() if line.strip()]


def enwiki_texts() -> list[str]:
    """The Wikipedia articles as plain text, one per document (extracted once, then read from the cache)."""
    cached = data_cache_dir() / f"enwiki-{ENWIKI_SHA256[:12]}.jsonl"
    if not intact(cached):
        dump = package_file(GENSIM_WHEEL, ENWIKI_MEMBER, ENWIKI_SHA256, data_cache_dir() / "enwiki-excerpt.xml.bz2",
                            fix="the Wikipedia text (in data.source cpython-docs+enwiki, the default, or "
                                "data.select_on enwiki) comes from PyPI once: set data.source=cpython-docs or a local "
                                f"file and no enwiki select_on, or copy {data_cache_dir()} from a machine that has it")
        with atomic_path(cached) as tmp:
            tmp.write_text("".join(json.dumps(doc) + "\n" for doc in wiki_articles(bz2.decompress(dump.read_bytes()))),
                           encoding="utf-8")
    return [json.loads(line) for line in cached.read_text(encoding="utf-8").splitlines()]


def wiki_leads(articles: list[str], words: int) -> list[str]:
    """Each article's leading paragraphs, whole, up to the first that brings it to `words` words (an article
    shorter than that is kept entire): a lead section's worth of each, so no few long articles dominate."""
    leads = []
    for article in articles:
        kept, count = [], 0
        for paragraph in article.split("\n\n"):
            if count >= words:
                break
            kept.append(paragraph)
            count += len(paragraph.split())
        leads.append("\n\n".join(kept))
    return leads


def wiki_articles(xml: bytes) -> list[str]:
    """The plain text of the main-namespace, non-redirect pages of a MediaWiki XML export (a checksummed
    file from a wheel, not user input), in file order; articles left with no paragraph are dropped."""
    articles = []
    for _, element in ET.iterparse(io.BytesIO(xml)):
        if element.tag.rsplit("}", 1)[-1] != "page":
            continue
        namespace, text = element.find("{*}ns"), element.find("{*}revision/{*}text")
        if namespace is not None and namespace.text == "0" and element.find("{*}redirect") is None and text is not None:
            if plain := wiki_plain_text(text.text or ""):
                articles.append(plain)
        element.clear()
    return articles


def wiki_plain_text(wikitext: str) -> str:
    """Paragraphs of `wikitext` as a reader sees them: markup stripped, references, tables, templates and
    file / category links dropped, paragraphs of fewer than 8 words dropped."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=False, matches=lambda node: str(node.tag).strip().lower() in ("ref", "table")):
        code.remove(tag)
    for link in code.filter_wikilinks(recursive=False):
        if str(link.title).strip().lower().startswith(("file:", "image:", "category:")):
            code.remove(link)
    paragraphs = (" ".join(p.split()) for p in code.strip_code().split("\n"))
    return "\n\n".join(p for p in paragraphs if len(p.split()) >= _MIN_WORDS)


def heldout_rows(tokenizer, texts: list[str], rows: int, seq_len: int, seed: int) -> torch.Tensor:
    """The first `rows` packed rows of the documents in a seeded order (fewer if the text runs out)."""
    from unast_core.data.corpus import pack

    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    ids = tokenizer([texts[i] for i in order], add_special_tokens=False, verbose=False)["input_ids"]
    return pack([list(x) for x in ids if len(x)], seq_len, tokenizer.eos_token_id)[:rows].clone()
