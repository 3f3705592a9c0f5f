"""Serve the UNAST flow from this process (kept for scripts that call it; the same as `unast serve`):

    python -m deployments.deploy --name smollm2-nightly --preset cpu --budget latency=0.75 --cron "0 2 * * *"

For runs on the workers of a work pool, use `unast deploy` (README: running it as a service).
"""

from __future__ import annotations

import sys

from flows.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--name" or a.startswith("--name=") for a in argv):
        argv = ["--name", "unast", *argv]
    return cli_main(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main())
