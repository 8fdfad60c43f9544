"""Store fixtures shared by test modules: import the one a module needs (``# noqa: F401``, as
conftest.py imports ``argo``); each registers under the fixture name ``store``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import argofl.steps.runinfo
from argofl.steps.checkpoint import Checkpoint, load_checkpoint
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


def assert_within_one_ulp(store: Store, got_key: str, want_key: str) -> tuple[Checkpoint, Checkpoint]:
    """Assert the checkpoint at ``got_key`` has the tensors of the one at ``want_key``: the same names
    and dtypes, floats within one float32 ulp, integers equal; return both (got, want)."""
    got, want = load_checkpoint(store, got_key), load_checkpoint(store, want_key)
    assert sorted(got.arrays) == sorted(want.arrays)
    for name, array in want.arrays.items():
        assert got.arrays[name].dtype == array.dtype
        if np.issubdtype(array.dtype, np.floating):
            np.testing.assert_array_max_ulp(got.arrays[name], array, maxulp=1)
        else:
            np.testing.assert_array_equal(got.arrays[name], array)
    return got, want
