"""Split-learning options: the ``split:`` section of a config, frozen by ``split-init`` into ``split.json``.

```yaml
kind: split
split:
  mode: vanilla        # vanilla (clients take turns) | splitfed (SplitFed v1: clients in parallel)
  cut: pool2           # last layer of the client's bottom half
  port: 8080           # server port (compile-time: it is in the readinessProbe)
  idle_timeout: 300    # server gives up after this many seconds without a request
  request_timeout: 60  # client-side timeout of one HTTP request
```
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from argofl.steps.mapping import dataclass_from_mapping
from argofl.steps.settings import Settings, SettingsError, param_name
from argofl.steps.store import join_key
from argofl.steps.strategies import strategy_options

__all__ = [
    "BUILTIN_CUTS",
    "MODES",
    "SPLIT_STRATEGY_NOTE",
    "UNUSED_SETTINGS",
    "SplitOptions",
    "bottom_key",
    "cut_problem",
    "options_key",
    "split_settings_params",
    "token_key",
    "top_key",
]

MODES = ("vanilla", "splitfed")


SPLIT_STRATEGY_NOTE = "split learning averages SplitFed bottoms with FedAvg: only strategy fedavg applies"
UNUSED_SETTINGS = frozenset(
    {
        "strategy",
        *strategy_options(),  # every strategy's options: split learning always averages with FedAvg
        "max_client_examples",
        "fraction",
        "clients_per_pod",
        "attack",
        "attack_clients",
        "attack_scale",
    }
)
"""FedAvg settings split learning has no use for: every client trains each round in a pod of its own, no
attack is simulated, bottoms are averaged with plain FedAvg. Not workflow parameters, not MLflow params
(a config refuses a value of fraction, clients_per_pod and attack it would ignore: ``split_config``)."""


def split_settings_params(settings: Settings) -> dict[str, str]:
    """The settings split learning uses (not :data:`UNUSED_SETTINGS`), as workflow parameters and MLflow
    params."""
    unused = {param_name(k) for k in UNUSED_SETTINGS}
    return {k: v for k, v in settings.to_params().items() if k not in unused}


BUILTIN_CUTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "cnn"): ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3"),
    ("torch", "mlp"): ("flatten", "fc1", "relu1", "fc2", "relu2"),
    ("tensorflow", "cnn"): ("conv1", "pool1", "conv2", "pool2", "flatten", "fc1"),
    ("tensorflow", "mlp"): ("flatten", "fc1", "fc2"),
}
"""(framework, built-in model) → the layers a split may cut after (all but the last; a test builds each
model and compares), so a bad ``split.cut`` is refused before a run starts, without importing torch or
TensorFlow."""


def cut_problem(framework: str, model: str, cut: str) -> str | None:
    """Why ``cut`` cannot split built-in ``model`` of ``framework``; None when it can, or when the model is
    a factory (``package.module:factory``: only ``split-init`` can build it to check)."""
    cuts = BUILTIN_CUTS.get((framework, model))
    if cuts is None or cut in cuts:
        return None
    return (
        f"split.cut: {cut!r} is not a layer of the {framework} {model} model that leaves a top half: "
        f"expected one of {', '.join(cuts)}"
    )


@dataclass(frozen=True)
class SplitOptions:
    """How a split-learning run splits the model and talks to its server."""

    mode: str = "vanilla"
    cut: str = "pool2"
    port: int = 8080
    idle_timeout: int = 300
    request_timeout: int = 60

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(f"split.mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.cut or not self.cut.replace("_", "").isalnum():
            raise SettingsError(f"split.cut: must be a layer name, got {self.cut!r}")
        if not 1024 <= self.port <= 65535:
            raise SettingsError(f"split.port: must be in 1024..65535, got {self.port!r}")
        for name in ("idle_timeout", "request_timeout"):
            if getattr(self, name) < 1:
                raise SettingsError(f"split.{name}: must be ≥ 1, got {getattr(self, name)!r}")

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, where: str = "split", strings: bool = False
    ) -> SplitOptions:
        """Build options from a config's ``split:`` section (Argo parameter values when ``strings``)."""
        return dataclass_from_mapping(
            cls, values, where=where, error=SettingsError, prefix="split.", dashes=True, strings=strings
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_params(self) -> dict[str, str]:
        """The options as MLflow params, named like their workflow parameters (``split-cut``, …)."""
        return {"split-" + k.replace("_", "-"): str(v) for k, v in self.to_dict().items()}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()


def options_key(run_key: str) -> str:
    return join_key(run_key, "split.json")


def token_key(run_key: str) -> str:
    """The run's shared secret (written by ``split-init``; read by the server and the clients only)."""
    return join_key(run_key, "split-token")


def top_key(run_key: str, round: int) -> str:
    """The server's half after ``round``."""
    return join_key(run_key, f"round-{round:04d}", "top")


def bottom_key(run_key: str, round: int, client: str) -> str:
    """A client's half after ``round`` (same place as FedAvg updates)."""
    return join_key(run_key, f"round-{round:04d}", "updates", f"client-{client}")
