"""The run store: one directory per teacher, artifacts addressed by content keys, atomic writes.

    <home>/runs/<teacher-fingerprint>/
        activations/<key>/<split>/boundary-NNN.safetensors
        scores/<key>.json   lut/<device>-<key>.json   search/<key>.json
        select/<key>/...    final/<key>/ (exported checkpoint)

A key hashes everything that determines an artifact (teacher, data, candidate spec, hyper-parameters),
so a rerun with the same inputs finds its work done and a changed input never reads stale work.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from unast_core import integrity
from unast_core.errors import UnastError


class DiskFull(UnastError):
    """A store write ran out of space; its temporary file is gone and nothing partial is left."""


def _is_enospc(exc: BaseException) -> bool:
    """ENOSPC as Python raises it, or as a library wraps it (safetensors reports the Rust io error as text)."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc) \
        or "code: 28," in str(exc)


def _disk_full(path: Path) -> DiskFull:
    try:
        usage = shutil.disk_usage(_existing_ancestor(Path(path).parent))
        free = f"{usage.free / 1e9:.2f} GB free"
    except OSError:
        free = "no space"
    return DiskFull(f"no space left on the device writing {path} ({free}); nothing partial was kept. Free "
                    f"space there, e.g. `unast store gc --home HOME --keep 1` drops the store's oldest runs' "
                    f"artifacts (`unast store du --home HOME` shows what takes the space), then rerun: finished "
                    f"work is reused")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def content_key(*parts: Any, length: int = 16) -> str:
    """Stable short hash of JSON-serialisable parts (pydantic models: pass `.model_dump(mode='json')`)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts are meant to be shared
            integrity.record(Path(tmp), path)  # before the rename: a file in place always has its sidecar
        except Exception as exc:
            if _is_enospc(exc):
                raise _disk_full(path) from None
            raise
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())
            integrity.record_tree(tmp)
        except Exception as exc:
            if _is_enospc(exc):
                raise _disk_full(path) from None
            raise
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_json(path: Path) -> Any:
    """A stored JSON file, checked against its sidecar (`integrity.CorruptArtifact` when it does not match)."""
    return json.loads(integrity.verify(Path(path)).read_text())


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A stored safetensors file, checked against its sidecar (`integrity.CorruptArtifact` when it does not)."""
    return load_file(str(integrity.verify(Path(path))))


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a finished directory (hard links where possible: checkpoints are large) atomically."""
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            shutil.copy2(a, b)

    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
    return Path(dst)


def _existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.absolute().parents]:
        if parent.exists():
            return parent
    return Path("/")


def check_output_dir(path: Path) -> None:
    """Refuse to replace a directory that is not a previous export: `export` swaps the whole directory.
    Also refuse a path that could not be created (under a regular file, or in a read-only directory)."""
    from unast_core.errors import UnastError

    path = Path(path)
    if path.is_file():
        raise UnastError(f"output {path} is a file; give a directory path")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise UnastError(f"output {path} cannot be created: {base} is a file; give a directory path")
    if not path.exists() and not os.access(base, os.W_OK | os.X_OK):
        raise UnastError(f"output {path} cannot be created: {base} is not writable; give another --output")
    if path.is_dir() and any(path.iterdir()) and not (path / "results.json").exists() \
            and not (path / "family.json").exists():
        raise UnastError(f"output directory {path} exists and is not a UNAST export; choose a new or empty directory")


def check_home(path: Path) -> None:
    """The run store's home must be a directory this process can write (it is created if missing)."""
    from unast_core.errors import UnastError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".unast-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UnastError(f"home {path} is not a writable directory ({reason}); give another --home") from None


class RunStore:
    """Paths inside one teacher's run directory (pure path arithmetic)."""

    def __init__(self, home: Path, teacher_fingerprint: str):
        self.root = Path(home) / "runs" / teacher_fingerprint[:16]
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def activations(self, key: str, split: str) -> Path:
        return self.path("activations", key, split)

    def scores(self, key: str) -> Path:
        return self.path("scores", f"{key}.json")

    def lut(self, device: str, key: str) -> Path:
        return self.path("lut", f"{device}-{key}.json")

    def search(self, key: str) -> Path:
        return self.path("search", f"{key}.json")

