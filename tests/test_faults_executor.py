"""Faults injected into real ``argofl run`` processes of a tiny FedAvg experiment (4 clients, 2 rounds,
600 examples), each compared with one undisturbed run of the same seed:

* SIGKILL of a train, the aggregate and the evaluate step: each is retried, and the final global
  checkpoint is byte-identical;
* SIGKILL of the executor after round 1: nothing of the run keeps running or writing, and
  ``argofl resume`` finishes it byte-identically;
* SIGINT of the executor: exit 130, every node in a final phase, ``finish`` closes the MLflow run, and it
  resumes byte-identically too.

Every run uses relative paths from the user's working directory (``--runs-dir``, ``--store``,
``--mlflow-uri sqlite:///…``, ``-p data-dir``), which must reach the steps in their own directories.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from argofl.pipelines.local.lifeline import WATCHDOG_ENV
from argofl.pipelines.progress import last_completed_round
from tests.conftest import FMNIST_DIR
from tests.processes import ARGOFL, argofl_env, processes_with_env, run_processes, wait_for

pytestmark = pytest.mark.slow

CONFIG: dict[str, Any] = {
    "experiment": "faults",
    "clients": 4,
    "min_clients": 2,
    "rounds": 2,
    "data_limit": 600,
    "local_epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "seed": 5,
    "cluster": {"retries": 2},
}
RELATIVE = [
    "--runs-dir",
    "runs",
    "--store",
    "store",
    "--mlflow-uri",
    "sqlite:///mlflow.db",
    "-p",
    "data-dir=fmnist",
]
FINAL = {"Succeeded", "Failed", "Error", "Skipped", "Omitted"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's working directory: the config and a relative data directory."""
    if not FMNIST_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not found at {FMNIST_DIR}")
    ws = tmp_path_factory.mktemp("faults")
    (ws / "faults.yaml").write_text(yaml.safe_dump(CONFIG))
    (ws / "fmnist").symlink_to(FMNIST_DIR)
    return ws


