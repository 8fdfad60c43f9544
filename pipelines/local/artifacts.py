"""Input and output artifacts through a :class:`steps.store.Store`.

Every ``s3`` location (key-only or not: bucket, endpoint and credentials are ignored), the default
artifact repository and any ``artifactRepositoryRef`` resolve to the one store given to the executor.

* Outputs are archived as Argo does by default: a gzipped tarball whose single top-level entry is the
  file or directory, stored at the key (``<wf>/<node-id>/<name>.tgz`` when no key is given). With
  ``archive: {none: {}}`` a file is stored as is and a directory as one object per file below the key.
* Inputs are read back symmetrically: an object at the key is unpacked when it is a tarball (or when
  ``archive.tar`` says so) and copied otherwise; a key with objects below it is a directory. ``raw`` data
  is written as is.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from argofl.steps.errors import ArgoflError
from argofl.steps.store import ObjectNotFound, Store, StoreError

__all__ = ["ArtifactError", "has_location", "load_artifact", "save_artifact"]

_GZIP_MAGIC = b"\x1f\x8b"


class ArtifactError(ArgoflError, RuntimeError):
    """An artifact could not be saved or loaded."""


def has_location(art: Mapping[str, Any]) -> bool:
    """Whether the artifact says where its data is (an ``s3`` key or ``raw`` data)."""
    s3 = art.get("s3")
    return bool(isinstance(s3, Mapping) and s3.get("key")) or isinstance(art.get("raw"), Mapping)


def _archive_kind(art: Mapping[str, Any]) -> str | None:
    archive = art.get("archive")
    if isinstance(archive, Mapping):
        if "none" in archive:
            return "none"
        if "tar" in archive:
            return "tar"
    return None


def save_artifact(store: Store, art: Mapping[str, Any], source: Path, default_prefix: str) -> dict[str, Any]:
    """Upload the file or directory at ``source``; return the artifact as Argo records it (with its key)."""
    if not source.exists():
        raise ArtifactError(
            f"output artifact {art.get('name')!r}: {art.get('path')}: no such file or directory"
        )
    kind = _archive_kind(art) or "tar"
    s3 = art.get("s3") if isinstance(art.get("s3"), Mapping) else None
    key = str(s3.get("key", "")).strip("/") if s3 else ""
    if not key:
        name = f"{art['name']}.tgz" if kind == "tar" else source.name
        key = f"{default_prefix.strip('/')}/{name}"
    try:
        if kind == "none":
            if source.is_dir():
                store.put_dir(key, source)
            else:
                store.put_file(key, source)
        else:
            fd, tmp = tempfile.mkstemp(prefix=".art-", suffix=".tgz", dir=source.parent)
            os.close(fd)
            try:
                with tarfile.open(tmp, "w:gz") as tar:
                    tar.add(str(source), arcname=source.name)
                store.put_file(key, tmp)
            finally:
                Path(tmp).unlink(missing_ok=True)
    except (OSError, StoreError) as exc:
        raise ArtifactError(
            f"output artifact {art.get('name')!r}: cannot save {art.get('path')} to {key}: {exc}"
        ) from exc
    out: dict[str, Any] = {"name": art["name"], "path": art.get("path"), "s3": {"key": key}}
    for field in ("archive", "globalName", "optional", "mode"):
        if field in art:
            out[field] = art[field]
    return out


def load_artifact(store: Store, art: Mapping[str, Any], dest: Path) -> None:
    """Place the artifact's data at ``dest``; raise :class:`ObjectNotFound` when the key holds nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    raw = art.get("raw")
    if isinstance(raw, Mapping):
        dest.write_text(str(raw.get("data", "")))
        _chmod(art, dest)
        return
    s3 = art.get("s3")
    key = str(s3.get("key", "")).strip("/") if isinstance(s3, Mapping) else ""
    if not key:
        raise ArtifactError(f"input artifact {art.get('name')!r} has no location (s3 key, raw data or from)")
    kind = _archive_kind(art)
    try:
        if store.exists(key):
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
            os.close(fd)
            try:
                store.get_file(key, tmp)
                if kind == "tar" or (kind is None and _is_gzip(Path(tmp))):
                    _untar(Path(tmp), dest)
                else:
                    _replace(Path(tmp), dest)
            finally:
                Path(tmp).unlink(missing_ok=True)
        elif store.list(key + "/"):
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            store.get_dir(key, dest)
        else:
            raise ObjectNotFound(f"no object at {store.key_uri(key)}")
    except ObjectNotFound:
        raise
    except (OSError, StoreError, tarfile.TarError) as exc:
        raise ArtifactError(f"input artifact {art.get('name')!r}: cannot load {key}: {exc}") from exc
    _chmod(art, dest)


def _chmod(art: Mapping[str, Any], dest: Path) -> None:
    mode = art.get("mode")
    if isinstance(mode, int) and dest.is_file():
        os.chmod(dest, mode)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _replace(src: Path, dest: Path) -> None:
    if dest.is_dir():
        shutil.rmtree(dest)
    os.replace(src, dest)


def _untar(archive: Path, dest: Path) -> None:
    """Extract ``archive``: a single top-level entry becomes ``dest``; several fill the directory ``dest``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(staging, filter="data")
        entries = list(staging.iterdir())
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        if len(entries) == 1:
            os.replace(entries[0], dest)
        else:
            os.replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
