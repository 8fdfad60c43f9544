"""A round's aggregation report: what the aggregate step has for MLflow, kept beside the round.

The aggregate step never talks to MLflow (its import alone costs seconds); it writes
``round-NNNN/aggregate-report.json`` before committing the round's global checkpoint, and the evaluate
step logs it: the round's metrics (``clients_aggregated``, ``clients_rejected``, ``train_*``, ``dp_*``
and the spread of each train metric across clients, :func:`distribution`) at step ``round``, and the
per-client table (:func:`client_table`, rejected clients with their reasons) as the artifact
``clients/round-NNNN.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from argofl.steps.runinfo import RunError, RunLayout, write_json
from argofl.steps.store import ObjectNotFound, Store, join_key

__all__ = [
    "MARKER",
    "QUANTILES",
    "RoundReport",
    "build",
    "client_table",
    "distribution",
    "load",
    "report_key",
    "save",
]

MARKER = "clients_aggregated"
"""The metric whose value at step ``round`` means the report is in MLflow (logged last)."""

QUANTILES = {"p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95}
"""The quantiles of a per-round distribution across clients, by metric-name suffix."""

Row = tuple[str, int, Mapping[str, float]]
"""An aggregated client: (client, examples, train metrics)."""


@dataclass(frozen=True)
class RoundReport:
    """MLflow's share of a round: ``metrics`` to log at step ``round`` and the client table
    ``table`` to store as the artifact ``artifact``."""

    round: int
    metrics: dict[str, float]
    table: dict[str, Any]

    @property
    def artifact(self) -> str:
        return f"clients/round-{self.round:04d}.json"


def report_key(layout: RunLayout, round: int) -> str:
    """Where the report of ``round`` lives: ``round-NNNN/aggregate-report.json``."""
    return join_key(layout.round_prefix(round), "aggregate-report.json")


def build(
    round: int, metrics: Mapping[str, float], rows: Sequence[Row], rejected: Mapping[str, str]
) -> RoundReport:
    """The report of ``round`` from the aggregated ``metrics`` (the global checkpoint's), the aggregated
    clients' ``rows`` (in aggregation order) and the ``rejected`` clients' reasons."""
    to_log = {f"train_{k}": float(v) for k, v in metrics.items() if k in ("loss", "accuracy")}
    to_log.update({MARKER: float(len(rows)), "clients_rejected": float(metrics.get("rejected", 0.0))})
    to_log.update({k: float(v) for k, v in metrics.items() if k.startswith("dp_")})
    for key in ("loss", "accuracy"):  # the spread across clients; each client's values in the table
        values = [row_metrics[key] for _, _, row_metrics in rows if key in row_metrics]
        to_log.update(distribution(f"client_train_{key}", values))
    return RoundReport(round, to_log, client_table(rows, rejected))


def save(store: Store, layout: RunLayout, report: RoundReport) -> str:
    """Write ``report`` atomically beside its round; return its URI."""
    doc = {
        "round": report.round,
        "metrics": report.metrics,
        "artifact": report.artifact,
        "table": report.table,
    }
    return write_json(store, report_key(layout, report.round), doc)


def load(store: Store, layout: RunLayout, round: int) -> RoundReport | None:
    """The report of ``round`` (None when the round has none)."""
    key = report_key(layout, round)
    try:
        doc = json.loads(store.get_bytes(key))
        return RoundReport(
            int(doc["round"]), {str(k): float(v) for k, v in doc["metrics"].items()}, dict(doc["table"])
        )
    except ObjectNotFound:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RunError(
            f"aggregate report {store.key_uri(key)} is unreadable ({exc}), expected "
            "{round, metrics, table} as the aggregate step writes it; rerun the round's aggregate"
        ) from None


def distribution(prefix: str, values: Sequence[float]) -> dict[str, float]:
    """``{prefix}_count``, ``_mean``, ``_std`` (population), ``_min``, :data:`QUANTILES` and ``_max`` of
    ``values`` (nothing for no values): one round's spread across clients as a few MLflow metrics."""
    if not values:
        return {}
    data = np.asarray(values, dtype=np.float64)
    out = {
        f"{prefix}_count": float(data.size),
        f"{prefix}_mean": float(data.mean()),
        f"{prefix}_std": float(data.std()),
        f"{prefix}_min": float(data.min()),
    }
    for suffix, q in QUANTILES.items():
        out[f"{prefix}_{suffix}"] = float(np.quantile(data, q))
    out[f"{prefix}_max"] = float(data.max())
    return out


def client_table(
    rows: Iterable[Row],
    rejected: Mapping[str, str],
    metrics: Sequence[str] = ("loss", "accuracy"),
) -> dict[str, Any]:
    """The per-client table of a round (``{"columns": [...], "data": [[...], ...]}``, by client id):
    accepted clients with their examples and train metrics, rejected ones with the reason."""
    columns = ["client", "status", "examples", *(f"train_{m}" for m in metrics), "reason"]
    data: list[list[Any]] = [
        [client, "aggregated", examples, *(values.get(m) for m in metrics), ""]
        for client, examples, values in rows
    ]
    data += [[client, "rejected", 0, *(None for _ in metrics), reason] for client, reason in rejected.items()]
    data.sort(key=lambda row: int(row[0]) if str(row[0]).isdigit() else str(row[0]))
    return {"columns": columns, "data": data}