def _start(ws: Path, *args: str) -> subprocess.Popen[bytes]:
    # Steps are found through /proc (their environment names the run), which a step forked from the
    # fork server does not show (it has the server's): steps run as fresh processes here; the lifetime
    # of forked ones is tests/test_forkserver.py's.
    return subprocess.Popen(
        [*ARGOFL, *args],
        cwd=ws,
        env={**argofl_env(), "ARGOFL_FORKSERVER": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _run(ws: Path, *args: str) -> tuple[int, str]:
    proc = _start(ws, *args)
    out = proc.communicate(timeout=900)[0].decode()
    return proc.returncode, out


def _runs(ws: Path) -> set[Path]:
    return set((ws / "runs" / "workflows").glob("*"))


def _new_run(ws: Path, before: set[Path], proc: subprocess.Popen[bytes]) -> Path:
    wait_for(lambda: bool(_runs(ws) - before) or proc.poll() is not None, "the run directory")
    assert proc.poll() is None, proc.communicate()[0].decode()
    return (_runs(ws) - before).pop()


def _status(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def _final_bytes(ws: Path, run: str) -> bytes:
    return (ws / "store" / "faults" / run / "round-0002" / "global.safetensors").read_bytes()


def _round_of(node: dict[str, Any]) -> str:
    params = (node.get("inputs") or {}).get("parameters") or []
    return next((str(p.get("value")) for p in params if p.get("name") == "round"), "")


def _running_pods(run_dir: Path, template: str) -> list[dict[str, Any]]:
    return [
        n
        for n in (_status(run_dir).get("nodes") or {}).values()
        if n.get("type") == "Pod" and n.get("templateName") == template and n.get("phase") == "Running"
    ]


def _wait_round_1_done_and_round_2_training(run_dir: Path, proc: subprocess.Popen[bytes]) -> None:
    wait_for(
        lambda: proc.poll() is not None or (last_completed_round(_status(run_dir)) or 0) >= 1,
        "round 1 to be evaluated",
        timeout=600,
    )
    wait_for(
        lambda: (
            proc.poll() is not None or any("round 2" in _round_of(n) for n in _running_pods(run_dir, "train"))
        ),
        "round 2 to train",
        timeout=600,
    )
    assert proc.poll() is None, proc.communicate()[0].decode()


def _nothing_left(run: str, executor: int) -> bool:
    return not run_processes(run) and not processes_with_env(WATCHDOG_ENV, str(executor))


def _store_snapshot(ws: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in (ws / "store").rglob("*") if p.is_file()
    }


def _resume(ws: Path, run_dir: Path, was: str) -> str:
    before = _runs(ws)
    code, out = _run(ws, "resume", str(run_dir.relative_to(ws)))
    assert code == 0, out
    assert f"{run_dir.name} {was}: last completed round 1; resuming from round 2" in out, out
    (new,) = _runs(ws) - before
    return new.name


@pytest.fixture(scope="module")
def undisturbed(workspace: Path) -> bytes:
    """The final global checkpoint of an undisturbed run, run with relative paths."""
    before = _runs(workspace)
    code, out = _run(workspace, "run", "faults.yaml", *RELATIVE)
    assert code == 0, out
    (run_dir,) = _runs(workspace) - before
    # the relative paths were the user's, not each step's working directory
    assert (workspace / "mlflow.db").is_file()
    assert not list((run_dir / "nodes").rglob("mlflow.db"))
    assert json.loads((run_dir / "summary.json").read_text())["rounds"][1]["round"] == 2
    return _final_bytes(workspace, run_dir.name)


def test_sigkill_of_train_aggregate_and_evaluate_steps_is_retried_to_the_same_checkpoint(
    workspace: Path, undisturbed: bytes
) -> None:
    targets = {("train", "round 1"), ("aggregate", "round 1"), ("evaluate", "round 2")}
    killed: dict[tuple[str, str], str] = {}
    before = _runs(workspace)
    proc = _start(workspace, "run", "faults.yaml", *RELATIVE)
    run_dir = _new_run(workspace, before, proc)
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and len(killed) < len(targets):
            for template in {t for t, _ in targets}:
                for node in _running_pods(run_dir, template):
                    key = (template, _round_of(node) or "round 1")
                    if key[1].startswith("round 1 /"):
                        key = (template, "round 1")
                    if key not in targets or key in killed:
                        continue
                    pids = processes_with_env("ARGO_NODE_ID", str(node["id"]))
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    if pids:
                        killed[key] = str(node["id"])
            stop.wait(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = proc.communicate(timeout=900)[0].decode()
    stop.set()
    thread.join()
    assert proc.returncode == 0, out
    assert set(killed) == targets, (killed, out)
    nodes = _status(run_dir)["nodes"]
    for node_id in killed.values():
        assert nodes[node_id]["phase"] == "Failed", nodes[node_id]
        assert nodes[node_id]["outputs"]["exitCode"] == "137"
    assert _final_bytes(workspace, run_dir.name) == undisturbed


def test_sigkill_of_the_executor_leaves_nothing_running_and_resumes_byte_identically(
    workspace: Path, undisturbed: bytes
) -> None:
    before = _runs(workspace)
    proc = _start(workspace, "run", "faults.yaml", *RELATIVE)
    run_dir = _new_run(workspace, before, proc)
    _wait_round_1_done_and_round_2_training(run_dir, proc)
    proc.kill()
    proc.communicate(timeout=60)
    wait_for(lambda: _nothing_left(run_dir.name, proc.pid), "the run's processes to die with the executor")
    snapshot = _store_snapshot(workspace)
    threading.Event().wait(2.0)
    assert _store_snapshot(workspace) == snapshot, "something still writes into the store"
    resumed = _resume(workspace, run_dir, "stopped (its executor was killed)")
    assert _final_bytes(workspace, resumed) == undisturbed


def test_sigint_of_the_executor_ends_the_run_with_final_phases_and_resumes_byte_identically(
    workspace: Path, undisturbed: bytes
) -> None:
    before = _runs(workspace)
    proc = _start(workspace, "run", "faults.yaml", *RELATIVE)
    run_dir = _new_run(workspace, before, proc)
    _wait_round_1_done_and_round_2_training(run_dir, proc)
    code, out = _run(workspace, "resume", str(run_dir))
    assert code == 2, out
    assert "still running" in out, out
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 130, out
    assert f"argofl resume {run_dir}" in out
    assert _nothing_left(run_dir.name, proc.pid)
    status = _status(run_dir)
    assert status["phase"] == "Failed"
    assert status["message"] == "stopped: executor interrupted (SIGINT)"
    phases = {n["displayName"]: n["phase"] for n in status["nodes"].values()}
    assert set(phases.values()) <= FINAL, phases
    assert phases[f"{run_dir.name}.onExit"] == "Succeeded"
    # finish closed the MLflow run (named after the workflow) as the workflow failed
    with sqlite3.connect(workspace / "mlflow.db") as db:
        (state,) = db.execute("SELECT status FROM runs WHERE name = ?", (run_dir.name,)).fetchone()
    assert state == "FAILED"
    resumed = _resume(workspace, run_dir, "Failed")
    assert _final_bytes(workspace, resumed) == undisturbed
