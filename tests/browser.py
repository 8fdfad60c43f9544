"""Headless Chromium for tests that must see a page as users do (JavaScript apps such as MLflow's UI)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

from tests.require import require_or_skip

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """Path of Debian's Chromium (``make test`` installs it when run as root); skips the test if absent."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require_or_skip(path is not None, "chromium is not installed (apt-get install chromium)")
    assert path is not None
    return path


def rendered_dom(url: str, *, budget_ms: int = 15000) -> str:
    """The page's DOM after its scripts ran for ``budget_ms`` of virtual time."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium(), *_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
             "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-500:]}")
    return result.stdout
