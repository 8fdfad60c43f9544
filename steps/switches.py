"""Escape-hatch environment variables: ``ARGOFL_…=0`` turns an optimisation off."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["OFF_VALUES", "is_off"]

OFF_VALUES = frozenset({"0", "false", "off", "no"})
"""What turns a switch off (any case, surrounding blanks ignored); anything else, or unset, leaves it on."""


def is_off(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether variable ``name`` of ``env`` (default: this process's environment) turns its switch off."""
    source = os.environ if env is None else env
    return str(source.get(name, "")).strip().lower() in OFF_VALUES
