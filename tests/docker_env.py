"""The Docker engine and the step image for tests that run containers.

Without an engine (or without the image) those tests skip and say why; under ``CI=true`` they fail
instead, since CI (.ci/run) starts an engine and builds the image before ``make test``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess

import pytest

STEP_IMAGE = "argofl/step-torch-cpu:0.1.0"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Docker tests must run)")
    pytest.skip(reason)


def docker_cli() -> str:
    """The ``docker`` CLI of a running engine; skips (fails under CI) when there is none."""
    cli = shutil.which("docker")
    if cli is None:
        _unavailable("no docker CLI on PATH (apt-get install docker.io)")
        raise AssertionError  # unreachable: skip/fail raised
    done = subprocess.run(
        [cli, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        _unavailable(f"no Docker engine answers ({detail}); start one with `sudo dockerd &`")
    return cli


def require_image(cli: str, image: str = STEP_IMAGE) -> str:
    """``image`` when the engine has it; skips (fails under CI) with how to build it otherwise."""
    done = subprocess.run([cli, "image", "inspect", image], capture_output=True, check=False)
    if done.returncode != 0:
        _unavailable(f"image {image} is not built; run `make images`")
    return image


def bridge_gateway(cli: str) -> str:
    """The host's address on Docker's default bridge: a server bound there answers containers of any
    bridge network (a run's own included) and this host alike, while loopback answers only the host.
    An engine that lists only the bridge's subnet (``Default bridge (docker0) is assigned with an IP
    address 172.17.0.0/16``) gives it the subnet's first address, as Docker does."""
    done = subprocess.run(
        [
            cli,
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}|{{.Subnet}} {{end}}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    gateways = []
    for entry in done.stdout.split():
        gateway, _, subnet = entry.partition("|")
        if not gateway and "." in subnet:
            with contextlib.suppress(ValueError, IndexError):
                gateway = str(ipaddress.ip_network(subnet, strict=False)[1])
        if "." in gateway:
            gateways.append(gateway)
    if done.returncode != 0 or not gateways:
        _unavailable(
            "the Docker engine has no default bridge network with an IPv4 gateway (dockerd --bridge=none?): "
            "containers cannot reach servers on this host"
        )
    return gateways[0]


LOCAL_BASE = "argofl/base-python:3.11-bookworm"
TOOLS_IMAGE = "argofl/test-tools:local"


def tools_image(cli: str) -> str:
    """A small image with sh, bash, coreutils and python for workflows in containers (built once).

    It is built from the locally bootstrapped Debian base (``images/build.sh local-base``), or from the
    step image when that base is absent.
    """
    if (
        subprocess.run([cli, "image", "inspect", TOOLS_IMAGE], capture_output=True, check=False).returncode
        == 0
    ):
        return TOOLS_IMAGE
    for base in (LOCAL_BASE, STEP_IMAGE):
        if subprocess.run([cli, "image", "inspect", base], capture_output=True, check=False).returncode == 0:
            break
    else:
        _unavailable(f"neither {LOCAL_BASE} nor {STEP_IMAGE} is built; run `images/build.sh local-base`")
    dockerfile = f'FROM {base}\nUSER 0\nLABEL org.opencontainers.image.title="argofl test tools"\n'
    done = subprocess.run(
        [cli, "build", "-q", "-t", TOOLS_IMAGE, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    if done.returncode != 0:
        _unavailable(f"cannot build {TOOLS_IMAGE}: {done.stderr.strip()[-300:]}")
    return TOOLS_IMAGE


def leftovers(cli: str, run_name: str) -> list[str]:
    """Containers and networks of ``run_name`` that are still there."""
    label = f"label=argofl.run={run_name}"
    containers = subprocess.run(
        [cli, "ps", "--all", "--quiet", "--filter", label], capture_output=True, text=True, check=True
    ).stdout.split()
    networks = subprocess.run(
        [cli, "network", "ls", "--quiet", "--filter", label], capture_output=True, text=True, check=True
    ).stdout.split()
    return containers + networks
