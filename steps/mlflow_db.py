"""A new local MLflow database (``sqlite:///PATH``) from a migrated empty template.

MLflow creates a database by running its ~70 alembic migrations (≈ 2 s, most of a local run's ``init``).
The first database this installation creates is also kept, empty, as a template in
``~/.cache/argofl/mlflow/`` (one per MLflow, SQLAlchemy and alembic version); later new databases are
copies of it. The template holds MLflow's tables and schema version only: MLflow itself adds the Default
experiment (with the artifact location of the database that opens it) when a copy is first opened, as it
does for a database it migrated. A database that exists is never touched; set
``ARGOFL_MLFLOW_TEMPLATE=0`` to let MLflow create every database itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
from importlib import metadata
from pathlib import Path

from argofl.steps.switches import is_off

__all__ = ["DISABLE_VARIABLE", "prepare", "sqlite_path", "template_path"]

log = logging.getLogger(__name__)

DISABLE_VARIABLE = "ARGOFL_MLFLOW_TEMPLATE"
"""Set to ``0`` (or ``false``/``off``/``no``) to have MLflow migrate every new database itself."""

_PACKAGES = ("mlflow", "sqlalchemy", "alembic")


def template_path() -> Path:
    """Where this installation's template lives: named by the versions that decide its schema."""
    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package}==?")
    key = hashlib.sha256(" ".join(versions).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "argofl" / "mlflow" / f"empty-{key}.db"


def sqlite_path(tracking_uri: str) -> str | None:
    """The database file of a ``sqlite:///PATH[?query]`` tracking URI (``""`` or ``:memory:`` for an
    in-memory one); None for any other URI."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]


def prepare(tracking_uri: str) -> bool:
    """Create the database of a ``sqlite:///`` ``tracking_uri`` that does not exist yet, as a copy of the
    template (made first if missing); whether it did. Anything else (another scheme, an existing file, a
    cache that cannot be written, the switch off) is left to MLflow."""
    path = sqlite_path(tracking_uri)
    if path is None or is_off(DISABLE_VARIABLE):
        return False
    database = Path(path)
    if path in ("", ":memory:") or database.exists() or not database.parent.is_dir():
        return False
    template = template_path()
    try:
        if not _usable(template):
            _make_template(template)
        return _copy_new(template, database)
    except OSError as exc:  # only a missed saving: MLflow creates the database as usual
        log.info("MLflow template %s not used (%s); MLflow creates %s itself", template, exc, database)
        return False


def _usable(template: Path) -> bool:
    """Whether ``template`` is a database with MLflow's tables at a schema version (else it is removed)."""
    if not template.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{template.as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = db.execute("SELECT version_num FROM alembic_version").fetchone()
        if version and {"experiments", "runs", "metrics", "params"} <= tables:
            return True
    except sqlite3.Error:
        pass
    log.warning("MLflow database template %s is damaged; rebuilding it", template)
    template.unlink(missing_ok=True)
    return False


def _make_template(template: Path) -> None:
    """Migrate an empty database to MLflow's current schema, then publish it at ``template`` atomically."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    template.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=template.parent, prefix=".building-", suffix=".db")
    os.close(fd)
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{scratch}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(scratch, template)
    finally:
        Path(scratch).unlink(missing_ok=True)
    log.info("MLflow database template written to %s", template)


def _copy_new(template: Path, database: Path) -> bool:
    """Copy ``template`` to ``database`` unless something created ``database`` meanwhile (then keep it)."""
    fd, scratch = tempfile.mkstemp(dir=database.parent, prefix=f".{database.name}.", suffix=".new")
    os.close(fd)
    try:
        shutil.copyfile(template, scratch)
        os.link(scratch, database)  # fails if the database appeared meanwhile: never overwrite one
    except FileExistsError:
        return False
    finally:
        Path(scratch).unlink(missing_ok=True)
    log.info("MLflow database %s created from the template %s", database, template)
    return True
