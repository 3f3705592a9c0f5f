"""Parent runs left RUNNING by a run that died without a word (SIGKILL, the OOM killer, a power cut).

Each parent run is tagged with its process (host, pid and the pid's start time, so a reused pid is not taken
for the dead one) and the content key of its configuration. A new run of the same configuration on the same
host marks every such run whose process is gone KILLED, and tags both with each other's run id.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from unast_core.store import content_key

HOST, PID, STARTED, CONFIG = "unast.host", "unast.pid", "unast.pid_started", "unast.config_key"
RESUMED_BY, RESUMES = "unast.resumed_by", "unast.resumes"


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def config_key(config: dict) -> str:
    return content_key(config)


def owner_tags(config: dict) -> dict[str, str]:
    return {HOST: socket.gethostname(), PID: str(os.getpid()), STARTED: _started(os.getpid()) or "",
            CONFIG: config_key(config)}


def alive(tags: dict[str, str]) -> bool:
    """Whether the process that owns a run is still running (True when it cannot be told: another host)."""
    if tags.get(HOST) != socket.gethostname() or not tags.get(PID, "").isdigit():
        return True
    return _started(int(tags[PID])) == tags.get(STARTED)


def mark_killed(client, experiment_id: str, new_run_id: str, config: dict) -> list[str]:
    """Mark the dead RUNNING parent runs of this configuration KILLED and link them to `new_run_id`."""
    query = f"attributes.status = 'RUNNING' and tags.`{CONFIG}` = '{config_key(config)}'"
    killed = []
    for run in client.search_runs([experiment_id], filter_string=query, max_results=1000):
        if run.info.run_id == new_run_id or alive(run.data.tags):
            continue
        client.set_tag(run.info.run_id, RESUMED_BY, new_run_id)
        client.set_terminated(run.info.run_id, status="KILLED")
        killed.append(run.info.run_id)
    if killed:
        client.set_tag(new_run_id, RESUMES, ",".join(killed))
    return killed
