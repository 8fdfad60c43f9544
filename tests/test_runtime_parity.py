"""The flagship with the same seed gives byte-identical global checkpoints whether its steps run as host
processes or in the step image (``--runtime docker``): with the runs directory's file store, and with the
store on a real S3 server and tracking on a real MLflow server, credentials only from a Secret. Its pods
ran as UID 10001 on a read-only root, where a step that writes outside /tmp fails."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docker_env import STEP_IMAGE, bridge_gateway, docker_cli, leftovers, require_image
from tests.servers import RunningServer, empty_bucket, start_mlflow_server, start_moto_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARGOFL = str(Path(sys.executable).with_name("argofl"))
FLAGSHIP = "configs/fedavg-fmnist-torch.yaml"
TINY = ["-p", "rounds=2", "-p", "clients=4", "-p", "min-clients=2", "-p", "data-limit=600"]
ROUNDS = ["round-0000", "round-0001", "round-0002"]


@pytest.fixture(scope="module")
def docker() -> str:
    cli = docker_cli()
    require_image(cli)
    return cli


def _run(runs_dir: Path, *extra: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        [ARGOFL, "run", FLAGSHIP, "--runs-dir", str(runs_dir), *TINY, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _globals(runs_dir: Path) -> dict[str, str]:
    found = sorted((runs_dir / "store").glob("*/*/round-*/global.safetensors"))
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in found}


def _status(runs_dir: Path) -> dict[str, Any]:
    (run_dir,) = (runs_dir / "workflows").iterdir()
    status: dict[str, Any] = json.loads((run_dir / "status.json").read_text())
    return status


@pytest.fixture(scope="module")
def on_host(docker: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The flagship's global checkpoints' digests from host processes (run only when containers can)."""
    runs_dir = tmp_path_factory.mktemp("process")
    _run(runs_dir)
    return _globals(runs_dir)


def test_the_flagship_gives_the_same_checkpoints_in_containers(
    docker: str, on_host: dict[str, str], tmp_path: Path
) -> None:
    in_docker = tmp_path / "docker"
    _run(in_docker, "--runtime", "docker")
    assert list(_globals(in_docker)) == ROUNDS
    assert _globals(in_docker) == on_host
    # the steps wrote the store and the MLflow database as the image's user
    assert (in_docker / "mlflow.db").stat().st_uid == 10001
    assert {p.stat().st_uid for p in (in_docker / "store").rglob("*.safetensors")} == {10001}
    (run_dir,) = (in_docker / "workflows").iterdir()
    assert leftovers(docker, run_dir.name) == []


