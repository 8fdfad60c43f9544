"""The built step image (``make images``) run by a Docker engine, as Kubernetes would run it: the
console script works, the user is UID 10001, a read-only root filesystem stops writes outside /tmp,
and neither the image's history nor its configuration holds the build's CA bundle or a credential.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.docker_env import docker_cli, require_image

pytestmark = pytest.mark.slow

HOST_CA_BUNDLE = Path(os.environ.get("ARGOFL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))


@pytest.fixture(scope="module")
def image() -> tuple[str, str]:
    cli = docker_cli()
    return cli, require_image(cli)


def _run(cli: str, image: str, *argv: str, read_only: bool = True) -> subprocess.CompletedProcess[str]:
    flags = ["--read-only", "--tmpfs", "/tmp:uid=10001,gid=10001"] if read_only else []
    return subprocess.run(
        [cli, "run", "--rm", "--network", "none", *flags, image, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_the_image_runs_argofl_as_uid_10001(image: tuple[str, str]) -> None:
    cli, name = image
    done = _run(cli, name, "sh", "-c", "id -u; id -g; argofl --version")
    assert done.returncode == 0, done.stderr
    uid, gid, version = done.stdout.split("\n", 2)
    assert (uid, gid) == ("10001", "10001")
    assert version.strip() == "argofl, version 0.1.0"


def test_a_step_writing_outside_tmp_fails_on_a_read_only_root(image: tuple[str, str]) -> None:
    cli, name = image
    ok = _run(cli, name, "python", "-c", "open('/tmp/ok', 'w').write('x')")
    assert ok.returncode == 0, ok.stderr
    for path in ("/usr/local/lib/x", "/x"):
        done = _run(cli, name, "python", "-c", f"open({path!r}, 'w').write('x')")
        assert done.returncode != 0
        assert "Read-only file system" in done.stderr or "Permission denied" in done.stderr, done.stderr


def _pem_bodies(path: Path) -> list[str]:
    """One distinctive base64 line of each certificate in ``path``."""
    bodies = re.findall(r"-----BEGIN CERTIFICATE-----\s*\n(.+?)-----END", path.read_text(), re.S)
    return [lines[len(lines) // 2] for lines in (b.split() for b in bodies) if len(lines) > 2]


def test_neither_history_nor_config_hold_the_ca_bundle_or_a_credential(image: tuple[str, str]) -> None:
    cli, name = image
    history = subprocess.run(
        [cli, "history", "--no-trunc", "--format", "{{.CreatedBy}}", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config = subprocess.run(
        [cli, "image", "inspect", name], capture_output=True, text=True, check=True
    ).stdout
    for text, what in ((history, "docker history"), (config, "docker inspect")):
        assert "BEGIN CERTIFICATE" not in text, what
        assert not re.search(r"(?i)(password|secret_key|token|aws_secret)\s*[=:]\s*\S", text), what
        assert not re.search(r"://[^/\s@\"]+:[^/\s@\"]+@", text), f"{what}: a URL with credentials"
        if HOST_CA_BUNDLE.is_file():
            leaked = [line for line in _pem_bodies(HOST_CA_BUNDLE) if line in text]
            assert not leaked, f"{what} holds certificates of {HOST_CA_BUNDLE}"
    # the secret was mounted at build time only
    done = _run(cli, name, "sh", "-c", 'test ! -e /run/secrets/ca-bundle && test -z "$PIP_CERT"')
    assert done.returncode == 0, "the CA bundle or PIP_CERT is still in the image"


def test_the_examples_image_makes_the_code_a_config_names_importable_in_the_step(
    image: tuple[str, str],
) -> None:
    """``examples/Dockerfile``: the step image with the user's loaders and models, so that a config naming
    them (the sites-loader config's ``data.loader``) runs on a cluster: argofl's own lookup finds them on a
    read-only root, as UID 10001. The plain step image has no such module."""
    cli, base = image
    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "configs" / "fedavg-fmnist-sites-loader.yaml").read_text())
    lookup = (
        "from argofl.steps.frameworks.base import load_factory\n"
        f"load_factory({config['data']['loader']!r}, what='data loader')\n"
        "load_factory('examples.custom_models:torch_tiny_cnn')\n"
        "print('found')\n"
    )
    assert "No module named 'examples'" in _run(cli, base, "python", "-c", lookup).stderr
    tag = "argofl-test/examples:local"
    dockerfile, context = root / "examples" / "Dockerfile", root / "examples"
    built = subprocess.run(
        [cli, "build", "-q", "-f", str(dockerfile), "--build-arg", f"BASE={base}", "-t", tag, str(context)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"},  # FROM, COPY and ENV only: any builder
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    try:
        assert built.returncode == 0, built.stderr
        done = _run(cli, tag, "python", "-c", lookup)
        assert (done.returncode, done.stdout.strip()) == (0, "found"), done.stderr
    finally:
        subprocess.run([cli, "rmi", "-f", tag], capture_output=True, check=False)
