"""Skip a test whose tool is missing, except under CI (``CI=true``), where the tool is installed
on purpose and its absence is a failure: a test that silently skips in CI checks nothing."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

__all__ = ["in_ci", "require_module", "require_or_skip"]


def in_ci() -> bool:
    """Whether the tests run under CI (``$CI`` is ``true`` or ``1``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_or_skip(available: bool, what: str) -> None:
    """Skip the test when ``what`` is unavailable; fail instead under CI."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} (CI=true: the CI installs it, so its absence fails the test)", pytrace=False)
    pytest.skip(what)


def require_module(name: str) -> ModuleType:
    """``pytest.importorskip(name)``, failing instead under CI."""
    try:
        return pytest.importorskip(name)
    except pytest.skip.Exception as exc:
        require_or_skip(False, str(exc.msg) if hasattr(exc, "msg") else f"cannot import {name}")
        raise
