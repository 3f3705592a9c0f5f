"""The held-out evaluation set: text from a domain that no stage trains on.

`lee-news` is the Lee corpus (Lee, Pincombe and Welsh, 2005): 300 English news articles from the
Australian Broadcasting Corporation's news mail service, one per line, ~60K words. It ships inside the
gensim wheel on PyPI, so a machine that reaches only a package index can fetch it; it is checked by
sha256 and cached. News prose about bushfires, elections and cricket shares neither vocabulary nor form
with the default calibration data (the CPython language reference), so a student that only learned the
docs shows it here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from unast_core.fetch import package_file

LEE_NEWS = "lee-news"
GENSIM_WHEEL = "gensim==4.4.0"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"
LEE_SHA256 = "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"


def data_cache_dir() -> Path:
    return Path(os.environ.get("UNAST_CACHE", Path.home() / ".cache" / "unast")) / "data"


def lee_news_path() -> Path:
    """The cached Lee corpus (fetched from the gensim wheel once)."""
    return package_file(GENSIM_WHEEL, LEE_MEMBER, LEE_SHA256, data_cache_dir() / "lee_background.txt",
                        fix=f"set data.heldout to a local .txt file, or None, or copy {data_cache_dir()} "
                            "from a machine that has it")


def lee_news_texts() -> list[str]:
    return [line.strip() for line in lee_news_path().read_text(encoding="utf-8").splitlines() if line.strip()]


def heldout_rows(tokenizer, texts: list[str], rows: int, seq_len: int, seed: int) -> torch.Tensor:
    """The first `rows` packed rows of the documents in a seeded order (fewer if the text runs out)."""
    from unast_core.data.corpus import pack

    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    ids = tokenizer([texts[i] for i in order], add_special_tokens=False, verbose=False)["input_ids"]
    return pack([list(x) for x in ids if len(x)], seq_len, tokenizer.eos_token_id)[:rows].clone()
