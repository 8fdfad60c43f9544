"""Faults of split-learning runs on the local executor: a server of a killed run still listening, and the
split server SIGKILLed mid-round (fails fast, names the server, loses nothing, resumes byte-identically)."""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import load_config
from argofl.pipelines.kinds import KINDS
from argofl.pipelines.local import LocalRunResult, run_workflow
from argofl.pipelines.parameters import resubmission_manifest
from argofl.pipelines.progress import last_completed_round
from argofl.pipelines.split_config import SplitExperimentConfig
from argofl.steps.checkpoint import checkpoint_exists
from argofl.steps.runinfo import RunLayout
from argofl.steps.split.server import SplitServer
from argofl.steps.store import FileStore, open_store

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, *, mode: str = "vanilla", rounds: int = 1, port: int = 18080) -> Path:
    """A tiny split config; ``idle_timeout`` is long enough that waiting it out would show."""
    path = tmp_path / f"fault-{mode}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "split",
                "experiment": f"fault-{mode}",
                "data_limit": 600,
                "clients": 2,
                "min_clients": 2,
                "rounds": rounds,
                "batch_size": 32,
                "seed": 3,
                "split": {"mode": mode, "cut": "pool2", "port": port, "idle_timeout": 120},
            }
        )
    )
    return path


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def test_a_server_left_listening_by_another_run_does_not_poison_the_next_split_run(tmp_path, fmnist_dir):
    # A killed run's server keeps listening where the first daemon of a local run used to be put
    # (127.0.0.2) on the configured port, with that run's token.
    port = _free_port("127.0.0.2")
    stale = SplitServer(
        make_top=lambda: None,
        labels_of=lambda client, idx: np.zeros(len(idx), np.int64),
        token="token-of-a-killed-run",
        clients=["0", "1"],
        mode="splitfed",
        activation_shape=(1,),
        host="127.0.0.2",
        port=port,
    ).start()
    try:
        result = CliRunner().invoke(
            cli,
            [
                "run",
                str(_config(tmp_path, port=port)),
                "--runs-dir",
                str(tmp_path / "runs"),
                "-p",
                f"data-dir={fmnist_dir}",
            ],
        )
    finally:
        stale.close()
    assert result.exit_code == 0, result.output
    assert "round 1: test accuracy" in result.output
    assert all(s.seen == 0 for s in stale.clients.values())  # nobody talked to the stale server


