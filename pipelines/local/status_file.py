"""``status.json``: rewritten atomically by a background thread after changes, coalescing bursts."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MIN_PAUSE_S", "WRITE_SHARE", "StatusFile"]

MIN_PAUSE_S = 0.05
"""Least time between two background writes of ``status.json`` (how stale it may be when small)."""

WRITE_SHARE = 0.05
"""Most of the writer thread's time spent writing: after a write that took ``t`` seconds (a large
run's status is megabytes of JSON), the next one waits at least ``t / WRITE_SHARE`` (the steps need the
CPU more than the file needs freshness)."""


class StatusFile:
    """Writes ``snapshot()`` to ``run_dir/status.json`` whenever :meth:`mark_dirty` was called."""

    def __init__(self, run_dir: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.run_dir = run_dir
        self._snapshot = snapshot
        self._dirty = threading.Condition()
        self._dirty_flag = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="status-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread and write the final status."""
        with self._dirty:
            self._stop = True
            self._dirty.notify()
        if self._thread.is_alive():
            self._thread.join()
        self.write()

    def mark_dirty(self) -> None:
        with self._dirty:
            self._dirty_flag = True
            self._dirty.notify()

    def write(self) -> None:
        data = json.dumps(self._snapshot(), indent=1, sort_keys=False)
        tmp = self.run_dir / f".status.json.{threading.get_ident()}.tmp"
        tmp.write_text(data)
        os.replace(tmp, self.run_dir / "status.json")

    def _loop(self) -> None:
        while True:
            with self._dirty:
                while not self._dirty_flag and not self._stop:
                    self._dirty.wait()
                if self._stop:
                    return
                self._dirty_flag = False
            started = time.monotonic()
            with contextlib.suppress(OSError):
                self.write()
            pause = max(MIN_PAUSE_S, (time.monotonic() - started) / WRITE_SHARE)
            # coalesce bursts of changes: changes made meanwhile wait for the next write (only a stop
            # ends the pause early); the whole status is serialised each time
            with self._dirty:
                self._dirty.wait_for(lambda: self._stop, timeout=pause)
