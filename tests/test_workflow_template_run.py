"""The compiled WorkflowTemplate (what `argo submit --from workflowtemplate/X` runs) executes locally
with submit-time parameters and trains a round."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from argofl.pipelines.local.cli import local
from argofl.steps.checkpoint import load_checkpoint
from argofl.steps.runinfo import RunLayout
from argofl.steps.store import FileStore

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run_template(tmp_path: Path, template: str, **given: str) -> str:
    """Run ``argo/templates/<template>.yaml`` with the local executor and small data; the run's name."""
    params = {
        "data-limit": "600",
        "clients": "2",
        "min-clients": "2",
        "store": (tmp_path / "store").as_uri(),
        "mlflow-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        **given,
    }
    args = ["run", str(ROOT / "argo" / "templates" / f"{template}.yaml"), "--json"]
    args += ["--runs-dir", str(tmp_path / "runs")]
    for name, value in params.items():
        args += ["-p", f"{name}={value}"]
    result = CliRunner().invoke(local, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["phase"] == "Succeeded"
    return next(p for p in (tmp_path / "runs").iterdir() if (p / "status.json").is_file()).name


def test_workflow_template_runs_with_parameters(tmp_path, fmnist_dir):
    store = tmp_path / "store"
    run_name = _run_template(tmp_path, "fedavg-fmnist-torch", rounds="1")
    assert run_name.startswith("fedavg-fmnist-torch-")
    final = load_checkpoint(FileStore(store), RunLayout(f"fedavg-fmnist-torch/{run_name}").global_key(1))
    assert final.manifest.examples == 600
    assert final.manifest.metrics["clients"] == 2


def test_fedavgm_template_keeps_server_state_across_round_pods(tmp_path, fmnist_dir):
    """The strategy and its options travel as workflow parameters; each round's aggregate pod reads the
    previous round's server state from the store and writes its own."""
    store = tmp_path / "store"
    run_name = _run_template(
        tmp_path, "fedavgm-fmnist-torch-noniid", rounds="2", **{"server-momentum": "0.25"}
    )
    layout = RunLayout(f"fedavgm-fmnist-torch-noniid/{run_name}")
    files = FileStore(store)
    record = json.loads(files.get_bytes(layout.record_key))
    assert record["settings"]["strategy"] == "fedavgm"
    assert record["settings"]["server_momentum"] == 0.25
    m1, m2 = (load_checkpoint(files, layout.server_state_key(r)).arrays for r in (1, 2))
    w0, w1, w2 = (load_checkpoint(files, layout.global_key(r)).arrays for r in (0, 1, 2))
    updates = [load_checkpoint(files, layout.update_key(2, c)) for c in ("0", "1")]
    total = sum(u.manifest.examples for u in updates)
    for name in w0:
        mean2 = sum(u.arrays[name].astype(np.float64) * u.manifest.examples for u in updates) / total
        # round 1: m = Δ1 = w1 − w0 (η = 1); round 2 used it: m2 = 0.25·m1 + (mean of round 2 − w1)
        np.testing.assert_allclose(m1[f"m/{name}"], w1[name] - w0[name], atol=1e-5)
        np.testing.assert_allclose(m2[f"m/{name}"], 0.25 * m1[f"m/{name}"] + (mean2 - w1[name]), atol=1e-5)
        np.testing.assert_allclose(w2[name], w1[name] + m2[f"m/{name}"], atol=1e-5)
