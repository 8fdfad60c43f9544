"""The experiment config types every kind shares: the ``cluster:`` section, the config itself and its error.

Kinds extend :class:`ExperimentConfig` with their own sections (:mod:`pipelines.split_config`); loading a
file and choosing the kind is :mod:`pipelines.config`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from argofl.steps.client_data import DataOptions
from argofl.steps.errors import BadInputError
from argofl.steps.mapping import dataclass_from_mapping
from argofl.steps.settings import Settings, SettingsError

__all__ = ["ClusterOptions", "ConfigError", "ExperimentConfig", "parse_section"]

T = TypeVar("T")

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


class ConfigError(BadInputError, ValueError):
    """A config file is unreadable or invalid; the message names the file and the key."""


def parse_section(
    sections: Mapping[str, Any],
    section: str,
    from_mapping: Callable[..., T],
    *,
    where: str,
    default: T,
) -> T:
    """A kind's config section ``section`` (in ``sections``) as ``from_mapping(doc, where=where)``;
    ``default`` when it is absent or null. A section that is no mapping or has bad values raises
    :class:`ConfigError` naming it."""
    doc = sections.get(section)
    if doc is None:
        return default
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: {section}: expected a mapping, got {type(doc).__name__}")
    try:
        return from_mapping(doc, where=where)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


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
    aggregate_fanin: int = 0  # > 0: combine tasks each sum ≤ this many pods' outputs (steps/step_combine.py)
    aggregate_levels: int = 1  # levels of combine tasks with aggregate_fanin (steps/combine_plan.py)

    def __post_init__(self) -> None:
        for name in ("gpus", "retries", "rounds_per_workflow"):
            if getattr(self, name) < 0:
                raise ConfigError(f"cluster.{name}: must be ≥ 0, got {getattr(self, name)!r}")
        if self.aggregate_fanin == 1 or self.aggregate_fanin < 0:
            raise ConfigError(
                "cluster.aggregate_fanin: expected 0 (flat aggregation) or at least 2, got "
                f"{self.aggregate_fanin!r}"
            )
        if self.aggregate_levels < 1:
            raise ConfigError(
                "cluster.aggregate_levels: expected at least 1 level of combine tasks, got "
                f"{self.aggregate_levels!r}"
            )
        if self.aggregate_levels > 1 and not self.aggregate_fanin:
            raise _levels_without_fanin(self.aggregate_levels)
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
        options = dataclass_from_mapping(cls, values, where=where, error=ConfigError, prefix="cluster.")
        if "aggregate_levels" in values and not options.aggregate_fanin:
            raise _levels_without_fanin(options.aggregate_levels)
        return options


def _levels_without_fanin(levels: int) -> ConfigError:
    return ConfigError(
        f"cluster.aggregate_levels: {levels!r} needs cluster.aggregate_fanin ≥ 2 (the combine tasks' "
        "fan-in); set aggregate_fanin or remove aggregate_levels"
    )


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

    def workflow_parameters(self) -> dict[str, str]:
        """The experiment's own workflow parameters and their values: every setting, and the ``data-*``
        parameters when the config has a non-default ``data:`` section (older manifests are unchanged)."""
        data = self.data.to_params() if self.data != DataOptions() else {}
        return {**self.settings.to_params(), **data}
