"""SIGINT, SIGTERM and SIGHUP of the executor stop its run, as ``argo stop`` stops a workflow.

Within :class:`StopOnSignals`, the first signal interrupts the run (running pods are stopped, nothing new
starts, the exit handler runs) and a second one stops the exit handler too. The handlers only hand the
work to a thread: a signal handler runs between two bytecodes of the main thread, which may hold the
executor's lock. Outside the main thread nothing is installed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopOnSignals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopOnSignals:
    """Calls ``interrupt(message, hard=...)`` on each stop signal; ``signum`` is the first one received."""

    def __init__(self, interrupt: Callable[..., Any]) -> None:
        self._interrupt = interrupt
        self._previous: dict[int, Any] = {}
        self.signum: int | None = None

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        name = signal.Signals(signum).name
        note = (
            f"argofl: {name}: stopping the run; its exit handler runs (send it again to skip that)\n"
            if first
            else f"argofl: {name}: stopping the exit handler too\n"
        )
        os.write(2, note.encode())
        threading.Thread(
            target=self._interrupt,
            args=(f"stopped: executor interrupted ({name})",),
            kwargs={"hard": not first},
            name="interrupt",
            daemon=True,
        ).start()