@pytest.fixture(scope="module")
def reachable_servers(
    docker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """moto_server and an MLflow server on the Docker bridge's gateway: containers reach them there."""
    host = bridge_gateway(docker)
    with (
        start_moto_server(host=host) as s3,
        start_mlflow_server(tmp_path_factory.mktemp("mlflow"), host=host) as mlflow,
    ):
        yield s3, mlflow


# A docker CLI in front of the real one that records, as each container starts, how the engine runs it.
_RECORDING_DOCKER = """#!/bin/sh
if [ "$1" = start ]; then
  for last; do :; done
  "$REAL_DOCKER" inspect --format \\
    '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{.Config.Image}}' \\
    "$last" >>"$STARTED_LOG"
fi
exec "$REAL_DOCKER" "$@"
"""


def test_the_flagship_in_containers_against_s3_and_an_mlflow_server(
    docker: str,
    on_host: dict[str, str],
    reachable_servers: tuple[RunningServer, RunningServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3, mlflow_server = reachable_servers
    bucket = f"argofl-flagship-{uuid.uuid4().hex[:12]}"
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "argofl-s3"},
                "stringData": {
                    "accesskey": s3.env["ARGOFL_S3_ACCESS_KEY"],
                    "secretkey": s3.env["ARGOFL_S3_SECRET_KEY"],
                },
            }
        )
    )
    shim = tmp_path / "bin" / "docker"
    shim.parent.mkdir()
    shim.write_text(_RECORDING_DOCKER)
    shim.chmod(0o755)
    started_log = tmp_path / "started.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGOFL_S3_", "MLFLOW_"))}
    env.update(
        PATH=f"{shim.parent}{os.pathsep}{env.get('PATH', '')}",
        REAL_DOCKER=shutil.which(docker) or docker,
        STARTED_LOG=str(started_log),
    )
    runs_dir = tmp_path / "runs"
    try:
        out = _run(
            runs_dir,
            "--runtime",
            "docker",
            "--store",
            f"s3://{bucket}",
            "--mlflow-uri",
            mlflow_server.uri,
            "-p",
            f"s3-endpoint={s3.endpoint}",
            "--secrets",
            str(secrets),
            env=env,
        )
        status = _status(runs_dir)
        assert status["phase"] == "Succeeded"
        assert leftovers(docker, _run_name(runs_dir)) == []
        assert not list((runs_dir / "store").rglob("*")), "the steps wrote to the default file store"

        # the global checkpoints are in S3, byte-identical to the host processes' run
        from argofl.steps.checkpoint import load_checkpoint
        from argofl.steps.runinfo import RunLayout
        from argofl.steps.store import open_store

        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        store = open_store(f"s3://{bucket}")
        layout = RunLayout(f"fedavg-fmnist-torch/{_run_name(runs_dir)}")
        in_s3 = {}
        for number in (1, 2):
            key = layout.global_key(number)
            assert load_checkpoint(store, key).manifest.round == number
            in_s3[key.split("/")[-2]] = hashlib.sha256(store.get_bytes(key + ".safetensors")).hexdigest()
        assert in_s3 == {r: on_host[r] for r in ROUNDS[1:]}

        # the MLflow server holds the finished run with each round's metrics
        from mlflow.tracking import MlflowClient

        outputs = {p["name"]: p["value"] for p in status["outputs"]["parameters"]}
        client = MlflowClient(mlflow_server.uri)
        run = client.get_run(outputs["mlflow-run-id"])
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        assert sorted(m.step for m in history) == [1, 2]
        assert f"MLflow run: {outputs['mlflow-run-url']}" in out.splitlines()

        # every pod ran in the step image as UID 10001 on a read-only root without capabilities
        pods = [n for n in status["nodes"].values() if n["type"] == "Pod"]
        started = started_log.read_text().splitlines()
        assert len(started) == len(pods) > 0
        assert set(started) == {f'10001:10001 true ["ALL"] {STEP_IMAGE}'}
    finally:
        empty_bucket(s3, bucket)


def _run_name(runs_dir: Path) -> str:
    (run_dir,) = (runs_dir / "workflows").iterdir()
    return run_dir.name


_WRITE_OUTSIDE_TMP = """
import os, sys
with open("/tmp/scratch", "w") as f:
    f.write("ok")
# one write: with PYTHONUNBUFFERED each piece of a print() is its own write, and Docker may interleave
# the traceback on stderr between them
sys.stdout.write(f"uid {os.getuid()} gid {os.getgid()} wrote /tmp\\n")
sys.stdout.flush()
with open("/home/outside-tmp", "w") as f:
    f.write("must fail")
"""


def test_a_step_with_the_flagship_pod_spec_cannot_write_outside_tmp(docker: str, tmp_path: Path) -> None:
    from argofl.pipelines.compile import manifest_for
    from argofl.pipelines.config import load_config
    from argofl.pipelines.local import DockerOptions, run_workflow

    spec = manifest_for(load_config(REPO / FLAGSHIP))["spec"]
    train = next(t for t in spec["templates"] if t["name"] == "train")
    container = {
        **train["container"],
        "image": STEP_IMAGE,
        "command": ["python", "-c", _WRITE_OUTSIDE_TMP],
        "args": [],
        "env": [],
    }
    template = {k: v for k, v in train.items() if k not in ("inputs", "outputs", "retryStrategy")}
    manifest = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "flagship-pod-spec-"},
        "spec": {
            "entrypoint": "train",
            "securityContext": spec["securityContext"],
            "volumes": spec["volumes"],
            "templates": [{**template, "container": container}],
        },
    }
    result = run_workflow(manifest, runs_dir=tmp_path / "runs", containers=DockerOptions())
    assert leftovers(docker, result.name) == []
    (pod,) = [n for n in result.status["nodes"].values() if n["type"] == "Pod"]
    log = "".join(p.read_text() for p in (result.run_dir / "logs").glob(f"{pod['id']}/*.log"))
    assert result.phase == "Failed", log
    assert "uid 10001 gid 10001 wrote /tmp" in log
    assert "Read-only file system: '/home/outside-tmp'" in log
