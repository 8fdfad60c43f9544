"""The compiled WorkflowTemplate (what `argo submit --from workflowtemplate/X` runs) executes locally
with submit-time parameters and trains a round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.local.cli import local
from steps.checkpoint import load_checkpoint
from steps.runinfo import RunLayout
from steps.store import FileStore

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_workflow_template_runs_with_parameters(tmp_path, fmnist_dir):
    store = tmp_path / "store"
    params = {
        "data-limit": "600",
        "clients": "2",
        "min-clients": "2",
        "rounds": "1",
        "store": store.as_uri(),
        "mlflow-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    args = [
        "run",
        str(ROOT / "argo" / "templates" / "fedavg-fmnist-torch.yaml"),
        "--json",
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    for name, value in params.items():
        args += ["-p", f"{name}={value}"]
    result = CliRunner().invoke(local, args)
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["phase"] == "Succeeded"
    run_name = next(iter(p for p in (tmp_path / "runs").iterdir() if p.is_dir())).name
    assert run_name.startswith("fedavg-fmnist-torch-")
    final = load_checkpoint(FileStore(store), RunLayout(f"fedavg-fmnist-torch/{run_name}").global_key(1))
    assert final.manifest.examples == 600
    assert final.manifest.metrics["clients"] == 2
