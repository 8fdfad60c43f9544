"""Placement and least privilege: the ``placement:`` section of a FedAvg config.

```yaml
placement:                      # one entry per client or group of clients (every client in exactly one)
  - name: site-a                # DNS label: the group's train template is train-site-a
    clients: [0, 1]
    node_selector: {argofl.io/site: a}
    affinity: {nodeAffinity: …}  # a Kubernetes affinity, as in a pod spec
    tolerations: [{key: site, operator: Equal, value: a, effect: NoSchedule}]
    volume: {pvc: site-a-data}  # or {host_path: /srv/site-a}; mounted read-only at mount_path
    mount_path: /data
    secret: site-a-s3           # keys accesskey, secretkey (endpoint optional) → ARGOFL_DATA_S3_*
```

Each group compiles to its own train template that alone carries the group's node selection, volume
and Secret; ``distribute`` sorts the round's sampled clients into one list per group (output parameter
``clients-<name>``) and the round fans out over each list with that group's template. So a pod only
ever runs clients of its group, and only its group's volume and Secret reach it; no other template
(init, distribute, aggregate, evaluate, finalize) mounts a client volume or reads a client Secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hera.workflows import SecretEnv
from hera.workflows.models import (
    Affinity,
    HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource,
    Toleration,
    Volume,
    VolumeMount,
)

from argofl.pipelines.experiment import ConfigError
from argofl.steps.mapping import dataclass_from_mapping

__all__ = ["DATA_VOLUME", "PlacementGroup", "parse_placement", "placement_arg"]

DATA_VOLUME = "client-data"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclass(frozen=True)
class PlacementGroup:
    """Pod settings of one client or group of clients."""

    name: str
    clients: list[int]
    node_selector: dict[str, str] = field(default_factory=dict)
    affinity: dict[str, Any] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    volume: dict[str, str] = field(default_factory=dict)
    mount_path: str = "/data"
    secret: str = ""

    def __post_init__(self) -> None:
        at = f"placement {self.name!r}"
        if not _LABEL.match(self.name):
            raise ConfigError(
                f"placement.name: must be a DNS label (lowercase, digits, '-'), got {self.name!r}"
            )
        if not self.clients or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in self.clients
        ):
            raise ConfigError(
                f"{at}: clients must be a non-empty list of client indices, got {self.clients!r}"
            )
        for key, value in self.node_selector.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(
                    f"{at}: node_selector keys and values must be strings, got {key!r}: {value!r}"
                )
        for tol in self.tolerations:
            if not isinstance(tol, dict) or not set(tol) <= _TOLERATION_KEYS:
                raise ConfigError(f"{at}: not a toleration: {tol!r}")
        if self.affinity:
            try:
                Affinity.model_validate(self.affinity)
            except ValueError as exc:
                raise ConfigError(
                    f"{at}: affinity is not a Kubernetes affinity: {_first_line(exc)}"
                ) from None
        if self.volume and (len(self.volume) != 1 or not set(self.volume) <= {"pvc", "host_path"}):
            raise ConfigError(
                f"{at}: volume must be {{pvc: CLAIM}} or {{host_path: /PATH}}, got {self.volume!r}"
            )
        if not str(self.volume.get("host_path", "/")).startswith("/") or not self.mount_path.startswith("/"):
            raise ConfigError(f"{at}: volume host_path and mount_path must be absolute paths")
        if self.secret and not re.match(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$", self.secret):
            raise ConfigError(f"{at}: secret must be a Secret name, got {self.secret!r}")

    # ------------------------------------------------------------------------------ template pieces

    def template_settings(
        self,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """Keyword arguments of the group's train template (hera ``Container``).

        Argo gives a pod its template's nodeSelector and tolerations *instead of* the workflow's, so the
        ``cluster:`` section's (``node_selector``, ``tolerations``: a GPU node pool's, say) are kept beside
        the group's here; the group's value wins for a node label both name.
        """
        settings: dict[str, Any] = {}
        if self.node_selector:
            settings["node_selector"] = {**(node_selector or {}), **self.node_selector}
        if self.affinity:
            settings["affinity"] = Affinity.model_validate(self.affinity)
        if self.tolerations:
            extra = [t for t in self.tolerations if t not in tolerations]
            settings["tolerations"] = [Toleration(**t) for t in [*tolerations, *extra]]
        if self.volume:
            settings["volumes"] = [self._volume()]
        return settings

    def _volume(self) -> Volume:
        if "pvc" in self.volume:
            claim = PersistentVolumeClaimVolumeSource(claim_name=self.volume["pvc"], read_only=True)
            return Volume(name=DATA_VOLUME, persistent_volume_claim=claim)
        return Volume(name=DATA_VOLUME, host_path=HostPathVolumeSource(path=self.volume["host_path"]))

    def mounts(self) -> list[VolumeMount]:
        return (
            [VolumeMount(name=DATA_VOLUME, mount_path=self.mount_path, read_only=True)] if self.volume else []
        )

    def env(self) -> list[SecretEnv]:
        """The client's store credentials from its own Secret (read by :mod:`steps.client_data`)."""
        if not self.secret:
            return []
        keys = (("ENDPOINT", "endpoint"), ("ACCESS_KEY", "accesskey"), ("SECRET_KEY", "secretkey"))
        return [
            SecretEnv(
                name=f"ARGOFL_DATA_S3_{var}",
                secret_name=self.secret,
                secret_key=key,
                optional=key == "endpoint",
            )
            for var, key in keys
        ]


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def parse_placement(doc: Any, *, clients: int, where: str) -> tuple[PlacementGroup, ...]:
    """Validate a config's ``placement:`` list against the number of clients."""
    if doc is None:
        return ()
    if not isinstance(doc, list) or not doc:
        raise ConfigError(f"{where}: placement: expected a non-empty list of groups, got {doc!r}")
    groups = []
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: placement[{i}]: expected a mapping, got {type(entry).__name__}")
        try:
            groups.append(
                dataclass_from_mapping(
                    PlacementGroup, entry, where=where, error=ConfigError, prefix="placement."
                )
            )
        except ConfigError as exc:
            raise ConfigError(f"{exc} (placement[{i}])") from None
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: placement: group names must be unique, got {names}")
    owner: dict[int, str] = {}
    for g in groups:
        for c in g.clients:
            if c in owner:
                raise ConfigError(f"{where}: placement: client {c} is in both {owner[c]!r} and {g.name!r}")
            if c >= clients:
                raise ConfigError(
                    f"{where}: placement {g.name!r}: client {c} does not exist (clients: {clients})"
                )
            owner[c] = g.name
    given: dict[tuple[str, str], str] = {}
    for g in groups:
        for kind, value in (("Secret", g.secret), ("PVC", g.volume.get("pvc", ""))):
            if value and (kind, value) in given:
                raise ConfigError(
                    f"{where}: placement: {kind} {value!r} is given to both {given[kind, value]!r} and "
                    f"{g.name!r}; each group gets its own (least privilege)"
                )
            given[kind, value] = g.name
    missing = sorted(set(range(clients)) - set(owner))
    if missing:
        raise ConfigError(
            f"{where}: placement: clients {missing} are in no group; every client needs its own pod settings"
        )
    return tuple(groups)


def placement_arg(groups: Sequence[PlacementGroup]) -> str:
    """``{"site-a": [0, 1], …}``: what ``argofl step distribute --placement`` takes."""
    return json.dumps({g.name: list(g.clients) for g in groups}, separators=(",", ":"))
