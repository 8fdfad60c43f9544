"""One client cannot poison or kill the aggregate step: an update whose stored size differs from
what the global model's tensors imply is refused before it is read (a forged manifest does not
help), and a claimed example count larger than the client can have is refused, each with a
one-line reason; then ``min_clients`` decides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

import pytest

import argofl.steps.runinfo
from argofl.steps import step_aggregate, step_distribute, step_init, step_train
from argofl.steps.checkpoint import (
    MAX_MANIFEST_BYTES,
    checkpoint_keys,
    load_checkpoint,
    load_manifest,
    save_checkpoint,
)
from argofl.steps.runinfo import RunLayout
from argofl.steps.settings import Settings
from argofl.steps.store import FileStore

HUGE = 800 * 1024 * 1024


class RecordingStore(FileStore):
    """A file store that records every key it opens for reading (or hands out the file of)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened: list[str] = []

    def open_read(self, key: str) -> BinaryIO:
        self.opened.append(key)
        return super().open_read(key)

    def local_path(self, key: str) -> Path | None:  # the aggregate step reads updates through this
        self.opened.append(key)
        return super().local_path(key)


@pytest.fixture
def store(tmp_path, monkeypatch, fmnist_dir) -> RecordingStore:
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    recording = RecordingStore(tmp_path / "store")
    monkeypatch.setattr(argofl.steps.runinfo, "store_from_env", lambda: recording)
    return recording


def _round_one(run_key: str, **overrides: object) -> RunLayout:
    base = {"experiment": "guards", "data_limit": 600, "clients": 3, "min_clients": 1, "rounds": 1}
    s = Settings.from_mapping({**base, **overrides})
    step_init.run(s, run_key=run_key, workflow_name="w", workflow_uid="u")
    for group in step_distribute.run(run_key=run_key, round=1):
        step_train.run(run_key=run_key, round=1, clients=group)
    return RunLayout(run_key)


def _claim(store: FileStore, layout: RunLayout, client: str, examples: int) -> None:
    update = load_checkpoint(store, layout.update_key(1, client))
    save_checkpoint(
        store,
        layout.update_key(1, client),
        update.arrays,
        round=1,
        client=client,
        examples=examples,
        metrics=update.manifest.metrics,
        overwrite=True,
    )


def test_an_update_claiming_10_to_the_12_examples_is_refused(store, caplog):
    layout = _round_one("guards/claims")
    _claim(store, layout, "1", 10**12)
    metrics = step_aggregate.run(run_key="guards/claims", round=1)
    assert metrics["clients"] == 2
    assert metrics["rejected"] == 1
    assert metrics["examples"] == 400  # the two honest partitions of 600 / 3
    reasons = [r.getMessage() for r in caplog.records if "rejected client 1" in r.getMessage()]
    assert reasons == [
        "round 1: rejected client 1: claims 1000000000000 examples, more than the 200 it can have "
        "(the size of its iid partition)"
    ]


def test_max_client_examples_caps_what_a_client_may_claim(store, caplog, monkeypatch):
    # clients that train anyway (an honest one refuses: test_client_data.py), e.g. an older or hostile one
    monkeypatch.setattr(step_train, "_check_claimable", lambda *args: None)
    layout = _round_one("guards/cap", max_client_examples=150)
    with pytest.raises(step_aggregate.NotEnoughUpdates, match="0 valid updates of 3"):
        step_aggregate.run(run_key="guards/cap", round=1)
    assert "claims 200 examples, more than the 150 it can have (max_client_examples=150)" in caplog.text
    assert not store.exists(layout.global_key(1) + ".json")


def _make_huge(store: FileStore, layout: RunLayout, client: str, *, forge_manifest: bool) -> str:
    """Replace the client's blob with a sparse 800 MB file (no disk used); optionally forge its
    manifest to claim that size."""
    blob_key, manifest_key = checkpoint_keys(layout.update_key(1, client))
    os.truncate(store._path(blob_key), HUGE)
    if forge_manifest:
        doc = json.loads(store.get_bytes(manifest_key))
        doc["size"] = HUGE
        store.put_bytes(manifest_key, json.dumps(doc).encode())
    return blob_key


@pytest.mark.parametrize("forge_manifest", [False, True], ids=["honest-manifest", "forged-manifest"])
def test_an_800_mb_update_is_refused_without_being_read(store, caplog, forge_manifest):
    layout = _round_one(f"guards/huge-{forge_manifest}".lower(), min_clients=2)
    blob_key = _make_huge(store, layout, "2", forge_manifest=forge_manifest)
    global_size = load_manifest(store, layout.global_key(0)).size
    store.opened.clear()
    metrics = step_aggregate.run(run_key=layout.run_key, round=1)
    assert metrics["clients"] == 2
    assert metrics["rejected"] == 1
    assert blob_key not in store.opened
    line = next(r.getMessage() for r in caplog.records if "rejected client 2" in r.getMessage())
    if forge_manifest:
        assert f"manifest says {HUGE} bytes, its tensors encode to {global_size}; not read" in line
    else:
        assert f"manifest says {global_size} bytes, blob has {HUGE}; not read" in line


def test_min_clients_decides_after_the_refusals(store):
    layout = _round_one("guards/min", min_clients=3)
    _claim(store, layout, "0", 10**12)
    with pytest.raises(step_aggregate.NotEnoughUpdates, match="2 valid updates of 3 sampled clients"):
        step_aggregate.run(run_key="guards/min", round=1)
    assert not store.exists(layout.global_key(1) + ".json")


def test_an_oversized_manifest_is_refused_without_being_read(store, caplog):
    layout = _round_one("guards/manifest")
    manifest_key = checkpoint_keys(layout.update_key(1, "0"))[1]
    with open(store._path(manifest_key), "ab") as manifest:
        manifest.truncate(100 * 1024 * 1024)  # sparse: no disk used
    store.opened.clear()
    metrics = step_aggregate.run(run_key="guards/manifest", round=1)
    assert metrics["rejected"] == 1
    assert manifest_key not in store.opened
    line = next(r.getMessage() for r in caplog.records if "rejected client 0" in r.getMessage())
    assert f"{100 * 1024 * 1024} bytes, expected at most {MAX_MANIFEST_BYTES}; not read" in line
