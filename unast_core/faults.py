"""A deterministic crash for the crash-resume tests: `UNAST_TEST_DIE_AT=<point>[:<n>]` makes this process
SIGKILL itself the n-th time (default 1) it passes `point`, as an OOM kill or a power cut would.

The stages pass a point at each unit-of-work boundary: `capture` after each split's states are stored,
`distill` after each candidate, `score` after each sublayer, `search` after the search result, `refine` after a
refined architecture is stored, `select` after each short finetune, `finetune` after each optimizer step of the
final finetune (its weights are not stored until it ends), `export` after the checkpoint is written and before it
is copied to the output.
`UNAST_TEST_DIE_AT_SIGNAL=INT` sends SIGINT instead, as Ctrl-C in the terminal does. Unset (always, outside
tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "UNAST_TEST_DIE_AT"  # and ENV + "_SIGNAL"
_passed: Counter = Counter()
_lock = threading.Lock()


def point(name: str) -> None:
    """A unit-of-work boundary named `name` (see the module docstring)."""
    target = os.environ.get(ENV)
    if not target:
        return
    where, _, nth = target.partition(":")
    if where != name:
        return
    with _lock:
        _passed[name] += 1
        hit = _passed[name] == int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGINT if os.environ.get(ENV + "_SIGNAL", "").upper() == "INT" else signal.SIGKILL)
