"""``NAME=VALUE`` command-line values, parsed in one place for every argofl command.

``-p`` of ``argofl run``/``submit``/``resubmit``/``local run``, ``--param`` and ``--output`` of the step
commands and ``--image-map`` all use :class:`NameValue`; a malformed item is one click usage error
naming the option and the item (exit 2).
"""

from __future__ import annotations

from collections.abc import Iterable

import click

__all__ = ["NameValue", "to_dict"]


class NameValue(click.ParamType):
    """``NAME=VALUE`` → ``(name, value)``; ``value_name`` (e.g. ``PATH``) only changes the message and
    ``allow_empty`` whether ``NAME=`` (an empty value) is accepted."""

    name = "name=value"

    def __init__(self, value_name: str = "VALUE", *, allow_empty: bool = True) -> None:
        self.value_name = value_name
        self.allow_empty = allow_empty

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple) and len(value) == 2:  # already converted
            return str(value[0]), str(value[1])
        text = str(value)
        name, sep, rest = text.partition("=")
        if not sep or not name or (not rest and not self.allow_empty):
            self.fail(f"expected NAME={self.value_name}, got {text!r}", param, ctx)
        return name, rest


def to_dict(pairs: Iterable[tuple[str, str]], *, option: str) -> dict[str, str]:
    """``pairs`` as a dict; the same name twice with different values is a usage error."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out and out[name] != value:
            raise click.BadParameter(
                f"{name} is given twice, as {out[name]!r} and {value!r}", param_hint=option
            )
        out[name] = value
    return out
