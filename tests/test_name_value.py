"""One NAME=VALUE parser: every command refuses a malformed item with the same one-line message."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from argofl.pipelines.cli import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
WORKFLOW = str(ROOT / "argo" / "fedavg-fmnist-torch.yaml")


@pytest.mark.parametrize(
    "args",
    [
        ["run", CONFIG, "-p", "rounds"],
        ["submit", CONFIG, "--host", "http://127.0.0.1:9", "-p", "rounds"],
        ["local", "run", WORKFLOW, "-p", "rounds"],
        ["step", "init", "--run-key", "x/y", "--workflow-name", "w", "--param", "rounds"],
    ],
    ids=["run", "submit", "local run", "step init"],
)
def test_a_malformed_item_is_the_same_usage_error_everywhere(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "expected NAME=VALUE, got 'rounds'" in result.output


def test_the_same_name_twice_with_different_values_is_refused() -> None:
    result = CliRunner().invoke(cli, ["local", "run", WORKFLOW, "-p", "rounds=2", "-p", "rounds=3"])
    assert result.exit_code == 2
    assert "rounds is given twice, as '2' and '3'" in result.output


def test_an_output_needs_a_path() -> None:
    result = CliRunner().invoke(
        cli, ["step", "evaluate", "--run-key", "x/y", "--round", "1", "--output", "loss="]
    )
    assert result.exit_code == 2
    assert "expected NAME=PATH, got 'loss='" in result.output
