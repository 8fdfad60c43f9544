"""The Docker engine and the step image for tests that run containers.

Without an engine (or without the image) those tests skip and say why; under ``CI=true`` they fail
instead, since CI (.ci/run) starts an engine and builds the image before ``make test``.
"""

from __future__ import annotations

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