def _server_pid(workflow: str, round: int) -> int | None:
    """The pid of this test's run's split-server process of ``round`` (found by its command line)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if (
            "split-server" in argv
            and f"round {round}" in argv
            and any(a.endswith(f"/{workflow}") for a in argv)
        ):
            return int(proc.name)
    return None


class _KillServer:
    """on_node hook: SIGKILL the split server once a client of ``round`` has started."""

    def __init__(self, round: int) -> None:
        self.round = round
        self.killed: int | None = None
        self.lock = threading.Lock()

    def __call__(self, node: dict[str, Any]) -> None:
        if node.get("templateName") != "split-client" or node.get("phase") != "Running":
            return
        if f"round {self.round} /" not in str(node.get("displayName", "")):
            return
        with self.lock:
            if self.killed is None:
                pid = _server_pid(re.split(r"[.\[]", str(node["name"]))[0], self.round)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid


def _run(manifest: dict[str, Any], runs: Path, fmnist_dir: Path, on_node: Any = None) -> LocalRunResult:
    params = {
        "store": (runs / "store").as_uri(),
        "mlflow-uri": f"sqlite:///{runs / 'mlflow.db'}",
        "data-dir": str(fmnist_dir),
    }
    return run_workflow(
        manifest,
        params,
        runs_dir=runs / "workflows",
        artifact_store=FileStore(runs / "artifacts"),
        on_node=on_node,
        parallelism=3,
    )


def _logs(result: LocalRunResult, template: str) -> str:
    ids = [n["id"] for n in result.status["nodes"].values() if n.get("templateName") == template]
    return "".join(
        p.read_text(errors="replace") for i in ids for p in (result.run_dir / "logs" / i).glob("*.log")
    )


def test_split_server_killed_mid_round_fails_fast_naming_it_and_the_run_resumes_byte_identical(
    tmp_path, fmnist_dir, monkeypatch
):
    # the server is found by its command line in /proc, which a step forked from the fork server does
    # not show (it shows the server's): steps run as fresh processes here (forked ones' lifetime is
    # tests/test_forkserver.py's)
    monkeypatch.setenv("ARGOFL_FORKSERVER", "0")
    cfg = load_config(_config(tmp_path, rounds=2))
    assert isinstance(cfg, SplitExperimentConfig)
    manifest = manifest_for(cfg)
    runs = tmp_path / "runs"
    store = open_store((runs / "store").as_uri())
    experiment = cfg.settings.experiment

    killer = _KillServer(round=2)
    broken = _run(manifest, runs, fmnist_dir, on_node=killer)
    assert killer.killed is not None, "the round-2 server was never seen running"
    assert broken.phase == "Failed"
    assert last_completed_round(broken.status, KINDS["split"].display) == 1
    # the clients and evaluate each fail at once with one line naming the server that is gone, and
    # evaluate did not wait out its timeout (idle_timeout + 60 s) for a half that cannot come
    server = next(
        n
        for n in broken.status["nodes"].values()
        if n.get("templateName") == "split-server" and n.get("podIP") and "round 2" in str(n.get("inputs"))
    )
    url = f"http://{server['podIP']}:{cfg.split.port}"
    assert f"error: split server {url} is not running" in _logs(broken, "split-client")
    evaluate = _logs(broken, "evaluate")
    assert "round 2: the server's half will never appear" in evaluate
    assert f"split server {url} is not running" in evaluate
    assert "never appeared" not in evaluate
    # nothing of round 1 is lost
    key = f"{experiment}/{broken.name}"
    assert checkpoint_exists(store, RunLayout(key).global_key(1))
    assert store.exists(RunLayout(key).eval_key(1))

    # resume as `argofl resubmit` does, and compare with an uninterrupted run
    old = copy.deepcopy(manifest)
    old["metadata"]["name"] = broken.name
    resumed = _run(resubmission_manifest(old, 2, key), runs, fmnist_dir)
    assert resumed.phase == "Succeeded", resumed.status.get("message")
    reference = _run(manifest, runs, fmnist_dir)
    assert reference.phase == "Succeeded", reference.status.get("message")
    for part in ("global", "top", "updates/client-0", "updates/client-1"):
        got, want = (
            store.get_bytes(f"{experiment}/{r.name}/round-0002/{part}.safetensors")
            for r in (resumed, reference)
        )
        assert got == want, part
    assert _server_pid(broken.name, 2) is None


@pytest.fixture
def serving(tmp_path, fmnist_dir, monkeypatch) -> Any:
    """An initialised split run and the command line of its round-1 server (on a free loopback port)."""
    from argofl.steps.settings import Settings
    from argofl.steps.split import steps as split_steps
    from argofl.steps.split.settings import SplitOptions

    env = {
        "ARGOFL_STORE": (tmp_path / "store").as_uri(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ARGOFL_SPLIT_BIND": "127.0.0.1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_mapping(
        {"experiment": "sig", "data_dir": str(fmnist_dir), "data_limit": 300, "clients": 2, "rounds": 1},
        where="test",
    )
    options = SplitOptions(port=_free_port("127.0.0.1"), idle_timeout=3600)
    split_steps.init(settings, options, run_key="sig/run-1", workflow_name="run-1", workflow_uid="u")
    argofl = str(Path(sys.executable).parent / "argofl")
    argv = [argofl, "step", "split-server", "--run-key", "sig/run-1", "--round", "1"]
    token = split_steps.load_token(open_store(env["ARGOFL_STORE"]), "sig/run-1")
    return argv, f"http://127.0.0.1:{options.port}", token


def _await_serving(url: str, token: str, proc: subprocess.Popen[bytes]) -> None:
    from argofl.steps.split.client import SplitClientError, probe

    for _ in range(600):  # a hang guard, not a timing assertion
        assert proc.poll() is None, "the server exited before serving"
        try:
            if probe(url, run="sig/run-1", round=1, token=token) == "serving":
                return
        except SplitClientError:
            time.sleep(0.2)
    pytest.fail(f"the server at {url} never served")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_the_split_server_exits_on_sigterm_saying_so(serving):
    from argofl.steps.split.client import ServerGone, probe

    argv, url, token = serving
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        _await_serving(url, token, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)  # a hang guard
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "round 1: the split server was stopped by SIGTERM" in err.decode()
    with pytest.raises(ServerGone):
        probe(url, run="sig/run-1", round=1, token=token)


def test_the_split_server_dies_with_the_process_that_started_it(serving):
    from argofl.steps.split.client import ServerGone, probe

    argv, url, token = serving
    launcher = (
        "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); p.wait()"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher, *argv], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        _await_serving(url, token, parent)
        parent.kill()  # SIGKILL: like a killed executor, it cannot stop its children
        parent.wait()
        for _ in range(600):  # a hang guard, not a timing assertion
            if _gone(pid):
                break
            time.sleep(0.2)
        assert _gone(pid), "the server outlived the process that started it"
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
    with pytest.raises(ServerGone):
        probe(url, run="sig/run-1", round=1, token=token)
