"""Shared fixtures: real S3 (moto) and MLflow servers on loopback, datasets, ../shared."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# `steps` and `pipelines` import from the checkout, installed or not. `servers` (tests/servers.py) is
# importable because tests/ has no __init__.py: pytest puts this directory on sys.path.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fake_argo import argo  # noqa: E402, F401  (fixture: a fake Argo server)
from tests.require import require_or_skip  # noqa: E402
from tests.servers import RunningServer, empty_bucket, start_mlflow_server, start_moto_server  # noqa: E402

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[RunningServer]:
    """One moto S3 server for the session."""
    with start_moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One MLflow tracking server (SQLite, local artifacts) for the session."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point ``ARGOFL_S3_*`` at the moto server; yield a fresh, not yet created bucket URI.

    The bucket's objects are deleted afterwards so the in-memory server stays small.
    """
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    bucket = f"argofl-test-{uuid.uuid4().hex[:16]}"
    yield f"s3://{bucket}"
    empty_bucket(s3_server, bucket)


@pytest.fixture
def fmnist_dir() -> Path:
    """Debian's Fashion-MNIST (``dataset-fashion-mnist``); skips when not installed."""
    require_or_skip(
        FMNIST_DIR.is_dir(),
        f"Fashion-MNIST not found at {FMNIST_DIR} (apt-get install dataset-fashion-mnist)",
    )
    return FMNIST_DIR


@pytest.fixture
def shared_dir() -> Path:
    """The ``shared`` directory beside the repository; skips when absent."""
    path = Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
