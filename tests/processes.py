"""The process table read from /proc (no psutil): which processes belong to a run, waiting for them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ARGOFL = [sys.executable, "-c", "from argofl.pipelines.cli import main; main()"]
"""``argofl`` as a subprocess command, running this checkout's code whatever the working directory."""

ROOT = Path(__file__).resolve().parents[1]


def argofl_env() -> dict[str, str]:
    """The environment for :data:`ARGOFL` (this checkout importable from any working directory)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def processes_with_env(name: str, value: str) -> list[int]:
    """Live (not zombie) processes whose environment has ``name=value``."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours
            continue
        if wanted in environ and state != "Z":
            found.append(int(entry.name))
    return found


def run_processes(workflow: str) -> list[int]:
    """Every step process of workflow ``workflow`` (and what they started), as the executor sets
    ``ARGO_WORKFLOW_NAME`` in each pod's environment."""
    return processes_with_env("ARGO_WORKFLOW_NAME", workflow)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``timeout`` seconds (a generous
    bound for a loaded machine, not a timing assertion)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
