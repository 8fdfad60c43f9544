"""Faults of the services a run depends on, injected into tiny local runs (2 rounds, 4 clients,
600 examples): the S3 server going away and coming back mid-run, MLflow unreachable from the start,
and the MLflow server down when the run starts, then killed mid-run. Nothing is lost: the run
completes by retrying the steps that met the outage (exit code 75, transient), or fails with the
service's own error as its first line and is not retried into misleading messages."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import config_from_mapping
from argofl.pipelines.local import LocalRunResult, run_workflow
from argofl.steps.checkpoint import load_checkpoint
from argofl.steps.errors import EXIT_TRANSIENT
from argofl.steps.runinfo import RunLayout
from argofl.steps.store import open_store
from tests.servers import RunningServer, free_port, start_mlflow_server

pytestmark = pytest.mark.slow

TINY = {
    "experiment": "faults",
    "clients": 4,
    "min_clients": 2,
    "rounds": 2,
    "data_limit": 600,
    "batch_size": 32,
    "seed": 5,
}


class Outage:
    """A TCP relay in front of a server that can be taken down and brought back on the same port:
    what a service restart looks like to its clients (its data survives, as MinIO's volume does)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._open = self._open, []
        if listener:
            # close() alone does not wake a thread blocked in accept(), which would then take one
            # more connection; shutdown() does
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in conns:
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                taken_down = self._listener is not listener
            if taken_down:
                client.close()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=30)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _run(
    tmp_path: Path, params: dict[str, str], on_node: Callable[[dict[str, Any]], None] | None = None
) -> LocalRunResult:
    cfg = config_from_mapping(dict(TINY), name="faults", where="test")
    return run_workflow(manifest_for(cfg), params, runs_dir=tmp_path / "runs", on_node=on_node, parallelism=2)


def _attempts(result: LocalRunResult, template: str) -> list[dict[str, Any]]:
    return [
        n for n in result.status["nodes"].values() if n["type"] == "Pod" and n.get("templateName") == template
    ]


def _when(
    predicate: Callable[[dict[str, Any]], bool], action: Callable[[], None]
) -> Callable[[dict[str, Any]], None]:
    """An ``on_node`` hook that runs ``action`` (on its own thread) the first time ``predicate`` holds."""
    fired = threading.Event()

    def hook(node: dict[str, Any]) -> None:
        if not fired.is_set() and predicate(node):
            fired.set()
            threading.Thread(target=action, daemon=True).start()

    return hook


