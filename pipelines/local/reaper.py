"""Removes a run's containers and network once the executor is gone: ``python -m argofl.pipelines.local.reaper
DOCKER LABEL NETWORK``, started detached by :class:`~pipelines.local.containers.DockerRuntime`.

Its stdin is a pipe whose only writer is the executor. Reading it returns end-of-file when the executor
closes it after its own cleanup or when the executor dies in any way, SIGKILL included (the kernel
closes the pipe), so nothing polls and nothing depends on the executor's last words.
"""

from __future__ import annotations

import subprocess
import sys

__all__ = ["reap"]


def reap(docker: str, label: str, network: str) -> None:
    """Force-remove every container labelled ``label``, then ``network``."""
    listed = subprocess.run(
        [docker, "ps", "--all", "--quiet", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run(
            [docker, "rm", "--force", "--volumes", *ids], capture_output=True, check=False, timeout=300
        )
    subprocess.run([docker, "network", "rm", network], capture_output=True, check=False, timeout=120)


def main(argv: list[str]) -> int:
    docker, label, network = argv
    while sys.stdin.buffer.read(65536):
        pass
    reap(docker, label, network)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
