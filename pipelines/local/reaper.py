"""Removes a run's containers and network once the executor is gone: ``python -m argofl.pipelines.local.reaper
DOCKER LABEL NETWORK``, started detached by :class:`~pipelines.local.containers.DockerRuntime`.

Its stdin is a pipe whose only writer is the executor. Reading it returns end-of-file when the executor
closes it after its own cleanup or when the executor dies in any way, SIGKILL included (the kernel
closes the pipe), so nothing polls and nothing depends on the executor's last words.
"""

from __future__ import annotations

import subprocess
import sys

__all__ = ["reap", "remove_network"]

_ENDPOINTS = "{{range $id, $e := .Containers}}{{$id}} {{$e.Name}} {{end}}"


def remove_network(docker: str, network: str, timeout: float = 120) -> bool:
    """Remove ``network``, first force-disconnecting whatever is still attached; True once it is gone.

    The run's containers are removed by then, but Docker 20.10 sometimes keeps a stale endpoint of a
    removed container (``network rm`` answers "has active endpoints" until dockerd restarts), and a
    container someone attached to the run's private network would keep it too.
    """
    for attempt in range(3):
        done = subprocess.run(
            [docker, "network", "rm", network], capture_output=True, text=True, check=False, timeout=timeout
        )
        if done.returncode == 0 or "not found" in done.stderr or "No such network" in done.stderr:
            return True
        if attempt == 2:
            break
        listed = subprocess.run(
            [docker, "network", "inspect", network, "--format", _ENDPOINTS],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        for endpoint in dict.fromkeys(listed.stdout.split()):  # ids and names: a stale one answers to either
            subprocess.run(
                [docker, "network", "disconnect", "--force", network, endpoint],
                capture_output=True,
                check=False,
                timeout=timeout,
            )
    return False


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
    remove_network(docker, network)


def main(argv: list[str]) -> int:
    docker, label, network = argv
    while sys.stdin.buffer.read(65536):
        pass
    reap(docker, label, network)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
