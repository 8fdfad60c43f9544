"""Child nodes run on their own daemon threads; each reports its node through a :class:`Future`.

Daemon threads (not a pool) because an interrupted executor must be able to exit while children still
wait on their processes; the caller waits with :func:`concurrent.futures.wait`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

__all__ = ["done", "spawn"]

T = TypeVar("T")


def spawn(fn: Callable[[], T], name: str) -> Future[T]:
    """Run ``fn`` on a new daemon thread named ``name``; its result (or exception) completes the future."""
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def done(value: T) -> Future[T]:
    """A future that already holds ``value`` (a child that never needed a thread, e.g. a Skipped node)."""
    future: Future[T] = Future()
    future.set_result(value)
    return future
