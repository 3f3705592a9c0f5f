"""One lock per content key, so that two runs on one store never compute the same unit of work twice.

`unit_lock(path)` holds an exclusive lock on a hidden sibling `.NAME.lock` of the artifact at `path`: an
`flock` on the file (Linux maps it to a POSIX lock on NFS, so it holds across hosts on a shared store) plus
a lock per path inside this process (threads of one process share POSIX locks). A task takes it, then
checks whether the artifact is already stored: the second run to get there waits while the first computes,
and then reuses what it wrote. Writes stay atomic (temp file + rename), so nothing half-written is read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Iterator

_local: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_guard = threading.Lock()


def lock_file(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def unit_lock(path: Path | str) -> Iterator[None]:
    """Exclusive, blocking, released when the block ends or the process dies (the kernel drops it)."""
    lock = lock_file(Path(path))
    lock.parent.mkdir(parents=True, exist_ok=True)
    with _guard:
        local = _local[str(lock.resolve())]
    with local:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock
