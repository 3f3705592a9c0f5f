"""Real servers for the service tests: free loopback ports, background processes with their output in a
log file, readiness polling, and a stop that always runs (process group: terminate, then kill)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class Background:
    """A process started in its own process group, logging to `log`; `stop()` ends the group."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, cwd: str | os.PathLike | None = None):
        self.cmd, self.log = cmd, log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._out.close()


def wait_http(url: str, proc: Background, timeout: float = 600) -> None:
    """Poll `url` until it answers 200; fail early with the log when the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.cmd[:3]} exited with {proc.proc.returncode}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s:\n{proc.tail()}")


def get_json(url: str, **params) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{url}?{query}" if query else url, timeout=30) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def listening_hosts(pid: int) -> set[str]:
    """Local addresses the process group of `pid` listens on over TCP (Linux /proc), e.g. {"127.0.0.1"}."""
    inodes = set()
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for other in pids:
        try:
            if os.getpgid(int(other)) != os.getpgid(pid):
                continue
            for fd in os.listdir(f"/proc/{other}/fd"):
                target = os.readlink(f"/proc/{other}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (OSError, ProcessLookupError):
            continue
    hosts = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                hosts.add(_host(fields[1].split(":")[0], width))
    return hosts


def _host(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)
