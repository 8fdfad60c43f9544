"""A first-come-first-served counting semaphore for parallelism limits."""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["Slots"]


class Slots:
    """``limit`` slots handed out strictly in the order :meth:`acquire` was called."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"parallelism must be at least 1, got {limit}")
        self.limit = limit
        self._free = limit
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    def acquire(self) -> None:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._queue[0] is not ticket or self._free == 0:
                self._cond.wait()
            self._queue.popleft()
            self._free -= 1
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()
