"""SIGINT, SIGTERM and SIGHUP of the executor stop its run, as ``argo stop`` stops a workflow.

Within :class:`StopOnSignals`, the first signal interrupts the run (running pods are stopped, nothing new
starts, the exit handler runs) and a second one stops the exit handler too. The handlers only hand the
work to a thread: a signal handler runs between two bytecodes of the main thread, which may hold the
executor's lock. The signals are taken over from the command's
:class:`~argofl.pipelines.stop_signals.StopSignals` (installed before the run, so a signal received
before it started stops it at once), or installed for the run's duration where none is (from the main
thread only: elsewhere nothing is installed).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from argofl.pipelines.stop_signals import STOP_SIGNALS, StopSignals, installed

__all__ = ["STOP_SIGNALS", "StopOnSignals"]


class StopOnSignals:
    """Calls ``interrupt(message, hard=...)`` on each stop signal; ``signum`` is the first one received."""

    def __init__(self, interrupt: Callable[..., Any]) -> None:
        self._interrupt = interrupt
        self._guard: StopSignals | None = None
        self._own = False
        self.signum: int | None = None

    def __enter__(self) -> StopOnSignals:
        guard = installed()
        self._own = guard is None
        if guard is None:
            guard = StopSignals()
            guard.install()
        self._guard = guard
        guard.hand_over(self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._guard is not None:
            self._guard.take_back()
            if self._own:
                self._guard.restore()
        self._guard = None

    def _handle(self, signum: int) -> None:
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
