"""Experiment settings: one schema for config files, Argo workflow parameters and step arguments.

Every setting is a workflow parameter (``min_clients`` in YAML is ``min-clients`` in Argo), so
``argo submit argo/X.yaml -p rounds=20`` works, and the ``init`` step validates the values it is
given with the same rules as ``argofl compile`` does before freezing them into the run's
``run.json``. Later steps read the frozen settings from there.

Choices come from their registries (:data:`~steps.frameworks.FRAMEWORKS`,
:data:`~steps.frameworks.BUILTIN_MODELS`, :data:`~steps.data.DATASETS`, :data:`~steps.partition.SCHEMES`,
:data:`~steps.strategies.STRATEGIES`, :data:`~steps.attacks.ATTACKS`), read when a value is checked:
an entry added there is a valid setting without an edit here. The strategies' options
(:func:`~steps.strategies.strategy_options`) are settings too, declared with their strategies: a field
each, added after ``strategy`` when this module is imported (:func:`_with_strategy_options`); steps read
them with :meth:`Settings.option`. An option of strategies other than ``strategy``, set away from its
default, would do nothing: configs, parameters and the ``init`` step refuse it
(:meth:`Settings.unused_option`; not a check of every :class:`Settings`, so that split learning says
why it has no use for one, and a ``run.json`` an older argofl froze stays readable).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from argofl.steps import checks
from argofl.steps.attacks import ATTACKS
from argofl.steps.data import DATASETS
from argofl.steps.errors import BadInputError
from argofl.steps.frameworks import BUILTIN_MODELS, FRAMEWORKS
from argofl.steps.labels import MAX_RANGE
from argofl.steps.mapping import dataclass_from_mapping
from argofl.steps.partition import SCHEMES
from argofl.steps.strategies import STRATEGIES, Option, strategy_options

__all__ = ["FIELDS", "MAX_CLIENTS", "MAX_ROUNDS", "Settings", "SettingsError", "param_name"]

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")


class SettingsError(BadInputError, ValueError):
    """A setting is unknown, of the wrong type or out of range."""


def _listed(choices: Collection[str]) -> str:
    """``"a, b or c"``, for help texts."""
    *first, last = choices
    return f"{', '.join(first)} or {last}" if first else last


def _client_list(value: Any) -> str | None:
    if value == "" or re.match(r"^\d+(,\d+)*$", value):
        return None
    return "must be client indices separated by commas, e.g. '0,1' (or empty)"


def _dns_name(value: Any) -> str | None:
    if _NAME_RE.match(value):
        return None
    return "must be lowercase letters, digits and '-', starting and ending with a letter or digit"


def _model(value: Any) -> str | None:
    if value in BUILTIN_MODELS or re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", value):
        return None
    return f"must be a built-in model ({', '.join(BUILTIN_MODELS)}) or 'package.module:factory'"


_T = TypeVar("_T")
_V = TypeVar("_V", int, float, str)

_PLACED_AFTER = {"max_client_examples": "server_tau"}
"""Settings listed after a strategy option rather than at their place here: where they were added when the
options were still declared in this class, so that compiled workflows keep their parameters' order."""


def _with_strategy_options(cls: type[_T]) -> type[_T]:
    """Declare a field per strategy option right after ``strategy`` (before :func:`dataclass` reads the
    class): each option then is a setting like the others, in config, parameters, checks and ``run.json``."""
    annotations: dict[str, Any] = {}
    for name, annotation in cls.__annotations__.items():
        annotations[name] = annotation
        if name != "strategy":
            continue
        for option in strategy_options().values():
            if option.name in cls.__annotations__:
                raise TypeError(f"strategy option {option.name!r}: already a setting; name it otherwise")
            if not re.fullmatch(r"[a-z][a-z0-9_]*", option.name):
                raise TypeError(f"strategy option {option.name!r}: expected a lowercase_name (a config key)")
            annotations[option.name] = option.type.__name__
            metadata = {"help": option.help, "check": option.check}
            setattr(cls, option.name, field(default=option.default, metadata=metadata))
    names = list(annotations)
    for name, after in _PLACED_AFTER.items():
        if after in annotations:
            names.remove(name)
            names.insert(names.index(after) + 1, name)
    cls.__annotations__ = {name: annotations[name] for name in names}
    return cls


