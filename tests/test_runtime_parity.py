"""The flagship with the same seed gives byte-identical global checkpoints whether its steps run as host
processes or in the step image (``--runtime docker``), and the containers ran as UID 10001."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker_env import docker_cli, leftovers, require_image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARGOFL = str(Path(sys.executable).with_name("argofl"))
TINY = ["-p", "rounds=2", "-p", "clients=4", "-p", "min-clients=2", "-p", "data-limit=600"]


def _run(runs_dir: Path, *extra: str) -> str:
    done = subprocess.run(
        [ARGOFL, "run", "configs/fedavg-fmnist-torch.yaml", "--runs-dir", str(runs_dir), *TINY, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _globals(runs_dir: Path) -> dict[str, str]:
    found = sorted((runs_dir / "store").glob("*/*/round-*/global.safetensors"))
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in found}


def test_the_flagship_gives_the_same_checkpoints_in_containers(tmp_path: Path) -> None:
    cli = docker_cli()
    require_image(cli)
    in_docker = tmp_path / "docker"
    _run(in_docker, "--runtime", "docker")
    on_host = tmp_path / "process"
    _run(on_host)
    assert list(_globals(in_docker)) == ["round-0000", "round-0001", "round-0002"]
    assert _globals(in_docker) == _globals(on_host)
    # the steps wrote the store and the MLflow database as the image's user
    assert (in_docker / "mlflow.db").stat().st_uid == 10001
    assert {p.stat().st_uid for p in (in_docker / "store").rglob("*.safetensors")} == {10001}
    (run_dir,) = (in_docker / "workflows").iterdir()
    assert leftovers(cli, run_dir.name) == []
