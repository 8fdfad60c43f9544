"""The one root of argofl's errors and the exit codes they map to.

Every failure argofl knows how to describe derives from :class:`ArgoflError`, whose ``exit_code``
tells a command line how to exit and a workflow's retry policy whether another attempt can help:

* ``2`` (:class:`BadInputError`) — settings, configs, checkpoints or run state are wrong; the same
  input fails the same way, so it is never retried;
* ``1`` (:class:`ArgoflError` itself) — the run failed (e.g. training diverged, too few updates);
* ``75`` (:class:`TransientError`, ``EX_TEMPFAIL``) — a service (S3, MLflow) could not be reached;
  retrying later may succeed.

``pipelines`` may import this module; ``steps`` never imports ``pipelines``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_TRANSIENT",
    "ArgoflError",
    "BadInputError",
    "TransientError",
    "exit_code_of",
    "one_line",
]

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL (sysexits.h)


class ArgoflError(Exception):
    """A failure argofl describes in one line; ``exit_code`` 1 (the run failed)."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class BadInputError(ArgoflError):
    """Wrong settings, config, checkpoint or run state: exit code 2, never retried."""

    exit_code: ClassVar[int] = EXIT_BAD_INPUT


class TransientError(ArgoflError):
    """A service could not be reached or failed temporarily: exit code 75, retried."""

    exit_code: ClassVar[int] = EXIT_TRANSIENT


def exit_code_of(exc: BaseException) -> int:
    """The exit code for ``exc``: its ``exit_code`` when it is an :class:`ArgoflError`, else 1."""
    return exc.exit_code if isinstance(exc, ArgoflError) else EXIT_FAILURE


def one_line(exc: BaseException | str) -> str:
    """``exc``'s message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(exc).split())
