"""Behaviour of the local executor: retries, deadlines, daemons, private paths, refusal, parallelism."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from argofl.pipelines.local import LocalRunResult, UnsupportedWorkflow, WorkflowInputError, run_workflow


def _wf(templates: list[dict[str, Any]], entrypoint: str = "main", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "test-"},
        "spec": {"entrypoint": entrypoint, "templates": templates, **spec},
    }


def _nodes(result: LocalRunResult, display: str) -> list[dict[str, Any]]:
    return [n for n in result.status["nodes"].values() if n["displayName"] == display]


def _node(result: LocalRunResult, display: str) -> dict[str, Any]:
    found = _nodes(result, display)
    assert len(found) == 1, f"{len(found)} nodes named {display!r}"
    return found[0]


def _time(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_killed_step_is_retried(tmp_path: Path) -> None:
    marker = tmp_path / "killed-once"
    source = (
        "import os, pathlib, signal\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.write_text('x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "print('recovered on retry {{retries}}')\n"
    )
    wf = _wf(
        [
            {
                "name": "main",
                "retryStrategy": {"limit": "2"},
                "script": {"command": ["python"], "source": source},
            }
        ]
    )
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    assert result.phase == "Succeeded"
    retry = result.status["nodes"][result.name]
    assert retry["type"] == "Retry"
    first, second = (result.status["nodes"][c] for c in retry["children"])
    assert first["phase"] == "Failed"
    assert first["outputs"]["exitCode"] == "137"
    assert "exit code 137" in first["message"]
    assert second["phase"] == "Succeeded"
    assert second["outputs"]["result"] == "recovered on retry 1"
    assert retry["outputs"]["result"] == "recovered on retry 1"


@pytest.mark.parametrize("limit", [{"activeDeadlineSeconds": 1}, {"timeout": "1s"}])
def test_deadline_kills_the_whole_process_group(tmp_path: Path, limit: dict[str, Any]) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; echo started; wait"
    wf = _wf([{"name": "main", **limit, "container": {"command": ["sh", "-c", script]}}])
    started = time.monotonic()
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    assert time.monotonic() - started < 150  # killed at its deadline, long before `sleep 300` ends
    assert result.phase == "Failed"
    node = result.status["nodes"][result.name]
    assert node["message"] == "Pod was active on the node longer than the specified deadline"
    assert node["outputs"]["result"] == "started"
    child = int(pidfile.read_text())
    assert not _alive(child), f"background child {child} of the timed-out step is still running"


def test_workflow_deadline_fails_running_steps(tmp_path: Path) -> None:
    wf = _wf([{"name": "main", "container": {"command": ["sleep", "60"]}}], activeDeadlineSeconds=1)
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    assert result.phase == "Failed"
    assert result.status["nodes"][result.name]["message"] == "Step exceeded its deadline"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_daemon_gets_its_own_address_and_stops_with_its_scope(tmp_path: Path) -> None:
    port = _free_port()
    pidfile = tmp_path / "server.pid"
    server = (
        "import http.server, os, pathlib\n"
        "pathlib.Path(os.environ['PIDFILE']).write_text(str(os.getpid()))\n"
        "assert os.environ['POD_IP'] == os.environ['ARGO_POD_IP']\n"
        f"http.server.HTTPServer((os.environ['ARGO_POD_IP'], {port}), "
        "http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    client = (
        "import urllib.request\n"
        f"print(urllib.request.urlopen('http://{{{{inputs.parameters.ip}}}}:{port}/').status)\n"
    )
    wf = _wf(
        [
            {
                "name": "main",
                "steps": [
                    [{"name": "serve", "template": "serve"}],
                    [{"name": "after", "template": "after"}],
                ],
            },
            {
                "name": "serve",
                "dag": {
                    "tasks": [
                        {"name": "server", "template": "server"},
                        {
                            "name": "client",
                            "depends": "server",
                            "template": "client",
                            "arguments": {"parameters": [{"name": "ip", "value": "{{tasks.server.ip}}"}]},
                        },
                    ]
                },
            },
            {
                "name": "server",
                "daemon": True,
                "script": {
                    "command": ["python"],
                    "source": server,
                    "env": [{"name": "PIDFILE", "value": str(pidfile)}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": port}},
                },
            },
            {
                "name": "client",
                "inputs": {"parameters": [{"name": "ip"}]},
                "script": {"command": ["python"], "source": client},
            },
            {"name": "after", "container": {"command": ["true"]}},
        ]
    )
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    assert result.phase == "Succeeded", result.status.get("message")
    server_node = _node(result, "server")
    ip = server_node["podIP"]
    assert ipaddress.ip_address(ip).is_loopback
    assert ip != "127.0.0.1"
    assert _node(result, "client")["inputs"]["parameters"][0]["value"] == ip
    assert _node(result, "client")["outputs"]["result"] == "200"
    assert server_node["phase"] == "Succeeded"
    assert not _alive(int(pidfile.read_text()))
    # stopped when its scope (the DAG) ended, before the next step group started
    assert _time(server_node["finishedAt"]) <= _time(_node(result, "after")["startedAt"])
    assert _time(server_node["finishedAt"]) <= _time(_node(result, "serve")["finishedAt"])


def test_concurrent_nodes_writing_the_same_declared_paths_do_not_clash(tmp_path: Path) -> None:
    out_dir = "/mnt/argofl-local-test-out"
    source = (
        f"mkdir {out_dir}\n"  # fails if another node's directory were visible
        f"echo {{{{inputs.parameters.n}}}} > {out_dir}/value\n"
        "echo {{inputs.parameters.n}} > /tmp/argofl-local-test-value\n"
        "sleep 0.5\n"
        f"cat {out_dir}/value /tmp/argofl-local-test-value\n"
    )
    wf = _wf(
        [
            {
                "name": "main",
                "steps": [
                    [
                        {
                            "name": "write",
                            "template": "write",
                            "arguments": {"parameters": [{"name": "n", "value": "{{item}}"}]},
                            "withSequence": {"count": "4"},
                        }
                    ],
                    [
                        {
                            "name": "gather",
                            "template": "gather",
                            "arguments": {
                                "parameters": [
                                    {"name": "all", "value": "{{steps.write.outputs.parameters.v}}"}
                                ]
                            },
                        }
                    ],
                ],
            },
            {
                "name": "write",
                "inputs": {"parameters": [{"name": "n"}]},
                "script": {"command": ["sh"], "source": source},
                "outputs": {
                    "parameters": [
                        {"name": "v", "valueFrom": {"path": f"{out_dir}/value"}},
                        {"name": "t", "valueFrom": {"path": "/tmp/argofl-local-test-value"}},
                    ],
                    "artifacts": [{"name": "dir", "path": out_dir}],
                },
            },
            {
                "name": "gather",
                "inputs": {"parameters": [{"name": "all"}]},
                "container": {"command": ["echo", "{{inputs.parameters.all}}"]},
            },
        ]
    )
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    assert result.phase == "Succeeded", result.status.get("message")
    for i in range(4):
        node = _node(result, f"write({i}:{i})")
        params = {p["name"]: p["value"] for p in node["outputs"]["parameters"]}
        assert params == {"v": str(i), "t": str(i)}
        assert node["outputs"]["result"] == f"{i}\n{i}"
    assert json.loads(_node(result, "gather")["outputs"]["result"]) == ["0", "1", "2", "3"]
    assert not Path(out_dir).exists()


def test_directory_artifacts_round_trip(tmp_path: Path) -> None:
    wf = _wf(
        [
            {
                "name": "main",
                "dag": {
                    "tasks": [
                        {"name": "make", "template": "make"},
                        {
                            "name": "use",
                            "depends": "make",
                            "template": "use",
                            "arguments": {
                                "artifacts": [
                                    {"name": "tree", "from": "{{tasks.make.outputs.artifacts.tree}}"},
                                    {"name": "flat", "from": "{{tasks.make.outputs.artifacts.flat}}"},
                                ]
                            },
                        },
                    ]
                },
            },
            {
                "name": "make",
                "container": {
                    "command": ["sh", "-c", "mkdir -p /data/out/sub && echo a > /data/out/sub/a.txt"]
                },
                "outputs": {
                    "artifacts": [
                        {"name": "tree", "path": "/data/out"},
                        {
                            "name": "flat",
                            "path": "/data/out",
                            "archive": {"none": {}},
                            "s3": {"key": "k/flat"},
                        },
                    ]
                },
            },
            {
                "name": "use",
                "inputs": {
                    "artifacts": [{"name": "tree", "path": "/in/tree"}, {"name": "flat", "path": "/in/flat"}]
                },
                "container": {"command": ["sh", "-c", "cat /in/tree/sub/a.txt /in/flat/sub/a.txt"]},
            },
        ]
    )
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    assert result.phase == "Succeeded", result.status.get("message")
    assert _node(result, "use")["outputs"]["result"] == "a\na"
    tree = _node(result, "make")["outputs"]["artifacts"][0]
    assert tree["s3"]["key"] == f"{result.name}/{_node(result, 'make')['id']}/tree.tgz"
    assert (tmp_path / "runs" / "artifacts" / "k" / "flat" / "sub" / "a.txt").read_text() == "a\n"


def test_template_parallelism_runs_loop_children_in_index_order(tmp_path: Path) -> None:
    wf = _wf(
        [
            {
                "name": "main",
                "parallelism": 1,
                "steps": [
                    [
                        {
                            "name": "round",
                            "template": "round",
                            "arguments": {"parameters": [{"name": "i", "value": "{{item}}"}]},
                            "withSequence": {"count": "5"},
                        }
                    ]
                ],
            },
            {
                "name": "round",
                "inputs": {"parameters": [{"name": "i"}]},
                "container": {"command": ["sh", "-c", "sleep 0.1; echo {{inputs.parameters.i}}"]},
            },
        ]
    )
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    assert result.phase == "Succeeded"
    rounds = [_node(result, f"round({i}:{i})") for i in range(5)]
    for earlier, later in itertools.pairwise(rounds):
        assert _time(earlier["finishedAt"]) <= _time(later["startedAt"])


def test_unsupported_field_is_refused_with_its_path(tmp_path: Path) -> None:
    wf = _wf(
        [
            {"name": "main", "steps": [[{"name": "a", "template": "k8s"}]]},
            {"name": "k8s", "suspend": {}},
        ]
    )
    with pytest.raises(UnsupportedWorkflow) as info:
        run_workflow(wf, runs_dir=tmp_path / "runs")
    assert str(info.value).startswith("spec.templates[1].suspend: suspend templates are not supported")
    assert not (tmp_path / "runs").exists()
    mounts = _wf([{"name": "main", "container": {"command": ["true"], "volumeMounts": [{"name": "v"}]}}])
    with pytest.raises(
        UnsupportedWorkflow, match=r"^spec\.templates\[0\]\.container\.volumeMounts\[0\]: volume 'v'"
    ):
        run_workflow(mounts, runs_dir=tmp_path / "runs")
    claims = dict(mounts, spec={**mounts["spec"], "volumes": [{"name": "v", "persistentVolumeClaim": {}}]})
    with pytest.raises(UnsupportedWorkflow, match=r"^spec\.volumes\[0\]: only emptyDir volumes"):
        run_workflow(claims, runs_dir=tmp_path / "runs")


def test_empty_dir_scratch_mounts_run_as_host_paths(tmp_path: Path) -> None:
    """readOnlyRootFilesystem + an emptyDir at /tmp (what argofl's manifests do) runs locally."""
    wf = _wf(
        [
            {
                "name": "main",
                "container": {
                    "command": [
                        "sh",
                        "-c",
                        "echo scratch > /tmp/argofl-scratch-$$ && rm /tmp/argofl-scratch-$$",
                    ],
                    "securityContext": {"readOnlyRootFilesystem": True},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                },
            }
        ]
    )
    wf["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    assert run_workflow(wf, runs_dir=tmp_path / "runs").phase == "Succeeded"


def test_cluster_only_fields_are_ignored(tmp_path: Path) -> None:
    wf = _wf(
        [
            {
                "name": "main",
                "nodeSelector": {"gpu": "yes"},
                "container": {
                    "image": "busybox",
                    "imagePullPolicy": "Always",
                    "resources": {"limits": {"cpu": "1"}},
                    "command": ["echo", "ok"],
                },
            }
        ],
        serviceAccountName="sa",
        podGC={"strategy": "OnPodCompletion"},
        ttlStrategy={"secondsAfterCompletion": 10},
    )
    assert run_workflow(wf, runs_dir=tmp_path / "runs").phase == "Succeeded"


def test_bad_parameters_are_named(tmp_path: Path) -> None:
    wf = _wf(
        [
            {
                "name": "main",
                "inputs": {"parameters": [{"name": "message"}]},
                "container": {"command": ["echo"]},
            }
        ]
    )
    with pytest.raises(WorkflowInputError, match=r"inputs\.parameters\.message"):
        run_workflow(wf, runs_dir=tmp_path / "runs")
    wf["spec"]["arguments"] = {"parameters": [{"name": "message", "value": "hi"}]}
    with pytest.raises(WorkflowInputError, match="unknown parameter 'nope'"):
        run_workflow(wf, {"nope": "1"}, runs_dir=tmp_path / "runs")
    typo = _wf([{"name": "main", "container": {"command": ["echo", "{{inputs.parameters.mesage}}"]}}])
    with pytest.raises(WorkflowInputError, match=r"\{\{inputs\.parameters\.mesage\}\}"):
        run_workflow(typo, runs_dir=tmp_path / "runs")


def test_workflow_template_with_arguments_and_progress(tmp_path: Path) -> None:
    template = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "greet"},
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "who", "value": "world"}]},
            "templates": [
                {"name": "main", "container": {"command": ["echo", "hello {{workflow.parameters.who}}"]}}
            ],
        },
    }
    seen: list[tuple[str, str]] = []
    result = run_workflow(
        template,
        {"who": "argofl"},
        runs_dir=tmp_path / "runs",
        on_node=lambda n: seen.append((n["displayName"], n["phase"])),
    )
    assert result.phase == "Succeeded"
    assert result.name.startswith("greet-")
    assert len(result.name) == len("greet-") + 5
    assert result.status["nodes"][result.name]["outputs"]["result"] == "hello argofl"
    assert [phase for _, phase in seen] == ["Pending", "Running", "Succeeded"]
    on_disk = json.loads((result.run_dir / "status.json").read_text())
    assert on_disk["phase"] == "Succeeded"
    assert (result.run_dir / "logs" / result.name / "attempt-0.log").read_text() == "hello argofl\n"


