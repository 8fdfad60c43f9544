"""The registry of experiment kinds: the top-level ``kind:`` of a config (``fedavg`` by default, ``split``).

Each :class:`ExperimentKind` owns its config type and how a config's sections become one, its builder
(config → hera ``Workflow``; imported on use: builders import hera), the check of its workflow
parameters' values (the parameters themselves are its config type's ``workflow_parameters()``, which its
builder declares) and how its nodes read in progress lines (:class:`~pipelines.progress.NodeDisplay`).
Loading (``pipelines.config``), compiling, the commands and the Python API look kinds up here.

Adding a kind = a config type (its own module, like ``split_config.py``), a builder whose entrypoint is the
kind's name, one :data:`KINDS` entry, tests and the README.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from argofl.pipelines.experiment import ClusterOptions, ConfigError, ExperimentConfig, parse_section
from argofl.pipelines.progress import NodeDisplay
from argofl.pipelines.split_config import (
    SplitExperimentConfig,
    check_split_parameters,
    refused_setting,
    split_config,
)
from argofl.steps.client_data import DataOptions
from argofl.steps.runinfo import start_problem
from argofl.steps.settings import DEPENDENT_PARAMS, FIELDS, PARAM_NAMES, Settings, SettingsError, param_name
from argofl.steps.strategies import STRATEGIES

if TYPE_CHECKING:
    from hera.workflows import Workflow, WorkflowTemplate

__all__ = [
    "KINDS",
    "ExperimentKind",
    "display_of",
    "get_kind",
    "is_argofl_workflow",
    "kind_of",
    "manifest_kind",
]

EXPERIMENT_LABEL = "argofl.io/experiment"
"""Label of every compiled argofl workflow (``workflow_parts.workflow_settings``)."""
APP_LABEL = ("app.kubernetes.io/name", "argofl")
"""Label (name, value) of every compiled argofl workflow and template, whatever its kind."""


class MakeConfig(Protocol):
    """Validate a config's kind-specific ``sections`` and return the kind's config."""

    def __call__(
        self,
        *,
        name: str,
        settings: Settings,
        cluster: ClusterOptions,
        source: Path | None,
        sections: Mapping[str, Any],
        where: str,
    ) -> ExperimentConfig: ...


@dataclass(frozen=True)
class ExperimentKind:
    """One kind of experiment: how its configs load, build, take parameters and display."""

    name: str
    config_type: type[ExperimentConfig]
    make_config: MakeConfig
    builder: Callable[[ExperimentConfig], Workflow]
    sections: Mapping[str, str] = field(default_factory=dict)
    """Top-level config sections the kind reads (besides settings and ``cluster:``) → what the kind does
    with one, for the line refusing it in another kind's config (``placement: only kind fedavg places
    clients, not kind split``)."""
    refused: Callable[[Settings], str | None] = Settings.unused_option
    """Why the kind cannot honour valid settings (ones it would ignore silently: by default an option of
    another strategy than ``strategy``), or None; refuses a config and a workflow's parameter values."""
    check_values: Callable[[Mapping[str, str], str], None] | None = None
    """Checks the kind's own (non-setting) parameter values; raises ``SettingsError``."""
    display: NodeDisplay = field(default_factory=NodeDisplay)
    rounds_builder: Callable[[ExperimentConfig], WorkflowTemplate | None] | None = None
    """The WorkflowTemplate the children of a config in blocks of rounds reference (``blocks.py``)."""

    def rounds_template(self, cfg: ExperimentConfig) -> WorkflowTemplate | None:
        """The blocks-of-rounds WorkflowTemplate of ``cfg``; None when it runs in one Workflow."""
        return None if self.rounds_builder is None else self.rounds_builder(cfg)

    def build(self, cfg: ExperimentConfig) -> Workflow:
        """The hera workflow of ``cfg`` (a config of this kind)."""
        if cfg.kind != self.name or not isinstance(cfg, self.config_type):
            raise ConfigError(
                f"{cfg.name}: a kind {cfg.kind} {type(cfg).__name__} is no kind {self.name} config "
                f"(a {self.config_type.__name__}); build it with its own kind (kinds.kind_of)"
            )
        return self.builder(cfg)

    def check_parameters(
        self, values: Mapping[str, str], *, where: str, given: Collection[str] | None = None
    ) -> None:
        """Validate a workflow's parameter values (Argo strings): its settings, where its rounds start
        (``start-round``, ``resume-from``: what ``init`` checks), then the kind's own. With ``given`` (the
        names the user set), a setting the workflow's strategy or partition ignores is refused only when
        the user gave it: ``-p strategy=fedavg`` on a FedAvgM workflow is an A/B run, not a mistake."""
        settings_values = {k: v for k, v in values.items() if k in PARAM_NAMES}
        settings = Settings.from_mapping(settings_values, where=where, strings=True)
        judged = settings
        if given is not None:
            # the dependent settings not given, at their defaults: only to judge what the user set, not
            # validated (krum_f's default 1 needs 5 clients where the workflow's krum_f=0 needs 3)
            judged = copy.copy(settings)
            reset = DEPENDENT_PARAMS - set(given)
            for f in FIELDS:
                if param_name(f.name) in reset:
                    object.__setattr__(judged, f.name, f.default)
        refused = self.refused(judged)
        if refused is not None:
            raise SettingsError(f"{where}: {refused}")
        if "start-round" in values:  # older manifests start at round 1 only
            _check_start(values["start-round"], values.get("resume-from", ""), settings.rounds, where)
        if self.check_values is not None:
            self.check_values(values, where)


