"""The test servers (tests/servers.py: moto's S3, MLflow) die with the pytest that started them, also
when it is killed and its fixtures' finalizers never run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.processes import ROOT, processes_with_env, wait_for

MARK = "ARGOFL_TEST_SERVERS_OF"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider"]
"""A pytest with this repository's fixtures (tests/conftest.py)."""

INNER_TEST = """
import os, time
from pathlib import Path

def test_hold_the_servers(s3_server, mlflow_server):
    Path(os.environ["SERVERS_UP"]).write_text("up")
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_the_session_servers_die_with_a_killed_pytest(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this repository's settings
    up = tmp_path / "up"
    mark = uuid.uuid4().hex  # in the environment of the inner pytest and all it starts
    path = os.environ.get("PYTHONPATH", "")
    env = {
        **os.environ,
        MARK: mark,
        "SERVERS_UP": str(up),
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
    }
    inner = subprocess.Popen(
        [*PYTEST, str(tmp_path / "test_inner.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: up.exists() or inner.poll() is not None, "the inner pytest's servers", 300)
        assert inner.poll() is None, inner.communicate()[0].decode()
        servers = [pid for pid in processes_with_env(MARK, mark) if pid != inner.pid]
        assert len(servers) >= 2, servers  # moto_server, mlflow server (and its worker, the watchdog)
        inner.send_signal(sig)
        inner.wait(timeout=120)
        wait_for(lambda: not processes_with_env(MARK, mark), f"the servers {servers} to die with pytest", 60)
    finally:
        for pid in processes_with_env(MARK, mark):  # what outlived it (the old code), not to leak it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if inner.poll() is None:
            inner.kill()
            inner.wait()
