"""Integrity of stored artifacts: every file the store writes gets a hidden sidecar with its size and SHA-256,
written before the file is renamed into place, and the file is checked against it when it is read or reused.
Each check also touches the sidecar: its modification time is the file's last use (`housekeeping.gc`).

    <dir>/name.json   <dir>/.name.json.sum   ({"size": ..., "sha256": ...})

A file without a sidecar (a store written before sidecars existed) is trusted as it is, and gets one. A file whose size or
digest differs from its sidecar (a copy cut short, a full disk, an edit) is never used: a reuse check
(`intact`) warns, naming the file, removes it, and the stage computes it again; a plain read raises
`CorruptArtifact`. Digests are checked once per process and file version (path, inode, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterable

from unast_core.errors import UnastError

SIDECAR_SUFFIX = ".sum"
_verified: set[tuple] = set()
_lock = threading.Lock()


class CorruptArtifact(UnastError):
    """A stored file does not match the size or digest recorded when it was written."""


def sidecar(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")


def is_sidecar(path: Path) -> bool:
    name = Path(path).name
    return name.startswith(".") and name.endswith(SIDECAR_SUFFIX)


def digest(path: Path, chunk: int = 1 << 22) -> dict:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            size += len(block)
    return {"size": size, "sha256": sha.hexdigest()}


def record(content: Path, final: Path) -> None:
    """Write `final`'s sidecar from `content` (the temporary file about to be renamed onto `final`)."""
    side = sidecar(final)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(digest(content)))
        os.replace(tmp, side)
    finally:
        if tmp.exists():
            tmp.unlink()


def recorded_sha256(path: Path) -> str:
    """The SHA-256 recorded for `path` when it was written (computed now when it has no sidecar)."""
    try:
        return json.loads(sidecar(path).read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return digest(path)["sha256"]


def record_tree(directory: Path) -> None:
    """Sidecars for every file under `directory` (a tree about to be renamed into place)."""
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and not path.is_symlink() and not is_sidecar(path):
            record(path, path)


def problem(path: Path) -> str | None:
    """Why `path` cannot be trusted ("missing", "truncated: ...", "altered: ..."), or None when it can."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "missing"
    side = sidecar(path)
    try:
        expected = json.loads(side.read_text())
    except FileNotFoundError:  # written before sidecars: trusted as it is, and recorded from now on
        try:
            record(path, path)
        except OSError:  # a read-only store
            pass
        return None
    except (OSError, ValueError):
        return "its checksum record is unreadable"
    if stat.st_size != expected.get("size"):
        kind = "truncated" if stat.st_size < expected.get("size", 0) else "altered"
        return f"{kind}: {stat.st_size} bytes, {expected.get('size')} written"
    _touch(side)  # its last use, for `unast store gc`
    version = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, side.stat().st_ino)
    with _lock:
        if version in _verified:
            return None
    if digest(path)["sha256"] != expected.get("sha256"):
        return "altered: its SHA-256 differs from the one recorded when it was written"
    with _lock:
        _verified.add(version)
    return None


def _touch(side: Path) -> None:
    try:
        os.utime(side)
    except OSError:  # a read-only store
        pass


def verify(path: Path) -> Path:
    """`path` if it matches its sidecar; else CorruptArtifact naming the file."""
    reason = problem(path)
    if reason and reason != "missing":
        raise CorruptArtifact(f"stored artifact {path} is {reason}; delete it (or rerun, which recomputes it)")
    return Path(path)


def _warn(message: str) -> None:
    logging.getLogger("unast.store").warning(message)


def intact(*paths: Path | str | None, warn: Callable[[str], None] | None = None) -> bool:
    """True when every given file exists and matches its sidecar (None entries are skipped). A corrupt one
    is reported (a warning naming the file), then removed with its sidecar so that it is recomputed."""
    ok = True
    for path in paths:
        if path is None:
            continue
        reason = problem(Path(path))
        if reason is None:
            continue
        ok = False
        if reason != "missing":
            (warn or _warn)(f"corrupt artifact {path} ({reason}); it is not used and will be recomputed")
            discard(Path(path))
    return ok


def tree_intact(directory: Path | str, warn: Callable[[str], None] | None = None) -> bool:
    """Every file of a directory written by `atomic_dir` matches its sidecar (a corrupt one is reported and
    removed, and the caller writes the directory again)."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    files = [p for p in sorted(directory.rglob("*")) if p.is_file() and not is_sidecar(p)]
    return bool(files) and intact(*files, warn=warn)


def discard(path: Path) -> None:
    for victim in (Path(path), sidecar(path)):
        try:
            victim.unlink()
        except FileNotFoundError:
            pass
