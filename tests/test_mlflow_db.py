"""A new local MLflow database is a copy of a migrated empty template (steps/mlflow_db.py)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from argofl.steps import mlflow_db, tracking


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home directory (so a fresh template cache), and a working directory of its own."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(mlflow_db.DISABLE_VARIABLE, raising=False)
    return home


def _new_run(monkeypatch: pytest.MonkeyPatch, database: Path) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    ref = tracking.create_run("exp", run_name="wf", params={"lr": "0.1"}, tags={"argofl.store": "x"})
    return ref.run_id


def _dump(database: Path) -> dict[str, Any]:
    """Schema, schema version and rows of ``database``, without what differs between any two runs
    (ids, times, the database's own directory)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        schema = sorted(
            row
            for row in db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        )
        tables = [name for kind, name, _ in schema if kind == "table"]
        counts = {name: db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in tables}
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        experiments = db.execute(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments ORDER BY 1"
        ).fetchall()
    where = str(database.parent)
    return {
        # MLflow's own migrations order a table's constraints by string hash (differs per process)
        "schema": [(kind, name, _clauses(sql)) for kind, name, sql in schema],
        "counts": counts,
        "version": version,
        "experiments": [tuple(str(v).replace(where, "<dir>") for v in row) for row in experiments],
    }


def _clauses(sql: str | None) -> list[str]:
    return sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())


def test_a_database_from_the_template_matches_one_mlflow_migrated_itself(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv(mlflow_db.DISABLE_VARIABLE, "0")
    _new_run(monkeypatch, tmp_path / "a" / "mlflow.db")
    assert not mlflow_db.template_path().exists()
    monkeypatch.delenv(mlflow_db.DISABLE_VARIABLE)
    _new_run(monkeypatch, tmp_path / "b" / "mlflow.db")
    assert mlflow_db.template_path().is_relative_to(home / ".cache" / "argofl" / "mlflow")
    assert mlflow_db.template_path().exists()
    migrated, copied = _dump(tmp_path / "a" / "mlflow.db"), _dump(tmp_path / "b" / "mlflow.db")
    assert copied == migrated
    assert [row[1] for row in copied["experiments"]] == ["Default", "exp"]
    assert copied["counts"]["runs"] == 1


def test_the_next_new_database_skips_mlflow_migrations(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _new_run(monkeypatch, tmp_path / "first.db")

    def migrate(engine: Any) -> None:
        raise AssertionError("MLflow migrated a new database instead of copying the template")

    import mlflow.store.db.utils

    monkeypatch.setattr(mlflow.store.db.utils, "_initialize_tables", migrate)
    run_id = _new_run(monkeypatch, tmp_path / "second.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "second.db")) as db:
        assert db.execute("SELECT run_uuid FROM runs").fetchall() == [(run_id,)]


def test_an_existing_database_is_left_alone(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "mlflow.db"
    first = _new_run(monkeypatch, database)
    assert not mlflow_db.prepare(f"sqlite:///{database}")
    second = _new_run(monkeypatch, database)
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert sorted(r[0] for r in db.execute("SELECT run_uuid FROM runs")) == sorted([first, second])


def test_a_damaged_template_is_rebuilt(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    template = mlflow_db.template_path()
    template.parent.mkdir(parents=True)
    template.write_bytes(b"not a database")
    _new_run(monkeypatch, tmp_path / "mlflow.db")
    assert "is damaged; rebuilding it" in caplog.text
    assert _dump(template)["version"]


def test_without_a_writable_cache_mlflow_creates_the_database(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=mlflow_db.__name__)
    (home / ".cache").write_text("a file where the cache directory would be")
    run_id = _new_run(monkeypatch, tmp_path / "mlflow.db")
    assert "not used" in caplog.text
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as db:
        assert db.execute("SELECT run_uuid FROM runs").fetchall() == [(run_id,)]


@pytest.mark.parametrize(
    "uri", ["sqlite:///:memory:", "http://127.0.0.1:1/", "sqlite:///{tmp}/missing/dir/x.db"]
)
def test_other_tracking_uris_are_left_to_mlflow(home: Path, tmp_path: Path, uri: str) -> None:
    assert not mlflow_db.prepare(uri.format(tmp=tmp_path))
    assert not mlflow_db.template_path().exists()


def test_a_query_in_a_sqlite_uri_is_not_part_of_the_database_path(tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}?timeout=30&note=a/b"
    assert mlflow_db.sqlite_path(uri) == str(database)
    assert mlflow_db.sqlite_path("http://127.0.0.1:5000") is None
    assert tracking.local_artifact_location(uri, "exp") == (tmp_path / "mlartifacts" / "exp").as_uri()
    assert tracking.local_artifact_location("http://127.0.0.1:5000", "exp") is None