def _both(*hooks: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def hook(node: dict[str, Any]) -> None:
        for h in hooks:
            h(node)

    return hook


def _is(template: str, phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda n: n.get("type") == "Pod" and n.get("templateName") == template and n["phase"] == phase


def test_the_outage_relay_refuses_connections_once_down() -> None:
    """The fault tests rely on it: a relay taken down while its thread waits in accept() let one
    more connection through, so an init meant to fail reached MLflow and succeeded."""
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(8)
    with upstream:
        outage = Outage(f"http://127.0.0.1:{upstream.getsockname()[1]}")
        with socket.create_connection(("127.0.0.1", outage.port), timeout=5):
            upstream.accept()[0].close()  # the relay is up
        time.sleep(0.2)  # and its thread back in accept()
        outage.down()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", outage.port), timeout=5).close()
        outage.up()
        with socket.create_connection(("127.0.0.1", outage.port), timeout=5):
            upstream.accept()[0].close()
        outage.down()


def test_an_s3_restart_mid_run_is_retried_and_the_run_completes(
    tmp_path, s3_env, s3_server, fmnist_dir, monkeypatch
):
    outage = Outage(s3_server.endpoint)
    params = {
        "store": s3_env,
        "s3-endpoint": outage.endpoint,
        "mlflow-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "data-dir": str(fmnist_dir),
    }
    down_at_first_train = _when(_is("train", "Running"), outage.down)
    up_after_a_failure = _when(
        lambda n: n.get("type") == "Pod" and n["phase"] in ("Failed", "Error"), outage.up
    )
    try:
        result = _run(tmp_path, params, _both(down_at_first_train, up_after_a_failure))
    finally:
        outage.down()
    assert result.phase == "Succeeded", result.status.get("message")
    failed = [n for n in result.status["nodes"].values() if n["type"] == "Pod" and n["phase"] == "Failed"]
    assert failed, "the outage met no step"
    for node in failed:  # each met the outage, said so, and was retried
        assert node["outputs"]["exitCode"] == str(EXIT_TRANSIENT), node["message"]
        assert f"S3 endpoint {outage.endpoint}" in node["message"]
    store = open_store(s3_env)
    layout = RunLayout(f"faults/{result.name}")
    assert load_checkpoint(store, layout.global_key(2)).manifest.examples == 600


def test_mlflow_unreachable_at_start_fails_init_with_its_own_error(tmp_path, fmnist_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    params = {
        "store": (tmp_path / "store").as_uri(),
        "mlflow-uri": dead,
        "data-dir": str(fmnist_dir),
    }
    result = _run(tmp_path, params)
    assert result.phase == "Failed"
    inits = _attempts(result, "init")
    assert len(inits) == 3  # transient: retried, and every attempt says why
    for node in inits:
        assert node["outputs"]["exitCode"] == str(EXIT_TRANSIENT)
        assert node["message"].startswith(f"main: Error (exit code 75): error: MLflow at {dead} failed")
        assert "already" not in node["message"]
    from argofl.pipelines.progress import finished_steps, step_line

    lines = [step_line(s) for s in finished_steps(result.status) if s.template == "init"]
    assert len(lines) == 1
    assert f"error: MLflow at {dead} failed" in lines[0]


def test_mlflow_down_at_start_and_killed_mid_run_is_retried_and_every_round_is_logged(tmp_path, fmnist_dir):
    mlflow_dir = tmp_path / "mlflow"
    server: list[RunningServer] = [start_mlflow_server(mlflow_dir)]
    outage = Outage(server[0].endpoint)
    outage.down()  # init's first attempt meets it; the retry succeeds and the rounds must still run
    params = {
        "store": (tmp_path / "store").as_uri(),
        "mlflow-uri": outage.endpoint,
        "data-dir": str(fmnist_dir),
    }

    def kill() -> None:
        outage.down()
        server[0].stop()

    def restart() -> None:  # the same database, behind the same address
        server[0] = start_mlflow_server(mlflow_dir)
        outage.upstream = ("127.0.0.1", int(server[0].endpoint.rsplit(":", 1)[1]))
        outage.up()

    # the aggregate step needs no MLflow: evaluate, which logs the round, meets the outage
    hooks = _both(
        _when(_is("init", "Failed"), outage.up),
        _when(_is("train", "Running"), kill),
        _when(_is("evaluate", "Failed"), restart),
    )
    try:
        result = _run(tmp_path, params, hooks)
    finally:
        outage.down()
        server[0].stop()
    assert result.phase == "Succeeded", result.status.get("message")
    assert [n["phase"] for n in _attempts(result, "init")] == ["Failed", "Succeeded"]
    assert all(n["phase"] == "Succeeded" for n in _attempts(result, "aggregate"))
    failed = [n for n in _attempts(result, "evaluate") if n["phase"] == "Failed"]
    assert failed, "the outage met no evaluate step"
    assert all(n["outputs"]["exitCode"] == str(EXIT_TRANSIENT) for n in failed)
    assert all("MLflow at" in n["message"] for n in failed)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{mlflow_dir / 'mlflow.db'}")  # the server's own database
    outputs = {p["name"]: p["value"] for p in result.status["outputs"]["parameters"]}
    run_id = outputs["mlflow-run-id"]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "clients_aggregated"))
    assert steps == [1, 2]  # the round whose logging failed was logged by the retry, once
    assert client.get_run(run_id).info.status == "FINISHED"
