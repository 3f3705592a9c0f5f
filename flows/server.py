"""The temporary Prefect server of a run, tied to the run's process: it dies with it, however the run dies.

Prefect's own temporary server is a plain child process: when the run is SIGKILLed or OOM-killed it lives on
(parent 1), holding the terminal's output pipe open, so a script waiting on `unast run` hangs. `owned_server`
starts it with the kernel's parent-death signal (Linux `PR_SET_PDEATHSIG`): SIGTERM as soon as the process
that started it is gone.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import types

from prefect.server.api import server as prefect_server

PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Runs in the child between fork and exec."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc: nothing to tie to
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


class _DiesWithParent:
    """Mixed into Prefect's SubprocessASGIServer: its uvicorn child is started with the parent-death signal."""

    def _run_uvicorn_command(self) -> subprocess.Popen:
        if not sys.platform.startswith("linux"):
            return super()._run_uvicorn_command()
        popen = functools.partial(subprocess.Popen, preexec_fn=functools.partial(_die_with, os.getpid()))
        shim = types.SimpleNamespace(**{k: getattr(subprocess, k) for k in dir(subprocess) if not k.startswith("_")})
        shim.Popen = popen
        saved, prefect_server.subprocess = prefect_server.subprocess, shim  # only its Popen call reads it
        try:
            return super()._run_uvicorn_command()
        finally:
            prefect_server.subprocess = saved


def owned_server():
    """A temporary Prefect server (the class Prefect has now) that dies with this process."""
    return type("OwnedServer", (_DiesWithParent, prefect_server.SubprocessASGIServer), {})()