EVAL_BATCH_SIZE = 256
"""Default evaluation batch: on CPU, a batch whose activations stay below glibc's 32 MiB mmap threshold
reuses the same heap memory batch after batch; 1000 Fashion-MNIST images through the built-in CNN
(50 MB for the first conv layer's output) took fresh, page-faulting memory each batch: 1.33 s against
0.88 s for the 10,000 test images in a new process."""
MAX_ROUNDS = 9999
"""Most rounds a run may have: the store's round keys have four digits, and a run's rounds are its
workflow's nodes (a value such as 10**8 would fill memory expanding the round loop)."""
MAX_CLIENTS = MAX_RANGE
"""Most clients a run may have: a pod of every client is labelled ``clients 0-N`` and its steps read no
wider range; ``distribute`` draws each round's sample from all clients (10**11 is a MemoryError)."""


@dataclass(frozen=True)
@_with_strategy_options
class Settings:
    """The settings of one federated experiment (see ``configs/`` for annotated examples)."""

    experiment: str = field(
        metadata={"help": "experiment name (MLflow experiment, store prefix)", "check": _dns_name}
    )
    framework: str = field(
        default="torch", metadata={"help": _listed(FRAMEWORKS), "check": checks.choice(FRAMEWORKS)}
    )
    dataset: str = field(
        default="fashion-mnist",
        metadata={"help": _listed(DATASETS), "check": checks.choice(DATASETS)},
    )
    data_dir: str = field(
        default="", metadata={"help": "dataset directory (default: the dataset's usual place)"}
    )
    data_limit: int = field(
        default=0,
        metadata={
            "help": "use only the first N training examples (0 = all; for smoke tests)",
            "check": checks.at_least(0),
        },
    )
    model: str = field(
        default="cnn",
        metadata={"help": f"{', '.join(BUILTIN_MODELS)} or package.module:factory", "check": _model},
    )
    partition: str = field(
        default="iid", metadata={"help": _listed(SCHEMES), "check": checks.choice(SCHEMES)}
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "Dirichlet concentration (smaller = more skew)", "check": checks.positive},
    )
    clients: int = field(
        default=10,
        metadata={
            "help": f"number of clients (at most {MAX_CLIENTS})",
            "check": checks.within(1, MAX_CLIENTS, " (distribute samples each round from every client)"),
        },
    )
    fraction: float = field(
        default=1.0, metadata={"help": "fraction of clients sampled per round", "check": checks.fraction}
    )
    min_clients: int = field(
        default=1,
        metadata={
            "help": "fewest clients sampled, and fewest valid updates needed to aggregate",
            "check": checks.at_least(1),
        },
    )
    clients_per_pod: int = field(
        default=1,
        metadata={"help": "clients trained one after another in one pod", "check": checks.at_least(1)},
    )
    rounds: int = field(
        default=5,
        metadata={
            "help": f"federated rounds (at most {MAX_ROUNDS})",
            "check": checks.within(1, MAX_ROUNDS, " (the store numbers rounds round-NNNN)"),
        },
    )
    local_epochs: int = field(
        default=1, metadata={"help": "local epochs per round", "check": checks.at_least(1)}
    )
    batch_size: int = field(default=32, metadata={"help": "local batch size", "check": checks.at_least(1)})
    lr: float = field(default=0.05, metadata={"help": "local SGD learning rate", "check": checks.positive})
    momentum: float = field(default=0.9, metadata={"help": "local SGD momentum", "check": checks.momentum})
    seed: int = field(
        default=0,
        metadata={"help": "seed for init, sampling, partitioning, training", "check": checks.at_least(0)},
    )
    strategy: str = field(
        default="fedavg",
        metadata={
            "help": "aggregation (README's strategy table): " + ", ".join(STRATEGIES),
            "check": checks.choice(STRATEGIES),
        },
    )
    max_client_examples: int = field(
        default=0,
        metadata={
            "help": "most training examples one client's update may claim (0 = no cap besides the "
            "client's partition size)",
            "check": checks.at_least(0),
        },
    )
    attack: str = field(
        default="none",
        metadata={
            "help": "TEST FEATURE: what attack_clients do: " + ", ".join(ATTACKS),
            "check": checks.choice(ATTACKS),
        },
    )
    attack_clients: str = field(
        default="",
        metadata={"help": "TEST FEATURE: malicious client indices, e.g. '0,1'", "check": _client_list},
    )
    attack_scale: float = field(
        default=10.0,
        metadata={
            "help": "TEST FEATURE: sign-flip/scale factor, gaussian noise std",
            "check": checks.positive,
        },
    )
    threads: int = field(
        default=1,
        metadata={
            "help": "CPU threads per training process (fixed for determinism)",
            "check": checks.at_least(1),
        },
    )
    eval_batch_size: int = field(
        default=EVAL_BATCH_SIZE, metadata={"help": "evaluation batch size", "check": checks.at_least(1)}
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{f.name}: must be a finite number, got {value!r}")
            problem = check(value) if check else None
            if problem:
                raise SettingsError(f"{f.name}: {problem}, got {value!r}")
        if self.min_clients > self.clients:
            raise SettingsError(f"min_clients: must be ≤ clients ({self.clients}), got {self.min_clients}")
        late = [o.name for o in STRATEGIES[self.strategy].options if o.name not in self.__dataclass_fields__]
        if late:
            raise TypeError(
                f"strategy {self.strategy}: option(s) {', '.join(late)} registered after "
                "argofl.steps.settings was imported: declare strategies in steps/strategies.py"
            )
        problem = STRATEGIES[self.strategy].check(dataclasses.asdict(self))
        if problem:
            raise SettingsError(problem)
        attackers = self.attackers()
        if any(int(c) >= self.clients for c in attackers):
            raise SettingsError(
                f"attack_clients: expected indices 0..{self.clients - 1}, got {self.attack_clients!r}"
            )
        if (self.attack == "none") != (not attackers):
            raise SettingsError(
                f"attack_clients: attack {self.attack!r} needs "
                f"{'no' if self.attack == 'none' else 'some'} attack_clients, got {self.attack_clients!r}"
            )

    def option(self, option: Option[_V]) -> _V:
        """The value of a strategy's option, e.g. ``settings.option(DP_CLIP)`` (a float)."""
        value: _V = getattr(self, option.name)
        return value

    def server_options(self) -> dict[str, Any]:
        """The strategy's options, as :func:`steps.strategies.get_strategy` takes them."""
        return {option.name: getattr(self, option.name) for option in STRATEGIES[self.strategy].options}

    def changed(self, names: Collection[str]) -> dict[str, Any]:
        """The settings among ``names`` set away from their defaults, by name (sorted), with their values."""
        return {
            f.name: getattr(self, f.name)
            for f in sorted(dataclasses.fields(self), key=lambda f: f.name)
            if f.name in names and f.default is not dataclasses.MISSING and getattr(self, f.name) != f.default
        }

    def unused_option(self) -> str | None:
        """Why an option of other strategies is set away from its default (``prox_mu: 0.1`` with strategy
        fedavg, which ignores it), or ``alpha`` is (:meth:`unused_alpha`); None when neither is."""
        own = {option.name for option in STRATEGIES[self.strategy].options}
        for name, value in self.changed(strategy_options().keys() - own).items():
            owners = _listed([s for s, info in STRATEGIES.items() if name in {o.name for o in info.options}])
            return (
                f"{name}: {value!r} is an option of strategy {owners}; strategy {self.strategy} does not "
                f"use it (remove it or set strategy: {owners})"
            )
        return self.unused_alpha()

    def unused_alpha(self) -> str | None:
        """Why ``alpha``, set away from its default, would do nothing (``-p alpha=0.1`` with partition iid
        trained on IID clients); None when partition dirichlet reads it or it is the default."""
        if self.partition == "dirichlet" or not self.changed({"alpha"}):
            return None
        return (
            f"alpha: {self.alpha!r} is the concentration of partition dirichlet; partition {self.partition} "
            "does not use it (remove it or set partition: dirichlet)"
        )

    def attackers(self) -> list[str]:
        """TEST FEATURE: the malicious clients (``attack_clients`` as client ids)."""
        return [str(int(c)) for c in self.attack_clients.split(",")] if self.attack_clients else []

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, where: str = "settings", strings: bool = False
    ) -> Settings:
        """Build settings from ``values`` (YAML keys, or Argo parameter names when ``strings``).

        With ``strings`` every value is a string (as Argo passes parameters) and is parsed by type.
        """
        return dataclass_from_mapping(
            cls,
            values,
            where=where,
            error=SettingsError,
            unknown="unknown setting {key!r}",
            missing="missing required setting {key!r}",
            dashes=True,
            strings=strings,
        )

    def to_params(self) -> dict[str, str]:
        """Argo parameter name → string value, in declaration order."""
        return {param_name(f.name): _format(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping with YAML key names."""
        return dataclasses.asdict(self)


FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)


def param_name(key: str) -> str:
    """YAML key → Argo parameter name (``min_clients`` → ``min-clients``)."""
    return key.replace("_", "-")


PARAM_NAMES = frozenset(param_name(f.name) for f in FIELDS)
"""Argo parameter names of all settings."""
DEPENDENT_PARAMS = frozenset(param_name(n) for n in (*strategy_options(), "alpha"))
"""Parameters of settings that one strategy or partition reads and the others ignore (``prox-mu``,
``alpha``): switching a workflow's ``strategy`` or ``partition`` leaves its own unused, which is no error."""


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
