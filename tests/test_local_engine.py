"""The local executor's parts: phases as Argo's strings, the template-kind dispatch, children's futures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from argofl.pipelines.local import run_workflow
from argofl.pipelines.local.children import Children
from argofl.pipelines.local.engine import template_kind
from argofl.pipelines.local.graph import Call
from argofl.pipelines.local.model import Node, Phase

ARGO_PHASES = {"Pending", "Running", "Succeeded", "Failed", "Error", "Skipped", "Omitted"}


def _wf(templates: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "test-"},
        "spec": {"entrypoint": "main", "templates": templates},
    }


_ECHO = {"name": "echo", "container": {"command": ["sh", "-c", "echo hi"]}}


def test_phases_are_argo_strings_in_status_json_and_node_callbacks(tmp_path: Path) -> None:
    """status.json and ``on_node`` snapshots carry plain strings, whatever the enum behind them."""
    assert {p.value for p in Phase} == ARGO_PHASES
    dag = {
        "name": "main",
        "dag": {
            "tasks": [
                {"name": "a", "template": "echo"},
                {"name": "b", "template": "echo", "when": "1 == 2"},
                {"name": "c", "template": "echo", "depends": "a.Failed"},
            ]
        },
    }
    snapshots: list[dict[str, Any]] = []
    result = run_workflow(_wf([dag, _ECHO]), runs_dir=tmp_path / "runs", on_node=snapshots.append)
    on_disk = json.loads((result.run_dir / "status.json").read_text())
    assert on_disk["phase"] == "Succeeded"
    phases = {n["displayName"]: n["phase"] for n in on_disk["nodes"].values()}
    assert phases == {result.name: "Succeeded", "a": "Succeeded", "b": "Skipped", "c": "Omitted"}
    assert snapshots
    assert all(type(s["phase"]) is str for s in snapshots)
    assert all(type(n["phase"]) is str for n in result.status["nodes"].values())


@pytest.mark.parametrize(
    ("tmpl", "kind"),
    [
        ({"name": "t", "container": {}}, "container"),
        ({"name": "t", "script": {}}, "script"),
        ({"name": "t", "steps": []}, "steps"),
        ({"name": "t", "dag": {}}, "dag"),
        ({"name": "t", "resource": {}}, "resource"),
        ({"name": "t", "suspend": {}}, "suspend"),
    ],
)
def test_template_kind_names_the_templates_type(tmpl: dict[str, Any], kind: str) -> None:
    assert template_kind(tmpl) == kind


@pytest.mark.parametrize("shape", ["steps", "dag"])
def test_a_child_that_raises_becomes_an_error_node_and_the_run_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    """A child's thread reports through its future; an exception there ends that child in Error with
    ``internal error: …`` instead of hanging or killing the run, and its sibling still runs."""
    run_child = Children._run_child

    def flaky(self: Children, step: dict[str, Any], call: Call, scope: Any, kind: str) -> Node:
        if call.name.endswith(".bad"):
            raise RuntimeError("boom")
        return run_child(self, step, call, scope, kind)

    monkeypatch.setattr(Children, "_run_child", flaky)
    children = [{"name": "good", "template": "echo"}, {"name": "bad", "template": "echo"}]
    main = (
        {"name": "main", "steps": [children]}
        if shape == "steps"
        else {"name": "main", "dag": {"tasks": children}}
    )
    result = run_workflow(_wf([main, _ECHO]), runs_dir=tmp_path / "runs")
    nodes = {n["displayName"]: n for n in result.status["nodes"].values()}
    assert nodes["bad"]["phase"] == "Error"
    assert nodes["bad"]["message"] == "internal error: boom"
    assert nodes["good"]["phase"] == "Succeeded"
    assert result.phase in ("Failed", "Error")


def test_a_dag_waiting_on_a_fan_out_sleeps_while_its_slow_items_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fan-out whose first item is done and second still running must not make the DAG loop spin.

    Before the fix the loop waited on every future of the running tasks, including the finished one,
    so ``wait`` returned at once, thousands of times a second, taking a core from the steps.
    """
    from argofl.pipelines.local import dag as dag_module

    calls: list[int] = []
    real_wait = dag_module.wait

    def counting_wait(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(dag_module, "wait", counting_wait)
    sleep = {
        "name": "sleep",
        "inputs": {"parameters": [{"name": "s"}]},
        "container": {"command": ["sh", "-c", "sleep {{inputs.parameters.s}}"]},
    }
    dag = {
        "name": "main",
        "dag": {
            "tasks": [
                {
                    "name": "fan",
                    "template": "sleep",
                    "arguments": {"parameters": [{"name": "s", "value": "{{item}}"}]},
                    "withItems": ["0", "1.5"],
                }
            ]
        },
    }
    result = run_workflow(_wf([dag, sleep]), runs_dir=tmp_path / "runs")
    assert result.status["phase"] == "Succeeded"
    # one wait per finished item (and a few wake-ups), not a spin while the slow item runs
    assert len(calls) <= 5, f"the DAG loop called wait() {len(calls)} times for a fan-out of 2 items"


def test_generated_names_do_not_follow_a_seeded_global_random() -> None:
    """A seeded model (Keras' ``set_random_seed`` seeds ``random``) must not make two runs of one
    process take the same name (and so the same Docker network, run directory, …)."""
    import random

    from argofl.pipelines.local.model import generate_name

    random.seed(0)
    first = generate_name("run-")
    random.seed(0)
    assert generate_name("run-") != first
