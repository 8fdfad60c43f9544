"""Interrupting ``argofl local run`` ends the whole run: SIGINT and SIGTERM stop every step process and
what it started, the nodes end in a final phase and the exit handler runs; SIGKILL of the executor takes
every step process with it. Each test checks the process table (/proc) afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from argofl.pipelines.local.lifeline import WATCHDOG_ENV
from tests.processes import ARGOFL, argofl_env, processes_with_env, run_processes, wait_for

FINAL = {"Succeeded", "Failed", "Error", "Skipped", "Omitted"}

SLEEPY: dict[str, Any] = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"generateName": "sleepy-"},
    "spec": {
        "entrypoint": "main",
        "onExit": "bye",
        "templates": [
            {
                "name": "main",
                "dag": {
                    "tasks": [
                        {"name": "nap", "template": "nap"},
                        {"name": "spawner", "template": "spawner"},
                        {"name": "after", "template": "nap", "depends": "nap"},
                    ]
                },
            },
            {
                "name": "nap",
                "retryStrategy": {"limit": 2},
                "container": {"image": "busybox", "command": ["sleep", "600"]},
            },
            {
                # a python step that starts a grandchild and waits
                "name": "spawner",
                "script": {
                    "image": "python",
                    "command": ["python"],
                    "source": "import subprocess, time\n"
                    "subprocess.Popen(['sleep', '601'])\ntime.sleep(600)\n",
                },
            },
            {
                "name": "bye",
                "container": {
                    "image": "busybox",
                    "command": ["sh", "-c", 'echo {{workflow.status}} > "$BYE"'],
                    "env": [{"name": "BYE", "value": "{{workflow.parameters.bye}}"}],
                },
            },
        ],
        "arguments": {"parameters": [{"name": "bye", "value": ""}]},
    },
}


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, str]:
    """``argofl local run`` of the sleepy workflow with its default runs dir, from ``tmp_path``; returns
    the process, its run directory and workflow name once all three step processes are up."""
    (tmp_path / "sleepy.yaml").write_text(yaml.safe_dump(SLEEPY))
    proc = subprocess.Popen(
        [*ARGOFL, "local", "run", "sleepy.yaml", "-p", f"bye={tmp_path / 'bye.txt'}"],
        cwd=tmp_path,
        env=argofl_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    runs = tmp_path / "runs" / "local"
    wait_for(lambda: any(runs.glob("*/status.json")) or proc.poll() is not None, "the run directory")
    assert proc.poll() is None, proc.communicate()[0].decode()
    run_dir = next(runs.glob("*/status.json")).parent
    name = run_dir.name
    # sleep 600, the python step and its grandchild
    wait_for(lambda: len(run_processes(name)) >= 3, "the step processes to start")
    return proc, run_dir, name


def _gone(name: str, executor: int) -> bool:
    return not run_processes(name) and not processes_with_env(WATCHDOG_ENV, str(executor))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_stops_every_step_runs_the_exit_handler_and_leaves_final_phases(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc, run_dir, name = _start(tmp_path)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 128 + sig, output
    assert not run_processes(name), f"left running: {run_processes(name)}"
    wait_for(lambda: _gone(name, proc.pid), "the watchdog to exit")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "Failed"
    assert status["message"] == f"stopped: executor interrupted ({sig.name})"
    phases = {n["displayName"]: (n["phase"], n.get("message", "")) for n in status["nodes"].values()}
    assert {phase for phase, _ in phases.values()} <= FINAL, phases
    for step in ("nap", "spawner"):
        assert phases[step] == ("Failed", f"stopped: executor interrupted ({sig.name})"), phases
    assert phases["after"][0] == "Omitted"
    # the exit handler ran, after the stop, and saw the workflow failed (as `argo stop` runs it)
    assert phases[f"{name}.onExit"][0] == "Succeeded"
    assert (tmp_path / "bye.txt").read_text().strip() == "Failed"


def test_sigkill_of_the_executor_takes_every_step_process_with_it(tmp_path: Path) -> None:
    proc, _, name = _start(tmp_path)
    before = run_processes(name)
    proc.kill()
    proc.wait(timeout=60)
    wait_for(lambda: _gone(name, proc.pid), f"processes {before} to die with the executor")


def test_a_daemon_outlives_the_node_thread_that_started_it(tmp_path: Path) -> None:
    """The parent-death signal is tied to the thread that forks; a daemon pod outlives the node thread
    that started it, so it must not be the one that forked it: the daemon keeps running."""
    manifest: dict[str, Any] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "daemon-"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {
                    "name": "main",
                    "dag": {
                        "tasks": [
                            {"name": "server", "template": "server"},
                            {"name": "later", "template": "later", "depends": "server"},
                        ]
                    },
                },
                {
                    "name": "server",
                    "daemon": True,
                    "container": {
                        "image": "x",
                        "command": ["sleep", "600"],
                        "env": [{"name": "MARK", "value": "{{workflow.name}}-daemon"}],
                    },
                },
                {
                    # passes only when the daemon is still running after its node thread returned
                    "name": "later",
                    "container": {
                        "image": "x",
                        "command": [
                            "sh",
                            "-c",
                            "sleep 2; grep -ql MARK={{workflow.name}}-daemon /proc/[0-9]*/environ",
                        ],
                    },
                },
            ],
        },
    }
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(manifest))
    done = subprocess.run(
        [*ARGOFL, "local", "run", "d.yaml", "--json"],
        cwd=tmp_path,
        env=argofl_env(),
        capture_output=True,
        timeout=300,
    )
    status = json.loads(done.stdout)
    assert done.returncode == 0, status
    phases = {n["displayName"]: n["phase"] for n in status["nodes"].values()}
    assert phases["later"] == "Succeeded", phases
    assert phases["server"] == "Succeeded", phases


def test_the_watchdog_exits_with_the_executor_after_a_normal_run(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Workflow",
                "metadata": {"generateName": "ok-"},
                "spec": {
                    "entrypoint": "main",
                    "templates": [{"name": "main", "container": {"image": "x", "command": ["true"]}}],
                },
            }
        )
    )
    proc = subprocess.Popen([*ARGOFL, "local", "run", "ok.yaml"], cwd=tmp_path, env=argofl_env())
    assert proc.wait(timeout=120) == 0
    wait_for(lambda: not processes_with_env(WATCHDOG_ENV, str(proc.pid)), "the watchdog to exit")


def test_steps_refused_after_an_interrupt_give_their_pod_slot_back(tmp_path: Path) -> None:
    """With parallelism 1, a step waiting for the slot is refused once the run is interrupted; the slot
    must come back, or the next task (here one that runs whatever its dependencies did) waits forever."""
    done = "(nap.Succeeded || nap.Failed) && (queued.Succeeded || queued.Failed)"
    manifest: dict[str, Any] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "queue-"},
        "spec": {
            "entrypoint": "main",
            "parallelism": 1,
            "templates": [
                {
                    "name": "main",
                    "dag": {
                        "tasks": [
                            {"name": "nap", "template": "nap"},
                            {"name": "queued", "template": "nap"},
                            {"name": "after", "template": "nap", "depends": done},
                        ]
                    },
                },
                {"name": "nap", "container": {"image": "x", "command": ["sleep", "600"]}},
            ],
        },
    }
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(manifest))
    proc = subprocess.Popen(
        [*ARGOFL, "local", "run", "q.yaml", "--json"], cwd=tmp_path, env=argofl_env(), stdout=subprocess.PIPE
    )
    wait_for(lambda: any((tmp_path / "runs" / "local").glob("*/status.json")), "the run directory")
    name = next((tmp_path / "runs" / "local").glob("*/status.json")).parent.name
    wait_for(lambda: len(run_processes(name)) == 1, "the first step to start")
    proc.send_signal(signal.SIGINT)
    status = json.loads(proc.communicate(timeout=120)[0])
    assert proc.returncode == 130
    phases = {n["displayName"]: n["phase"] for n in status["nodes"].values()}
    assert phases == {name: "Failed", "nap": "Failed", "queued": "Failed", "after": "Failed"}, phases


def test_a_second_signal_stops_the_exit_handler_too(tmp_path: Path) -> None:
    manifest: dict[str, Any] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "slow-exit-"},
        "spec": {
            "entrypoint": "nap",
            "onExit": "nap",
            "templates": [{"name": "nap", "container": {"image": "x", "command": ["sleep", "600"]}}],
        },
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(manifest))
    proc = subprocess.Popen(
        [*ARGOFL, "local", "run", "s.yaml", "--json"], cwd=tmp_path, env=argofl_env(), stdout=subprocess.PIPE
    )
    wait_for(lambda: any((tmp_path / "runs" / "local").glob("*/status.json")), "the run directory")
    run_dir = next((tmp_path / "runs" / "local").glob("*/status.json")).parent
    wait_for(lambda: len(run_processes(run_dir.name)) == 1, "the step to start")
    proc.send_signal(signal.SIGINT)

    def exit_handler_running() -> bool:
        nodes = (json.loads((run_dir / "status.json").read_text()).get("nodes") or {}).values()
        return any(n["name"].endswith(".onExit") and n["phase"] == "Running" for n in nodes)

    wait_for(exit_handler_running, "the exit handler to start")
    proc.send_signal(signal.SIGINT)
    status = json.loads(proc.communicate(timeout=120)[0])
    assert proc.returncode == 130
    assert not run_processes(run_dir.name)
    phases = {n["displayName"]: (n["phase"], n.get("message")) for n in status["nodes"].values()}
    assert phases[f"{run_dir.name}.onExit"] == ("Failed", "stopped: executor interrupted (SIGINT)"), phases


RUN_LOCAL = """
import sys, yaml
from argofl import api
manifest = yaml.safe_load(open(sys.argv[1]))
try:
    result = api.run_local(manifest, {"bye": sys.argv[2]}, runs_dir=sys.argv[3])
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(3)
print("returned", result.phase, flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_the_python_apis_run_local_stops_the_run_as_argofl_run_does(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C in a script or notebook calling ``run_local``: the run stops as ``argofl run`` stops it (its
    exit handler runs), then the signal takes its usual effect: KeyboardInterrupt, or the end of the
    process for SIGTERM."""
    (tmp_path / "sleepy.yaml").write_text(yaml.safe_dump(SLEEPY))
    bye, runs = tmp_path / "bye.txt", tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_LOCAL, str(tmp_path / "sleepy.yaml"), str(bye), str(runs)],
        cwd=tmp_path,
        env=argofl_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    workflows = runs / "workflows"
    wait_for(lambda: any(workflows.glob("*/status.json")) or proc.poll() is not None, "the run directory")
    assert proc.poll() is None, proc.communicate()[0].decode()
    run_dir = next(workflows.glob("*/status.json")).parent
    wait_for(lambda: len(run_processes(run_dir.name)) >= 3, "the step processes to start")
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0].decode()
    if sig == signal.SIGINT:
        assert proc.returncode == 3, output
        assert output.splitlines()[-1] == "KeyboardInterrupt"
    else:
        assert proc.returncode == -sig, output
    assert f"argofl: {sig.name}: stopping the run; its exit handler runs" in output
    assert not run_processes(run_dir.name), f"left running: {run_processes(run_dir.name)}"
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["phase"], status["message"]) == ("Failed", f"stopped: executor interrupted ({sig.name})")
    assert bye.read_text().strip() == "Failed"  # the exit handler ran
