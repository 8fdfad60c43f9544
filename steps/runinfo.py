"""Where a run's objects live in the store, and the run record (``run.json``) that ``init`` freezes."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from argofl.steps.client_data import DataOptions
from argofl.steps.errors import BadInputError
from argofl.steps.settings import Settings
from argofl.steps.store import ObjectNotFound, Store, join_key, open_store

__all__ = [
    "RunError",
    "RunLayout",
    "RunRecord",
    "load_record",
    "load_secret",
    "start_problem",
    "store_from_env",
    "write_json",
]

STORE_ENV = "ARGOFL_STORE"


class RunError(BadInputError, RuntimeError):
    """The run's state in the store is missing or inconsistent."""


def store_from_env() -> Store:
    """The store named by ``$ARGOFL_STORE`` (``file://…`` or ``s3://bucket[/prefix]``)."""
    uri = os.environ.get(STORE_ENV, "")
    if not uri:
        raise RunError(
            f"{STORE_ENV} is not set: steps need the store URI, e.g. s3://argofl or file:///data/runs"
        )
    return open_store(uri)


RUN_KEY_FORM = "<experiment>/<run> (two names, e.g. fedavg/run-1)"


def _is_run_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 2 and not any(p in ("", ".", "..") or p != p.strip() for p in parts)


def start_problem(start_round: int, resume_from: str, rounds: int) -> str | None:
    """Why a run of ``rounds`` cannot start at ``start_round`` continuing run ``resume_from`` (None when
    it can): the round is one of 1..rounds, and a later one than 1 needs the run key to continue."""
    if not 1 <= start_round <= rounds:
        return f"start-round must be in 1..{rounds} (rounds), got {start_round}"
    if start_round > 1 and not resume_from:
        return f"start-round {start_round} needs resume-from: the <experiment>/<run> to continue"
    if start_round > 1 and not _is_run_key(resume_from):
        return f"resume-from: expected {RUN_KEY_FORM}, got {resume_from!r}"
    return None


@dataclass(frozen=True)
class RunLayout:
    """Keys of one run: ``<experiment>/<run>/round-NNNN/{global,updates/client-N,plan.json,eval.json}``
    (and ``server-state`` for strategies with a server optimizer)."""

    run_key: str

    def __post_init__(self) -> None:
        if not _is_run_key(self.run_key):
            raise RunError(f"run key {self.run_key!r}: expected {RUN_KEY_FORM}; nothing was read or written")

    def round_prefix(self, round: int) -> str:
        return join_key(self.run_key, f"round-{round:04d}")

    def global_key(self, round: int) -> str:
        return join_key(self.round_prefix(round), "global")

    def update_key(self, round: int, client: str) -> str:
        return join_key(self.round_prefix(round), "updates", f"client-{client}")

    def server_state_key(self, round: int) -> str:
        """The server optimizer's state after ``round`` (fedavgm, fedadam)."""
        return join_key(self.round_prefix(round), "server-state")

    def plan_key(self, round: int) -> str:
        return join_key(self.round_prefix(round), "plan.json")

    def eval_key(self, round: int) -> str:
        return join_key(self.round_prefix(round), "eval.json")

    def client_eval_key(self, round: int, client: str) -> str:
        """A client's evaluation of the global model that entered ``round`` (federated evaluation)."""
        return join_key(self.round_prefix(round), "client-eval", f"client-{client}.json")

    @property
    def secret_key(self) -> str:
        """The run's noise secret (dp-fedavg): read by steps, never logged, copied on resubmission."""
        return join_key(self.run_key, "noise-secret")

    @property
    def record_key(self) -> str:
        return join_key(self.run_key, "run.json")

    @property
    def summary_key(self) -> str:
        return join_key(self.run_key, "summary.json")


@dataclass(frozen=True)
class RunRecord:
    """What ``init`` froze: settings, MLflow run id, workflow identity, start time, data options."""

    settings: Settings
    mlflow_run_id: str
    workflow_name: str
    workflow_uid: str
    created_at: float
    data: DataOptions = field(default_factory=DataOptions)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "settings": self.settings.to_dict(),
                "mlflow_run_id": self.mlflow_run_id,
                "workflow_name": self.workflow_name,
                "workflow_uid": self.workflow_uid,
                "created_at": self.created_at,
                "data": self.data.to_dict(),
            },
            indent=2,
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> RunRecord:
        try:
            doc = json.loads(data)
            return cls(
                settings=Settings.from_mapping(doc["settings"], where=where),
                mlflow_run_id=str(doc["mlflow_run_id"]),
                workflow_name=str(doc["workflow_name"]),
                workflow_uid=str(doc["workflow_uid"]),
                created_at=float(doc["created_at"]),
                data=DataOptions.from_mapping(doc.get("data") or {}, where=where),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RunError(f"run record {where} is unreadable: {exc}") from None


def load_record(store: Store, layout: RunLayout) -> RunRecord:
    """The run record; a clear error when ``init`` has not run."""
    where = store.key_uri(layout.record_key)
    try:
        data = store.get_bytes(layout.record_key)
    except ObjectNotFound:
        raise RunError(f"no run record at {where}: the init step has not completed for this run") from None
    return RunRecord.from_json(data, where=where)


def load_secret(store: Store, layout: RunLayout) -> bytes:
    """The run's noise secret that init wrote; RunError when there is none."""
    try:
        return store.get_bytes(layout.secret_key)
    except ObjectNotFound:
        raise RunError(
            f"no noise secret at {store.key_uri(layout.secret_key)}: the init step has not written it"
        ) from None


def write_json(store: Store, key: str, doc: Any) -> str:
    """Atomically write ``doc`` as JSON at ``key``; return its URI."""
    return store.put_bytes(key, json.dumps(doc, indent=2, sort_keys=True).encode())


def now() -> float:
    """Wall-clock seconds (a function so tests can reason about it)."""
    return time.time()


def open_run(run_key: str) -> tuple[Store, RunLayout, RunRecord]:
    """Store, layout and record of the run at ``run_key`` (``<experiment>/<run>``)."""
    store = store_from_env()
    layout = RunLayout(run_key)
    return store, layout, load_record(store, layout)
