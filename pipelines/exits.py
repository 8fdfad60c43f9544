"""Exit codes of the ``argofl`` commands: an :class:`~steps.errors.ArgoflError` that reaches a
command group ends the command with one ``error: …`` line and the error's own ``exit_code``."""

from __future__ import annotations

from typing import Any

import click

from argofl.steps.errors import ArgoflError, one_line

__all__ = ["ArgoflGroup"]


class ArgoflGroup(click.Group):
    """A click group that maps argofl errors to their exit codes (no list of exception classes)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ArgoflError as exc:
            if isinstance(exc, click.ClickException):
                raise
            click.echo(f"error: {one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
