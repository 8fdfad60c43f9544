"""A finished local run's ``summary.json`` in its run directory (``runs/workflows/<run>/``): the summary
``finalize`` wrote to the store, with the local wall time and the run's store URI. Written by ``argofl
run``/``resume`` and by the Python API's ``run_local``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from argofl.pipelines.local.refs import KeyRefs
from argofl.pipelines.parameters import parameters_of
from argofl.steps.store import open_store

__all__ = ["save_run_summary", "steps_s3_env"]


def steps_s3_env(
    workflow: Mapping[str, Any], values: Mapping[str, str], key_refs: KeyRefs | None
) -> dict[str, str]:
    """This process's environment with the S3 settings the steps had (the workflow's ``s3-endpoint``, the
    credentials their ``secretKeyRef`` found in ``--secrets``): the host reads the run's summary where the
    steps wrote it."""
    env = dict(os.environ)
    if values.get("s3-endpoint"):
        env["ARGOFL_S3_ENDPOINT"] = values["s3-endpoint"]
    for tmpl in workflow.get("spec", {}).get("templates", []):
        for item in (tmpl.get("container") or tmpl.get("script") or {}).get("env") or []:
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if item.get("name") in ("ARGOFL_S3_ACCESS_KEY", "ARGOFL_S3_SECRET_KEY") and ref:
                found = (key_refs or {}).get(("Secret", str(ref.get("name"))), {}).get(str(ref.get("key")))
                if found is not None:
                    env[item["name"]] = found
    return env


COUNTS = ("clients", "examples", "train_examples")
"""A round's counts, which its evaluation records as floats (metrics are floats): ints in the summary."""


def _counts_as_ints(row: dict[str, Any]) -> None:
    for key in COUNTS:
        value = row.get(key)
        if isinstance(value, float) and value.is_integer():
            row[key] = int(value)


def save_run_summary(
    run_dir: Path, wall: float, key_refs: KeyRefs | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write ``run_dir/summary.json`` for the succeeded run in ``run_dir``; its path and content.

    Raises :class:`~argofl.steps.store.StoreError` when the store holds no summary of the run.
    """
    from argofl.steps.runinfo import RunLayout

    workflow = json.loads((run_dir / "workflow.json").read_text())
    values = parameters_of(workflow)
    store = open_store(values["store"], steps_s3_env(workflow, values, key_refs))
    key = f"{values['experiment']}/{run_dir.name}"
    summary = json.loads(store.get_bytes(RunLayout(key).summary_key))
    for row in summary.get("rounds") or []:
        _counts_as_ints(row)
        _counts_as_ints(row.get("federated") or {})
    summary["local_wall_time_s"] = round(wall, 3)
    summary["store_uri"] = store.key_uri(key)
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path, summary
