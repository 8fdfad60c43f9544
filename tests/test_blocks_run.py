"""``cluster.rounds_per_workflow`` run locally: the parent creates one child Workflow per block of rounds and
the experiment's results are byte for byte the single workflow's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from argofl.pipelines.cli import cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TINY = ["rounds=3", "clients=4", "min-clients=2", "data-limit=600", "experiment=blocks-test"]


def _run(tmp_path: Path, config: str, *extra: str) -> Path:
    runs = tmp_path / config
    args = ["run", str(ROOT / "configs" / f"{config}.yaml"), "--runs-dir", str(runs)]
    for param in [*TINY, *extra]:
        args += ["-p", param]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return runs


def test_blocks_of_rounds_give_the_single_workflows_checkpoints(tmp_path: Path, fmnist_dir: Path) -> None:
    data = f"data-dir={fmnist_dir}"
    single = _run(tmp_path, "fedavg-fmnist-torch", data)
    blocks = _run(tmp_path, "fedavg-fmnist-torch-blocks", data, "rounds-per-workflow=2")

    def globals_of(runs: Path) -> dict[str, bytes]:
        found = sorted((runs / "store").rglob("round-*/global.safetensors"))
        return {p.parent.name: p.read_bytes() for p in found}

    expected = globals_of(single)
    assert sorted(expected) == ["round-0000", "round-0001", "round-0002", "round-0003"]
    assert globals_of(blocks) == expected

    (parent_dir,) = [p for p in (blocks / "workflows").iterdir() if (p / "status.json").is_file()]
    parent = json.loads((parent_dir / "status.json").read_text())
    assert parent["phase"] == "Succeeded"
    children = sorted((parent_dir / "workflows").iterdir(), key=lambda p: p.name)
    labels = [json.loads((c / "workflow.json").read_text())["metadata"]["labels"] for c in children]
    assert sorted(label["argofl.io/rounds"] for label in labels) == ["1-2", "3-3"]
    assert {label["argofl.io/parent"] for label in labels} == {parent_dir.name}
    rounds = set()
    for child in children:
        status = json.loads((child / "status.json").read_text())
        assert status["phase"] == "Succeeded"
        rounds |= {n["displayName"] for n in status["nodes"].values() if n.get("templateName") == "round"}
    # the Argo UI names of the single workflow's round nodes
    assert rounds == {"round(0:round 1)", "round(1:round 2)", "round(0:round 3)"}
    # one store layout and one MLflow run: the children use the parent's run key
    run_dirs = {p.parent.parent.name for p in (blocks / "store").rglob("round-*/global.safetensors")}
    assert run_dirs == {parent_dir.name}
    assert "mlflow-run-url" in {p["name"] for p in parent["outputs"]["parameters"]}

    # node status per Workflow object, projected to 1,000 one-client pods x 100 rounds in the config's blocks
    from argofl.pipelines.node_status import (
        ARGO_MAX_WORKFLOW_SIZE,
        measure,
        per_round,
        project,
        project_blocks,
        run_statuses,
    )

    status, measured = run_statuses(parent_dir)
    assert len(measured) == 2
    from argofl.pipelines.config import load_config

    size = load_config(ROOT / "configs" / "fedavg-fmnist-torch-blocks.yaml").cluster.rounds_per_workflow
    blocks_projection = project_blocks(
        status, measured, pods=1000, rounds_count=100, rounds_per_workflow=size
    )
    (single_dir,) = [p for p in (single / "workflows").iterdir() if (p / "status.json").is_file()]
    single_status = json.loads((single_dir / "status.json").read_text())
    one = project(per_round(single_status), measure(single_status["nodes"]), pods=1000, rounds_count=100)
    assert one.compressed_bytes > ARGO_MAX_WORKFLOW_SIZE
    assert blocks_projection.largest.compressed_bytes < ARGO_MAX_WORKFLOW_SIZE / 2
    assert blocks_projection.parent.compressed_bytes < blocks_projection.child.compressed_bytes
