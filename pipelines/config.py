"""Experiment config files: the settings (:class:`steps.settings.Settings`) plus a ``cluster`` section.

```yaml
experiment: fedavg-fmnist-torch     # every top-level key is a setting (also an Argo parameter)
rounds: 5
cluster:                            # how pods are requested on Kubernetes (compile-time)
  image: argofl/step-torch-cpu:0.1.0
  gpus: 0
```
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from argofl.steps.client_data import DataOptions
from argofl.steps.errors import BadInputError
from argofl.steps.mapping import dataclass_from_mapping
from argofl.steps.settings import Settings, SettingsError

__all__ = ["ClusterOptions", "ConfigError", "ExperimentConfig", "load_config"]

KINDS = ("fedavg", "split")
"""Top-level ``kind:`` of a config: which builder compiles it (default fedavg)."""

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


class ConfigError(BadInputError, ValueError):
    """A config file is unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class ClusterOptions:
    """Kubernetes-side options, fixed when the workflow is compiled."""

    image: str = "argofl/step-torch-cpu:0.1.0"
    namespace: str = "argofl"
    service_account: str = "argofl-workflow"
    store: str = "s3://argofl"
    s3_endpoint: str = "http://minio:9000"
    mlflow_uri: str = "http://mlflow:5000"
    mlflow_ui: str = ""  # the MLflow UI as browsers reach it (run links); default: mlflow_uri
    gpus: int = 0
    cpu: str = "1"
    memory: str = "2Gi"
    parallelism: int = 10
    retries: int = 2
    step_timeout: int = 3600
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    rounds_per_workflow: int = 0  # > 0: each block of this many rounds is a child Workflow (blocks.py)

    def __post_init__(self) -> None:
        for name in ("gpus", "retries", "rounds_per_workflow"):
            if getattr(self, name) < 0:
                raise ConfigError(f"cluster.{name}: must be ≥ 0, got {getattr(self, name)!r}")
        for name in ("parallelism", "step_timeout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cluster.{name}: must be ≥ 1, got {getattr(self, name)!r}")
        for name in ("cpu", "memory"):
            if not _QUANTITY.match(getattr(self, name)):
                raise ConfigError(f"cluster.{name}: not a Kubernetes quantity: {getattr(self, name)!r}")
        if not self.image or any(c.isspace() for c in self.image):
            raise ConfigError(f"cluster.image: not an image reference: {self.image!r}")
        for key, value in self.node_selector.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(
                    f"cluster.node_selector: keys and values must be strings, got {key!r}: {value!r}"
                )
        for tol in self.tolerations:
            if not isinstance(tol, dict) or not set(tol) <= {
                "key",
                "operator",
                "value",
                "effect",
                "tolerationSeconds",
            }:
                raise ConfigError(f"cluster.tolerations: not a toleration: {tol!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str) -> ClusterOptions:
        """Build options from a config's ``cluster:`` section; a number is accepted for cpu and memory."""
        values = {k: _number_as_str(v) if k in ("cpu", "memory") else v for k, v in values.items()}
        return dataclass_from_mapping(cls, values, where=where, error=ConfigError, prefix="cluster.")


def _number_as_str(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment config and where it came from."""

    name: str
    settings: Settings
    cluster: ClusterOptions
    source: Path | None = None
    kind: str = "fedavg"
    data: DataOptions = field(default_factory=DataOptions)
    placement: tuple[Any, ...] = ()  # pipelines.placement.PlacementGroup, one per client group


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate the experiment config at ``path``; the workflow is named after the file."""
    file = Path(path)
    where = str(path)
    try:
        size = file.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{where}: {size} bytes, more than the {MAX_CONFIG_BYTES} a config may have "
                "(a config is a page of settings); not parsed"
            )
        doc = yaml.load(file.read_text(), Loader=_StrictLoader)  # a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such config file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read YAML: {' '.join(str(exc).split())}") from None
    return config_from_mapping(doc, name=file.stem, where=where, source=file)


MAX_CONFIG_BYTES = 1024 * 1024


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} on line {line} (first on line {seen[key]})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def config_from_mapping(doc: Any, *, name: str, where: str, source: Path | None = None) -> ExperimentConfig:
    """Validate a parsed config document."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(doc).__name__}")
    values = dict(doc)
    kind = values.pop("kind", "fedavg")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    split_doc = values.pop("split", None) if kind == "split" else None
    data_doc = values.pop("data", None)
    placement_doc = values.pop("placement", None)
    cluster_doc = values.pop("cluster", {}) or {}
    if not isinstance(cluster_doc, dict):
        raise ConfigError(f"{where}: cluster: expected a mapping, got {type(cluster_doc).__name__}")
    try:
        settings = Settings.from_mapping(values, where=where)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    cluster = ClusterOptions.from_mapping(cluster_doc, where=where)
    if not re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", name):
        raise ConfigError(f"{where}: config file name {name!r} must be lowercase letters, digits and '-'")
    data = _data_options(data_doc, kind=kind, where=where)
    if cluster.rounds_per_workflow and kind != "fedavg":
        raise ConfigError(
            f"{where}: cluster.rounds_per_workflow: only kind fedavg runs blocks of rounds as child "
            f"workflows, not kind {kind}; remove it"
        )
    if placement_doc is not None and kind != "fedavg":
        raise ConfigError(f"{where}: placement: only kind fedavg places clients, not kind {kind}")
    if kind == "split":
        from argofl.pipelines.build_split import split_config

        return split_config(
            name=name, settings=settings, cluster=cluster, source=source, split=split_doc or {}, where=where
        )
    from argofl.pipelines.placement import parse_placement

    placement = parse_placement(placement_doc, clients=settings.clients, where=where)
    return ExperimentConfig(
        name=name, settings=settings, cluster=cluster, source=source, data=data, placement=placement
    )


def _data_options(doc: Any, *, kind: str, where: str) -> DataOptions:
    """The ``data:`` section (where clients get their data); only FedAvg experiments have one."""
    if doc is None:
        return DataOptions()
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: data: expected a mapping, got {type(doc).__name__}")
    if kind != "fedavg":
        raise ConfigError(f"{where}: data: only kind fedavg reads per-client data sources, not kind {kind}")
    try:
        return DataOptions.from_mapping(doc, where=where)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
