"""The ``kind: split`` experiment config: settings, cluster options and the ``split:`` section.

```yaml
kind: split
split: {mode: vanilla, cut: pool2}   # steps.split.settings.SplitOptions
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argofl.pipelines.experiment import ClusterOptions, ConfigError, ExperimentConfig, parse_section
from argofl.steps.settings import Settings, SettingsError
from argofl.steps.split.settings import (
    SPLIT_STRATEGY_NOTE,
    UNUSED_SETTINGS,
    SplitOptions,
    cut_problem,
    split_settings_params,
)

__all__ = [
    "SPLIT_PARAMS",
    "SplitExperimentConfig",
    "check_split_parameters",
    "refused_setting",
    "split_config",
    "split_param",
]

SPLIT_PARAMS = ("cut", "idle_timeout", "request_timeout")
"""Split options that are workflow parameters (``split-cut``, …): they may change per submission; mode and
port shape the manifest and are fixed at compile time."""


def split_param(key: str) -> str:
    """The workflow parameter of split option ``key``: ``idle_timeout`` → ``split-idle-timeout``."""
    return "split-" + key.replace("_", "-")


@dataclass(frozen=True)
class SplitExperimentConfig(ExperimentConfig):
    """A ``kind: split`` experiment config: settings, cluster options and the ``split:`` section."""

    split: SplitOptions = field(default_factory=SplitOptions)

    def workflow_parameters(self) -> dict[str, str]:
        """The settings split learning uses (none of FedAvg's own) and the ``split-*`` options."""
        options = {split_param(k): str(getattr(self.split, k)) for k in SPLIT_PARAMS}
        return {**split_settings_params(self.settings), **options}


def split_config(
    *,
    name: str,
    settings: Settings,
    cluster: ClusterOptions,
    source: Path | None,
    sections: Mapping[str, Any],
    where: str,
) -> SplitExperimentConfig:
    """Validate the ``split:`` section (in ``sections``) of a ``kind: split`` config."""
    options = parse_section(sections, "split", SplitOptions.from_mapping, where=where, default=SplitOptions())
    cut = cut_problem(settings.framework, settings.model, options.cut)
    if cut is not None:
        raise ConfigError(f"{where}: {cut}")
    if cluster.rounds_per_workflow:
        raise ConfigError(
            f"{where}: cluster.rounds_per_workflow: only kind fedavg runs blocks of rounds as child "
            "workflows, not kind split; remove it"
        )
    if cluster.aggregate_fanin:
        raise ConfigError(
            f"{where}: cluster.aggregate_fanin: only kind fedavg combines partial sums, not kind split; "
            "remove it"
        )
    return SplitExperimentConfig(
        name=name, settings=settings, cluster=cluster, source=source, kind="split", split=options
    )


def refused_setting(settings: Settings) -> str | None:
    """Why split learning cannot honour one of ``settings`` (a strategy other than fedavg, or a FedAvg
    setting it would otherwise ignore silently); None when it can honour them all."""
    if settings.strategy != "fedavg":
        return f"strategy: {SPLIT_STRATEGY_NOTE}, got {settings.strategy!r}"
    if settings.attack != "none":
        return f"attack: split learning simulates no attacks, got {settings.attack!r}"
    if settings.fraction != 1.0:
        return f"fraction: split learning trains every client each round (1.0), got {settings.fraction!r}"
    if settings.clients_per_pod != 1:
        return (
            f"clients_per_pod: split learning runs one pod per client (1), got {settings.clients_per_pod!r}"
        )
    for name, value in settings.changed(UNUSED_SETTINGS).items():
        return f"{name}: split learning has no use for this FedAvg setting, got {value!r}; remove it"
    return settings.unused_alpha()


def check_split_parameters(values: Mapping[str, str], where: str) -> None:
    """Validate the ``split-*`` parameter values of a split workflow (``-p split-cut=…``), as
    :func:`split_config` does a config's (the settings split learning refuses are the kind's
    ``refused``: :func:`refused_setting`)."""
    given = {k: values[split_param(k)] for k in SPLIT_PARAMS if split_param(k) in values}
    options = SplitOptions.from_mapping(given, where=where, strings=True)
    cut = cut_problem(values.get("framework", "").strip(), values.get("model", "").strip(), options.cut)
    if cut is not None:
        raise SettingsError(f"{where}: {cut}")
