"""Store fixtures shared by test modules: import the one a module needs (``# noqa: F401``, as
conftest.py imports ``argo``); each registers under the fixture name ``store``."""

from __future__ import annotations

from pathlib import Path

import pytest

import argofl.steps.runinfo
from argofl.steps.store import FileStore, Store, open_store


@pytest.fixture(name="store", params=["file", "s3"])
def backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An empty store of each backend; the S3 one is a fresh bucket that does not exist yet."""
    if request.param == "file":
        return FileStore(tmp_path / "store")
    return open_store(request.getfixturevalue("s3_env"))


@pytest.fixture(name="store")
def step_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist_dir: Path) -> FileStore:
    """The FileStore the steps read and write (``ARGOFL_STORE``), with MLflow in a local SQLite file."""
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    file_store = FileStore(tmp_path / "store")
    monkeypatch.setattr(argofl.steps.runinfo, "store_from_env", lambda: file_store)
    return file_store
