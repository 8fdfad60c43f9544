"""SIGINT, SIGTERM and SIGHUP of a command that runs a workflow, from its first line to its last.

``argofl run``, ``argofl resume`` and ``argofl local run`` install :class:`StopSignals` first thing in
``main`` (:func:`guard_stops`), before the seconds of imports, compiling and fork-server start that precede
the run. Until the executor takes the signals over (:meth:`StopSignals.hand_over`, which
:class:`~argofl.pipelines.local.signals.StopOnSignals` calls), a stop signal is only remembered: the
command then refuses to start the run (:func:`stop_before_start`) and exits with ``128 + N``. After the
run, one lets the command write its results and then end with ``128 + N``. An inherited ``SIG_IGN`` of
SIGINT or SIGTERM is overridden, as the executor always did: a background job of a non-interactive shell,
which starts with SIGINT ignored, stops on ``kill -INT`` at any moment, not only once its run has started.
An ignored SIGHUP (``nohup``) stays ignored.

This module imports nothing heavy: a signal during the imports that follow it must find it installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals", "guard_stops", "installed", "stop_before_start"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_installed: StopSignals | None = None


class StopSignals:
    """The stop signals' handler: hands each signal to the running executor's handler, or remembers it.

    ``signum`` is the first stop signal received, whenever; ``pending`` the first one received before
    the run started (the run must not start then).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.pending: int | None = None
        self._handler: Callable[[int], None] | None = None
        self._ran = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle the stop signals (from the main thread only: elsewhere nothing is installed). An ignored
        SIGHUP stays ignored: ``nohup argofl run …`` must outlive its terminal."""
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Give the stop signals back the handlers they had before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def hand_over(self, handler: Callable[[int], None]) -> None:
        """Send the stop signals to ``handler`` from now on, and a signal already pending to it at once."""
        self._handler = handler  # one store: a signal handled before it is pending, after it is handled
        pending, self.pending = self.pending, None
        if pending is not None:
            handler(pending)

    def take_back(self) -> None:
        """The run has ended: signals are remembered again (:meth:`hand_over` undone)."""
        self._handler = None
        self._ran = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        handler = self._handler
        if handler is not None:
            handler(signum)
            return
        if self.pending is None and not self._ran:
            self.pending = signum
        if first:
            name = signal.Signals(signum).name
            what = "exiting once its results are written" if self._ran else "the run will not start"
            os.write(2, f"argofl: {name}: stopping; {what}\n".encode())


def installed() -> StopSignals | None:
    """The handler :func:`guard_stops` installed in this process, if any."""
    return _installed


@contextlib.contextmanager
def guard_stops() -> Iterator[StopSignals]:
    """Handle the stop signals for the duration of the block (a command that runs a workflow)."""
    global _installed
    guard = StopSignals()
    guard.install()
    previous, _installed = _installed, guard
    try:
        yield guard
    finally:
        _installed = previous
        guard.restore()


def stop_before_start() -> None:
    """Raise :class:`SystemExit` with ``128 + N`` when stop signal N arrived before the run started
    (called just before each step of a command's start-up that starts something: the fork server, the
    executor)."""
    guard = _installed
    if guard is not None and guard.pending is not None:
        raise SystemExit(128 + guard.pending)
