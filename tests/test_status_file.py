"""status.json is rewritten by a background thread that coalesces bursts of changes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from argofl.pipelines.local.status_file import MIN_PAUSE_S, StatusFile


def test_a_burst_of_changes_is_written_a_few_times_not_once_per_change(tmp_path: Path) -> None:
    snapshots = 0
    lock = threading.Lock()

    def snapshot() -> dict[str, Any]:
        nonlocal snapshots
        with lock:
            snapshots += 1
            return {"phase": "Running", "changes": marks}

    marks = 0
    status = StatusFile(tmp_path, snapshot)
    status.start()
    started = time.monotonic()
    while time.monotonic() - started < 20 * MIN_PAUSE_S:  # a change every ~2 ms: a busy fan-out
        with lock:
            marks += 1
        status.mark_dirty()
        time.sleep(0.002)
    elapsed = time.monotonic() - started
    status.close()
    # one write per MIN_PAUSE_S at most, plus the first and the final one; writing on every change
    # (the old behaviour: a change ended the pause) did hundreds
    assert marks > 100
    assert snapshots <= elapsed / MIN_PAUSE_S + 3, (snapshots, marks)
    assert json.loads((tmp_path / "status.json").read_text()) == {"phase": "Running", "changes": marks}


def test_closing_writes_the_last_change_at_once(tmp_path: Path) -> None:
    state = {"phase": "Running"}
    status = StatusFile(tmp_path, lambda: dict(state))
    status.start()
    status.mark_dirty()
    state["phase"] = "Succeeded"
    status.close()
    assert json.loads((tmp_path / "status.json").read_text())["phase"] == "Succeeded"
