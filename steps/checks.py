"""Value checks of settings and strategy options: each returns the problem (``"must be > 0"``) or None.

Shared by :class:`steps.settings.Settings` and the strategies' options (:class:`steps.strategies.Option`),
which report a problem as ``"NAME: PROBLEM, got VALUE"``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

__all__ = ["Check", "at_least", "choice", "fraction", "half", "momentum", "open_unit", "positive", "within"]

Check = Callable[[Any], "str | None"]
"""A value → its problem, or None when it is fine."""


def choice(choices: Collection[str]) -> Check:
    """A check that ``value`` is one of ``choices`` (a registry: read at each check, not copied)."""

    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _shown(bound: float) -> str:
    """``bound`` as a problem names it: integers in full (``1000000``, not ``1e+06``)."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be ≥ {_shown(low)}"


def within(low: float, high: float, why: str = "") -> Check:
    """A check that ``low ≤ value ≤ high``; ``why`` follows the problem of a value above ``high``."""

    def check(value: Any) -> str | None:
        if value < low:
            return f"must be ≥ {_shown(low)}"
        return None if value <= high else f"must be ≤ {_shown(high)}{why}"

    return check


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def fraction(value: Any) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def momentum(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def open_unit(value: Any) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def half(value: Any) -> str | None:
    return None if 0 <= value < 0.5 else "must be in [0, 0.5)"
