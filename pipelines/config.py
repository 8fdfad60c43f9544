"""Experiment config files: the settings (:class:`steps.settings.Settings`) plus a ``cluster`` section,
and the sections of the config's kind (:mod:`pipelines.kinds`), which makes the config.

```yaml
kind: fedavg                        # default; split reads a split: section, fedavg data: and placement:
experiment: fedavg-fmnist-torch     # every other top-level key is a setting (also an Argo parameter)
rounds: 5
cluster:                            # how pods are requested on Kubernetes (compile-time)
  image: argofl/step-torch-cpu:0.1.0
  gpus: 0
```
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from argofl.pipelines.experiment import ClusterOptions, ConfigError, ExperimentConfig
from argofl.pipelines.kinds import DEFAULT_KIND, KINDS, get_kind
from argofl.steps.settings import Settings, SettingsError

__all__ = ["ClusterOptions", "ConfigError", "ExperimentConfig", "config_from_mapping", "load_config"]


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
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read YAML: {' '.join(str(exc).split())}") from None
    return config_from_mapping(doc, name=file.stem, where=where, source=file)


MAX_CONFIG_BYTES = 1024 * 1024
ARGO_KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate")
"""Kinds of Argo manifest: a file of one is given where a config is expected."""


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
    if doc is None:
        raise ConfigError(f"{where}: empty (no YAML document); expected a mapping of settings")
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(doc).__name__}")
    values = dict(doc)
    if "apiVersion" in values and values.get("kind") in ARGO_KINDS:  # argofl compile's output
        raise ConfigError(
            f"{where}: an Argo {values['kind']} manifest, not an experiment config: give the config it was "
            f"compiled from (configs/…), or run the manifest itself with argofl local run {where}"
        )
    kind = get_kind(values.pop("kind", DEFAULT_KIND), where=where)
    sections = {section: values.pop(section) for section in kind.sections if section in values}
    for other in KINDS.values():
        for section, does in other.sections.items():
            if section in values and section not in kind.sections:
                raise ConfigError(f"{where}: {section}: only kind {other.name} {does}, not kind {kind.name}")
    cluster_doc = values.pop("cluster", {}) or {}
    if not isinstance(cluster_doc, dict):
        raise ConfigError(f"{where}: cluster: expected a mapping, got {type(cluster_doc).__name__}")
    try:
        settings = Settings.from_mapping(values, where=where)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    refused = kind.refused(settings)
    if refused is not None:
        raise ConfigError(f"{where}: {refused}")
    cluster = ClusterOptions.from_mapping(cluster_doc, where=where)
    if not re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", name):
        raise ConfigError(f"{where}: config file name {name!r} must be lowercase letters, digits and '-'")
    return kind.make_config(
        name=name, settings=settings, cluster=cluster, source=source, sections=sections, where=where
    )
