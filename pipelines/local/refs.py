"""Secrets and ConfigMaps for ``env[].valueFrom`` from a local file of Kubernetes manifests.

``--secrets FILE`` takes what ``kubectl create secret … --dry-run=client -o yaml`` (or a cluster's
``kubectl get secret -o yaml``) writes: YAML documents of ``kind: Secret`` (``data`` base64,
``stringData`` plain) and ``kind: ConfigMap`` (``data``). A ``secretKeyRef``/``configMapKeyRef`` then
resolves from them first, and only then from the environment variable of the env entry's name.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from argofl.pipelines.local.errors import WorkflowInputError

__all__ = ["KeyRefs", "load_refs"]

KeyRefs = Mapping[tuple[str, str], Mapping[str, str]]
"""(``Secret`` | ``ConfigMap``, name) → {key: value}."""


def _values(path: Path, kind: str, name: str, doc: Mapping[str, Any]) -> dict[str, str]:
    where = f"{path}: {kind} {name}"
    values: dict[str, str] = {}
    data = doc.get("data") or {}
    if not isinstance(data, Mapping):
        raise WorkflowInputError(
            f"{where}: data must be a mapping of keys to values, got {type(data).__name__}"
        )
    for key, value in data.items():
        if kind == "Secret":
            try:
                values[str(key)] = base64.b64decode(str(value), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise WorkflowInputError(
                    f"{where}: data.{key} is not base64 of UTF-8 text (use stringData for plain values)"
                ) from None
        else:
            values[str(key)] = str(value)
    plain = doc.get("stringData") or {}
    if kind == "Secret" and isinstance(plain, Mapping):
        values.update({str(k): str(v) for k, v in plain.items()})
    return values


def load_refs(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The Secrets and ConfigMaps in ``path``; a bad file is one :class:`WorkflowInputError` line."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WorkflowInputError(
            f"--secrets {path}: cannot read it as YAML: {' '.join(str(exc).split())}"
        ) from None
    refs: dict[tuple[str, str], dict[str, str]] = {}
    for number, doc in enumerate(docs, start=1):
        kind = doc.get("kind") if isinstance(doc, Mapping) else None
        if kind == "List" and isinstance(doc.get("items"), list):  # kubectl get … -o yaml of several
            docs.extend(doc["items"])
            continue
        if kind not in ("Secret", "ConfigMap"):
            raise WorkflowInputError(
                f"--secrets {path}: document {number} is {kind or 'not a Kubernetes object'}; "
                "expected kind Secret or ConfigMap"
            )
        name = str((doc.get("metadata") or {}).get("name") or "")
        if not name:
            raise WorkflowInputError(f"--secrets {path}: a {kind} (document {number}) has no metadata.name")
        refs.setdefault((kind, name), {}).update(_values(path, kind, name, doc))
    return refs