def test_python_is_the_running_interpreter(tmp_path: Path) -> None:
    import sys

    wf = _wf(
        [{"name": "main", "script": {"command": ["python3"], "source": "import sys; print(sys.executable)"}}]
    )
    result = run_workflow(wf, runs_dir=tmp_path / "runs", env={"EXTRA": "1"})
    assert result.status["nodes"][result.name]["outputs"]["result"] == sys.executable
    os.environ.pop("EXTRA", None)


def test_retry_expression_sees_last_retry(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    source = (
        "import pathlib, sys\n"
        f"path = pathlib.Path({str(counter)!r})\n"
        "n = int(path.read_text()) if path.exists() else 0\n"
        "path.write_text(str(n + 1))\n"
        "sys.exit(2 if n < 2 else 3)\n"
    )
    strategy = {
        "limit": "10",
        "expression": "asInt(lastRetry.exitCode) == 2 && asInt(lastRetry.duration) < 120 "
        "&& asInt(retries) < 5",
    }
    wf = _wf(
        [{"name": "main", "retryStrategy": strategy, "script": {"command": ["python"], "source": source}}]
    )
    result = run_workflow(wf, runs_dir=tmp_path / "runs")
    assert result.phase == "Failed"
    retry = result.status["nodes"][result.name]
    codes = [result.status["nodes"][c]["outputs"]["exitCode"] for c in retry["children"]]
    assert codes == ["2", "2", "3"]
    assert retry["message"] == "retryStrategy.expression evaluated to false"


def test_loop_children_are_listed_in_index_order_whatever_thread_came_first() -> None:
    """Loop children start on their own threads; the group lists them by index, as Argo does."""
    from argofl.pipelines.local.graph import NodeGraph
    from argofl.pipelines.local.model import Phase

    graph = NodeGraph("wf")
    running = Phase.RUNNING
    group = graph.create("wf.map", "TaskGroup", running, boundary_id=None, parents=[], template_name="m")
    other = graph.create("wf.other", "Pod", running, boundary_id=None, parents=[group.id], template_name="o")
    for index in (2, 0, 3, 1):  # the order threads happened to get there
        graph.create(
            f"wf.map({index}:item {index})", "Pod", running,
            boundary_id=None, parents=[group.id], template_name="m",
        )  # fmt: skip
    names = [graph.nodes[c].name for c in group.children]
    assert names == ["wf.other", *(f"wf.map({i}:item {i})" for i in range(4))]
    assert other.id in group.children
