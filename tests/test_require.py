"""Under CI a missing tool the CI installs fails its test; elsewhere the test skips."""

from __future__ import annotations

import pytest

from tests.require import require_module, require_or_skip


@pytest.mark.parametrize("value", ["true", "1"])
def test_a_missing_tool_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        require_or_skip(False, "chromium is not installed")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_argofl"):
        require_module("no_such_module_argofl")


def test_a_missing_tool_skips_elsewhere(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        require_or_skip(False, "chromium is not installed")
    with pytest.raises(pytest.skip.Exception):
        require_module("no_such_module_argofl")


def test_an_available_tool_neither_skips_nor_fails(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require_or_skip(True, "present")
    assert require_module("json").dumps([]) == "[]"
