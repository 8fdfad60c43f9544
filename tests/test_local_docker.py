"""``--runtime docker``: the local executor runs each pod as a container of its image, with the pod spec's
security context, volumes, limits, deadlines, retries, daemons and outputs, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from argofl.pipelines.local import DockerOptions, LocalRunResult, run_workflow
from argofl.pipelines.local.containers import DockerRuntime
from argofl.pipelines.local.reaper import reap
from tests.docker_env import docker_cli, leftovers, tools_image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARGOFL = str(Path(sys.executable).with_name("argofl"))


@pytest.fixture(scope="module")
def docker() -> tuple[str, str]:
    cli = docker_cli()
    return cli, tools_image(cli)


def _workflow(templates: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "dock-"},
        "spec": {"entrypoint": templates[0]["name"], "templates": templates, **spec},
    }


def _run(docker: tuple[str, str], manifest: dict[str, Any], tmp_path: Path, **options: Any) -> LocalRunResult:
    cli, image = docker
    result = run_workflow(
        manifest,
        runs_dir=tmp_path / "runs",
        containers=DockerOptions(image_map={"*": image}, **options),
        env={"MY_SECRET": "s3cr3t"},
    )
    assert leftovers(cli, result.name) == [], "the run left containers or its network behind"
    return result


def _pods(result: LocalRunResult) -> dict[str, dict[str, Any]]:
    return {n["displayName"]: n for n in result.status["nodes"].values() if n["type"] == "Pod"}


def _log(result: LocalRunResult, node: dict[str, Any]) -> str:
    return "".join(p.read_text() for p in sorted((result.run_dir / "logs").glob(f"{node['id']}/*.log")))


def test_a_dag_with_a_daemon_runs_in_containers_with_the_pod_spec(
    docker: tuple[str, str], tmp_path: Path
) -> None:
    tmp_volume = [{"name": "tmp", "mountPath": "/tmp"}]
    manifest = _workflow(
        [
            {
                "name": "main",
                "dag": {
                    "tasks": [
                        {"name": "srv", "template": "server"},
                        {
                            "name": "client",
                            "template": "client",
                            "dependencies": ["srv"],
                            "arguments": {"parameters": [{"name": "ip", "value": "{{tasks.srv.ip}}"}]},
                        },
                    ]
                },
            },
            {
                "name": "server",
                "daemon": True,
                "container": {
                    "image": "python:alpine3.23",
                    "command": ["python3", "-m", "http.server", "8080"],
                    "workingDir": "/tmp",
                    "readinessProbe": {"exec": {"command": ["sh", "-c", "test -d /tmp"]}},
                    "volumeMounts": tmp_volume,
                },
            },
            {
                "name": "client",
                "inputs": {"parameters": [{"name": "ip"}]},
                "script": {
                    "image": "python:alpine3.23",
                    "command": ["python3"],
                    "source": (
                        "import os, urllib.request\n"
                        "for _ in range(50):\n"
                        "    try:\n"
                        "        status = urllib.request.urlopen('http://{{inputs.parameters.ip}}:8080/').status\n"
                        "        break\n"
                        "    except OSError:\n"
                        "        __import__('time').sleep(0.2)\n"
                        "print(status, os.getuid(), os.getgid(), os.getcwd(), os.environ['MY_SECRET'],\n"
                        "      os.environ['POD_IP'], 'PATH' in os.environ)\n"
                        "open('/tmp/out.txt', 'w').write('written in the container')\n"
                    ),
                    "workingDir": "/tmp/work",
                    "env": [
                        {
                            "name": "MY_SECRET",
                            "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                        },
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    ],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                    "volumeMounts": tmp_volume,
                },
                "outputs": {"parameters": [{"name": "out", "valueFrom": {"path": "/tmp/out.txt"}}]},
            },
        ],
        securityContext={"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True},
        volumes=[{"name": "tmp", "emptyDir": {}}],
    )
    result = _run(docker, manifest, tmp_path)
    assert result.phase == "Succeeded", result.status.get("message")
    pods = _pods(result)
    client = pods["client"]
    status, uid, gid, cwd, secret, pod_ip, has_path = client["outputs"]["result"].split()
    assert (status, uid, gid, cwd, secret, has_path) == (
        "200",
        "10001",
        "10001",
        "/tmp/work",
        "s3cr3t",
        "True",
    )
    assert client["outputs"]["parameters"][0]["value"] == "written in the container"
    server_ip = pods["srv"]["podIP"]
    assert pod_ip != server_ip
    assert pod_ip.rpartition(".")[0] == server_ip.rpartition(".")[0]
    assert "GET / HTTP" in _log(result, pods["srv"])  # the client reached the daemon by its pod IP


def _one_pod(container: dict[str, Any], **template: Any) -> dict[str, Any]:
    return _workflow([{"name": "main", "container": {"image": "busybox", **container}, **template}])


def test_a_step_writing_outside_tmp_fails_on_a_read_only_root(
    docker: tuple[str, str], tmp_path: Path
) -> None:
    manifest = _one_pod(
        {
            "command": ["sh", "-c", "echo ok > /tmp/ok && echo no > /opt/x"],
            "securityContext": {"readOnlyRootFilesystem": True, "runAsUser": 10001},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        },
    )
    manifest["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    result = _run(docker, manifest, tmp_path)
    assert result.phase == "Failed"
    (pod,) = _pods(result).values()
    assert pod["message"] == "main: Error (exit code 2)"
    assert "Read-only file system" in _log(result, pod)


def test_a_container_over_its_memory_limit_is_oomkilled(docker: tuple[str, str], tmp_path: Path) -> None:
    manifest = _one_pod(
        {
            "command": ["python3", "-c", "b = bytearray(512 * 2**20); print(len(b))"],
            "resources": {"limits": {"memory": "64Mi"}},
        }
    )
    result = _run(docker, manifest, tmp_path)
    (pod,) = _pods(result).values()
    assert (result.phase, pod["message"]) == ("Failed", "main: OOMKilled (exit code 137)")


def test_the_deadline_kills_the_container(docker: tuple[str, str], tmp_path: Path) -> None:
    manifest = _one_pod({"command": ["sleep", "300"]}, activeDeadlineSeconds=2)
    started = time.monotonic()
    result = _run(docker, manifest, tmp_path)
    (pod,) = _pods(result).values()
    assert pod["message"] == "Pod was active on the node longer than the specified deadline"
    assert time.monotonic() - started < 120


def test_retries_run_a_new_container_per_attempt(docker: tuple[str, str], tmp_path: Path) -> None:
    manifest = _one_pod(
        {"command": ["sh", "-c", "hostname; exit 3"]}, retryStrategy={"limit": 2, "retryPolicy": "Always"}
    )
    result = _run(docker, manifest, tmp_path)
    pods = list(_pods(result).values())
    assert result.phase == "Failed"
    assert len(pods) == 3
    assert len({p["outputs"]["result"] for p in pods}) == 3, "each attempt is its own pod"
    assert all(p["outputs"]["exitCode"] == "3" for p in pods)


def test_an_image_not_present_says_how_to_build_or_map_it(docker: tuple[str, str], tmp_path: Path) -> None:
    cli, _ = docker
    manifest = _one_pod({"command": ["true"]})
    result = run_workflow(manifest, runs_dir=tmp_path, containers=DockerOptions())
    (pod,) = _pods(result).values()
    assert pod["phase"] == "Error"
    assert pod["message"] == (
        "main: StartError: image busybox is not present in the local Docker engine: docker pull busybox, "
        "or map it to a local image with --image-map busybox=IMAGE"
    )
    assert leftovers(cli, result.name) == []


def test_run_as_non_root_with_an_image_running_as_root_does_not_start(
    docker: tuple[str, str], tmp_path: Path
) -> None:
    manifest = _one_pod({"command": ["true"], "securityContext": {"runAsNonRoot": True}})
    result = _run(docker, manifest, tmp_path)
    (pod,) = _pods(result).values()
    assert pod["phase"] == "Error"
    assert pod["message"].startswith("main: StartError: container has runAsNonRoot and image ")
    assert pod["message"].endswith(" will run as root")


def test_a_gpu_request_fails_clearly_unless_ignored(docker: tuple[str, str], tmp_path: Path) -> None:
    cli, _ = docker
    if (
        '"nvidia"'
        in subprocess.run(
            [cli, "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, check=True
        ).stdout
    ):
        pytest.skip("this engine has a GPU runtime")
    manifest = _one_pod({"command": ["true"], "resources": {"limits": {"nvidia.com/gpu": 1}}})
    result = _run(docker, manifest, tmp_path / "a")
    (pod,) = _pods(result).values()
    assert pod["phase"] == "Error"
    assert "requests nvidia.com/gpu: 1, but this Docker engine has no GPU runtime" in pod["message"]
    assert "--ignore-gpu" in pod["message"]
    assert _run(docker, manifest, tmp_path / "b", ignore_gpu=True).phase == "Succeeded"


def test_no_engine_is_one_line_saying_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(_one_pod({"command": ["true"]})))
    done = subprocess.run(
        [ARGOFL, "local", "run", str(path), "--runtime", "docker"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    (line,) = [x for x in done.stderr.splitlines() if x.lower().startswith("error:")]
    assert "no Docker engine answers" in line
    assert "--runtime process" in line


def test_a_bad_image_map_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(_one_pod({"command": ["true"]})))
    done = subprocess.run(
        [ARGOFL, "local", "run", str(path), "--runtime", "docker", "--image-map", "busybox"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    assert "--image-map 'busybox': expected FROM=TO" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_ctrl_c_or_sigkill_of_the_executor_leaves_no_container_behind(
    docker: tuple[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    cli, image = docker
    path = tmp_path / "wf.yaml"
    manifest = _one_pod({"command": ["sleep", "300"]})
    manifest["metadata"] = {"name": f"killed-{sig.name.lower()}-{os.getpid()}"}
    path.write_text(yaml.safe_dump(manifest))
    executor = subprocess.Popen(
        [
            ARGOFL,
            "local",
            "run",
            str(path),
            "--runtime",
            "docker",
            "--image-map",
            f"busybox={image}",
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    name = manifest["metadata"]["name"]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = subprocess.run(
                [cli, "ps", "--quiet", "--filter", f"label=argofl.run={name}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            if running:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the container never started")
        executor.send_signal(sig)
        # Ctrl-C: the executor stops the pod and removes what it made before it exits; SIGKILL: the reaper
        assert executor.wait(timeout=120) == (128 + sig if sig == signal.SIGINT else -sig)
        if sig == signal.SIGINT:
            assert leftovers(cli, name) == [], "the executor exited leaving its container or network"
        deadline = time.monotonic() + 60
        while leftovers(cli, name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftovers(cli, name) == [], "the reaper did not remove the run's container and network"
    finally:
        executor.kill()
        executor.wait()


def test_process_and_docker_runtimes_write_the_same_status_shape(
    docker: tuple[str, str], tmp_path: Path
) -> None:
    manifest = _one_pod({"command": ["sh", "-c", "echo hello"]})
    in_docker = _run(docker, manifest, tmp_path / "d")
    on_host = run_workflow(manifest, runs_dir=tmp_path / "p")

    def shape(result: LocalRunResult) -> list[Any]:
        pods = [n for n in result.status["nodes"].values() if n["type"] == "Pod"]
        return [(sorted(p), p["phase"], p["outputs"]["result"], p["outputs"]["exitCode"]) for p in pods]

    assert shape(in_docker) == shape(on_host)
    assert json.loads((in_docker.run_dir / "status.json").read_text())["phase"] == "Succeeded"


def test_key_refs_from_a_secrets_file_reach_the_container(docker: tuple[str, str], tmp_path: Path) -> None:
    cli, image = docker
    env = [{"name": "FROM_FILE", "valueFrom": {"secretKeyRef": {"name": "site", "key": "token"}}}]
    manifest = _one_pod({"command": ["sh", "-c", "echo $FROM_FILE"], "env": env})
    result = run_workflow(
        manifest,
        runs_dir=tmp_path / "runs",
        containers=DockerOptions(image_map={"*": image}),
        key_refs={("Secret", "site"): {"token": "from-the-secrets-file"}},
    )
    assert leftovers(cli, result.name) == []
    assert result.phase == "Succeeded", result.status.get("message")
    [pod] = _pods(result).values()
    assert pod["outputs"]["result"] == "from-the-secrets-file"


@pytest.mark.parametrize("remover", ["executor", "reaper"])
def test_the_network_goes_even_when_something_is_still_attached(
    docker: tuple[str, str], tmp_path: Path, remover: str
) -> None:
    # Docker 20.10 once kept a stale endpoint on a run's network, so a plain `network rm` failed and a
    # later run of the same name could not create it; a container attached by hand does the same
    cli, image = docker
    name = f"attached-{remover}-{os.getpid()}"
    runtime = DockerRuntime(DockerOptions(docker=cli, image_map={"*": image}), name, tmp_path)
    runtime.open()
    stranger = subprocess.run(
        [cli, "run", "--detach", "--network", runtime.network, image, "sleep", "300"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        plain = subprocess.run([cli, "network", "rm", runtime.network], capture_output=True, text=True)
        assert plain.returncode != 0
        assert "active endpoints" in plain.stderr
        if remover == "executor":
            runtime.close()
        else:
            reap(cli, runtime.label, runtime.network)  # what it does once the executor is gone
            runtime.close()
        assert leftovers(cli, name) == []
        state = subprocess.run(
            [cli, "inspect", "--format", "{{.State.Running}}", stranger], capture_output=True, text=True
        )
        assert state.stdout.strip() == "true", "only the network went: the container is not the run's"
    finally:
        subprocess.run([cli, "rm", "--force", stranger], capture_output=True)
        subprocess.run([cli, "network", "rm", runtime.network], capture_output=True)