def _check_start(start_round: str, resume_from: str, rounds: int, where: str) -> None:
    try:
        first = int(start_round.strip())
    except ValueError:
        raise SettingsError(f"{where}: start-round: expected int, got {start_round!r}") from None
    problem = start_problem(first, resume_from.strip(), rounds)
    if problem is not None:
        raise SettingsError(f"{where}: {problem}")


def _fedavg_config(
    *,
    name: str,
    settings: Settings,
    cluster: ClusterOptions,
    source: Path | None,
    sections: Mapping[str, Any],
    where: str,
) -> ExperimentConfig:
    from argofl.pipelines.placement import parse_placement  # hera, on use

    data = parse_section(sections, "data", DataOptions.from_mapping, where=where, default=DataOptions())
    placement = parse_placement(sections.get("placement"), clients=settings.clients, where=where)
    if cluster.aggregate_fanin and not STRATEGIES[settings.strategy].linear:
        raise ConfigError(
            f"{where}: cluster.aggregate_fanin: a tree of aggregate tasks needs a linear strategy "
            f"({', '.join(n for n, i in STRATEGIES.items() if i.linear)}), not {settings.strategy!r}; "
            "remove it"
        )
    return ExperimentConfig(
        name=name, settings=settings, cluster=cluster, source=source, data=data, placement=placement
    )


def _build_fedavg(cfg: ExperimentConfig) -> Workflow:
    from argofl.pipelines.build_fedavg import build_workflow

    return build_workflow(cfg)


def _build_fedavg_rounds(cfg: ExperimentConfig) -> WorkflowTemplate | None:
    from argofl.pipelines.build_fedavg import build_rounds_template

    return build_rounds_template(cfg)


def _build_split(cfg: ExperimentConfig) -> Workflow:
    from argofl.pipelines.build_split import build_split_workflow

    return build_split_workflow(cfg)


# fedavg: rounds of distribute, train on every client, aggregate, evaluate (build_fedavg.py)
# split: a server daemon holds the top half, clients their data and bottom half (build_split.py)
KINDS: dict[str, ExperimentKind] = {
    kind.name: kind
    for kind in (
        ExperimentKind(
            name="fedavg",
            config_type=ExperimentConfig,
            make_config=_fedavg_config,
            builder=_build_fedavg,
            rounds_builder=_build_fedavg_rounds,
            sections={"data": "reads per-client data sources", "placement": "places clients"},
            # a placement group's train-<group> template trains like train
            display=NodeDisplay({"train-": "train"}),
        ),
        ExperimentKind(
            name="split",
            config_type=SplitExperimentConfig,
            make_config=split_config,
            builder=_build_split,
            refused=refused_setting,
            sections={"split": "splits the model between clients and a server"},
            check_values=check_split_parameters,
            # its clients train: progress lines show them as FedAvg's
            display=NodeDisplay({"split-client": "train", "split-server": "server"}),
        ),
    )
}
"""Every experiment kind by name; the first is the default."""

DEFAULT_KIND = next(iter(KINDS))


def get_kind(name: Any, *, where: str) -> ExperimentKind:
    """The kind called ``name``; a :class:`ConfigError` naming the known ones otherwise."""
    if isinstance(name, str) and name in KINDS:
        return KINDS[name]
    raise ConfigError(f"{where}: kind: must be one of {', '.join(KINDS)}, got {name!r}")


def kind_of(cfg: ExperimentConfig) -> ExperimentKind:
    """The kind of a loaded config."""
    return get_kind(cfg.kind, where=cfg.name)


def manifest_kind(manifest: Mapping[str, Any]) -> ExperimentKind | None:
    """The kind of a compiled argofl workflow (its entrypoint is the kind's name); None for another
    workflow (``argofl local run`` runs any)."""
    labels = (manifest.get("metadata") or {}).get("labels") or {}
    entrypoint = (manifest.get("spec") or {}).get("entrypoint")
    if EXPERIMENT_LABEL not in labels or not isinstance(entrypoint, str):
        return None
    return KINDS.get(entrypoint)


def is_argofl_workflow(manifest: Mapping[str, Any]) -> bool:
    """Whether argofl compiled ``manifest`` (a Workflow or WorkflowTemplate): it carries :data:`APP_LABEL`."""
    labels = (manifest.get("metadata") or {}).get("labels") or {}
    name, value = APP_LABEL
    return isinstance(labels, Mapping) and labels.get(name) == value


def display_of(manifest: Mapping[str, Any]) -> NodeDisplay:
    """How the nodes of ``manifest`` (a workflow, status included or not) read in progress lines: its
    kind's display, or every kind's at once for a workflow whose kind is not known."""
    kind = manifest_kind(manifest)
    if kind is not None:
        return kind.display
    return NodeDisplay({k: v for known in KINDS.values() for k, v in known.display.steps.items()})
