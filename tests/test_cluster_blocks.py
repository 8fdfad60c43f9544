"""`argofl status/watch/resubmit` of a workflow whose blocks of rounds are child Workflows
(``cluster.rounds_per_workflow``): found by label through the Argo server API (a fake server here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import load_config
from tests.fake_argo import FakeArgo, argo  # noqa: F401 (fixture)
from tests.test_cluster_submit import RUN_URL, StatusBuilder, env, invoke, params  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fedavg-fmnist-torch-blocks.yaml"
EXPERIMENT = "fedavg-fmnist-torch-blocks"
PARENT = f"{EXPERIMENT}-abcde"


def parent_workflow(phase: str, total: int) -> dict[str, Any]:
    workflow = manifest_for(load_config(CONFIG))
    for p in workflow["spec"]["arguments"]["parameters"]:
        if p["name"] == "rounds":
            p["value"] = str(total)
        if p["name"] == "rounds-per-workflow":
            p["value"] = "2"
    workflow["metadata"].update(
        name=PARENT, namespace="argofl", uid="0b5c", creationTimestamp="2026-11-23T10:00:00Z"
    )
    builder = StatusBuilder(PARENT)
    builder.step(
        builder.nodes[PARENT]["children"][0], PARENT, "init", "Succeeded", {}, {"mlflow-run-id": "abc"}
    )
    workflow["status"] = builder.status(phase, "child failed" if phase == "Failed" else "")
    workflow["status"]["outputs"] = {"parameters": [{"name": "mlflow-run-url", "value": RUN_URL}]}
    return workflow


def child_workflow(first: int, outcomes: list[str], phase: str, created: str) -> dict[str, Any]:
    name = f"{PARENT}-r{first}-xyz{first}"
    builder = StatusBuilder(name)
    builder.clock = 100 * first  # children run one after another
    for number, outcome in enumerate(outcomes, start=first):
        builder.round(number, clients=2, outcome=outcome)
    last = first + len(outcomes) - 1
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": name,
            "namespace": "argofl",
            "creationTimestamp": created,
            "labels": {"argofl.io/parent": PARENT, "argofl.io/rounds": f"{first}-{last}"},
        },
        "spec": {"workflowTemplateRef": {"name": f"{EXPERIMENT}-rounds"}},
        "status": builder.status(phase),
    }


def test_status_follows_the_children_found_by_label(argo: FakeArgo, env: dict[str, str]) -> None:  # noqa: F811
    argo.workflows[PARENT] = [parent_workflow("Running", total=5)]
    second = child_workflow(3, ["running"], "Running", "2026-11-23T10:05:00Z")
    first = child_workflow(1, ["done", "done"], "Succeeded", "2026-11-23T10:01:00Z")
    argo.workflows[second["metadata"]["name"]] = [second]
    argo.workflows[first["metadata"]["name"]] = [first]
    argo.workflows["someone-else"] = [child_workflow(9, ["done"], "Succeeded", "2026-11-23T09:00:00Z")]
    argo.workflows["someone-else"][0]["metadata"]["labels"]["argofl.io/parent"] = "another-parent"
    result = invoke(["status", PARENT], env)
    assert result.exit_code == 0, result.output
    listed = [r for r in argo.requests if r.path.split("?")[0] == "/api/v1/workflows/argofl"]
    assert len(listed) == 1
    assert f"listOptions.labelSelector=argofl.io%2Fparent%3D{PARENT}" in listed[0].path
    out = result.output.splitlines()
    assert "Rounds:     2 evaluated of rounds 1..5" in out
    children = [line for line in out if line.startswith("Child:")]
    assert [line.split()[1:3] for line in children] == [
        [first["metadata"]["name"], "Succeeded"],
        [second["metadata"]["name"], "Running"],
    ]
    rounds = [line.strip() for line in out if line.strip().startswith("round")]
    assert len(rounds) == 3
    assert "test accuracy 0.8100" in rounds[0]
    assert "clients 1/2 trained" in rounds[2]
    assert f"MLflow:     {RUN_URL}" in out


def test_watch_prints_the_rounds_of_every_child(argo: FakeArgo, env: dict[str, str]) -> None:  # noqa: F811
    argo.workflows[PARENT] = [parent_workflow("Running", total=3), parent_workflow("Succeeded", total=3)]
    for child in (
        child_workflow(1, ["done", "done"], "Succeeded", "2026-11-23T10:01:00Z"),
        child_workflow(3, ["done"], "Succeeded", "2026-11-23T10:05:00Z"),
    ):
        argo.workflows[child["metadata"]["name"]] = [child]
    result = invoke(["watch", PARENT, "--interval", "0.05"], env)
    assert result.exit_code == 0, result.output
    evaluated = [line for line in result.output.splitlines() if "test accuracy" in line and "✔" in line]
    assert [line.split("]", 1)[1].split()[:2] for line in evaluated] == [
        ["round", "1"],
        ["round", "2"],
        ["round", "3"],
    ]
    assert f"{PARENT} Succeeded: 3 round(s) evaluated" in result.output


def test_resubmit_continues_after_the_last_round_any_child_completed(
    argo: FakeArgo,  # noqa: F811
    env: dict[str, str],  # noqa: F811
) -> None:
    parent = parent_workflow("Failed", total=6)
    argo.workflows[PARENT] = [parent]
    for child in (
        child_workflow(1, ["done", "done"], "Succeeded", "2026-11-23T10:01:00Z"),
        child_workflow(3, ["done", "failed"], "Failed", "2026-11-23T10:05:00Z"),
    ):
        argo.workflows[child["metadata"]["name"]] = [child]
    result = invoke(["resubmit", PARENT], env)
    assert result.exit_code == 0, result.output
    [post] = argo.posts()
    new = post.body["workflow"]
    got = params(new)
    # the new parent's first block starts at round 4 and continues from this run's state
    assert got["start-round"] == "4"
    assert got["resume-from"] == f"{EXPERIMENT}/{PARENT}"
    assert got["rounds-per-workflow"] == "2"
    assert {k: v for k, v in new["spec"].items() if k != "arguments"} == {
        k: v for k, v in parent["spec"].items() if k != "arguments"
    }
    assert "last completed round 3; resubmitting from round 4" in result.output


def test_submit_installs_the_blocks_template_then_the_parent(argo: FakeArgo, env: dict[str, str]) -> None:  # noqa: F811
    result = invoke(["submit", str(CONFIG), "-p", "rounds-per-workflow=5"], env)
    assert result.exit_code == 0, result.output
    posts = argo.posts()
    assert [p.path for p in posts] == ["/api/v1/workflow-templates/argofl", "/api/v1/workflows/argofl"]
    from argofl.pipelines.compile import rounds_template_for

    expected = rounds_template_for(load_config(CONFIG))
    assert expected is not None
    installed = posts[0].body["template"]
    assert installed["metadata"]["name"] == f"{EXPERIMENT}-rounds"
    assert installed["spec"] == expected["spec"]
    assert params(posts[1].body["workflow"])["rounds-per-workflow"] == "5"
    assert f"created workflow template {EXPERIMENT}-rounds in namespace argofl" in result.output
    # submitted again: the template is updated in place (with its resourceVersion), not created twice
    version = argo.templates[f"{EXPERIMENT}-rounds"]["metadata"]["resourceVersion"]
    again = invoke(["submit", str(CONFIG)], env)
    assert again.exit_code == 0, again.output
    [put] = [r for r in argo.requests if r.method == "PUT"]
    assert put.path == f"/api/v1/workflow-templates/argofl/{EXPERIMENT}-rounds"
    assert put.body["template"]["metadata"]["resourceVersion"] == version
    assert f"updated workflow template {EXPERIMENT}-rounds" in again.output
    assert len(argo.posts()) == 3  # the second submit created only the workflow


def test_a_block_size_below_one_is_refused_before_anything_runs(
    argo: FakeArgo,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from argofl.pipelines.cli import cli

    for command in (["submit"], ["run", "--runs-dir", str(tmp_path / "runs")]):
        result = CliRunner().invoke(cli, [*command, str(CONFIG), "-p", "rounds-per-workflow=0"], env=env)
        assert result.exit_code == 2, result.output
        [line] = [x for x in result.output.splitlines() if "rounds-per-workflow" in x]
        assert "expected a whole number of rounds ≥ 1 per child workflow, got '0'; nothing was run" in line
    assert argo.requests == []
    assert not (tmp_path / "runs" / "workflows").exists()
