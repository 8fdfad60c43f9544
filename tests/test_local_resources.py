"""The local executor's resource templates: a Workflow that creates child Workflows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from argofl.pipelines.local import UnsupportedWorkflow, WorkflowInputError, run_workflow


def _script(source: str) -> dict[str, Any]:
    return {"command": ["python"], "source": source}


def _child(spec: dict[str, Any], **metadata: Any) -> str:
    manifest = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "{{workflow.name}}-child-", **metadata},
        "spec": spec,
    }
    return yaml.safe_dump(manifest)


def _parent(child_manifest: str, **resource: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "parent-"},
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "value", "value": "7"}]},
            "templates": [
                {
                    "name": "main",
                    "parallelism": 1,
                    "failFast": True,
                    "steps": [
                        [{"name": "block", "template": "create", "withSequence": {"start": "1", "end": "2"}}]
                    ],
                },
                {
                    "name": "create",
                    "resource": {
                        "action": "create",
                        "setOwnerReference": True,
                        "successCondition": "status.phase == Succeeded",
                        "failureCondition": "status.phase in (Failed, Error)",
                        "manifest": child_manifest,
                        **resource,
                    },
                },
            ],
        },
    }


def _children(result: Any) -> list[Path]:
    return sorted(p.parent for p in (result.run_dir / "workflows").glob("*/status.json"))


def test_created_workflow_runs_nested_with_the_parent_values_and_conditions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    child = _child(
        {
            "entrypoint": "work",
            "templates": [
                {
                    "name": "work",
                    "script": _script(
                        "import pathlib\n"
                        f"pathlib.Path({str(out)!r}, '{{{{workflow.name}}}}')"
                        ".write_text('{{workflow.parameters.value}}')\n"
                    ),
                }
            ],
        },
        labels={"argofl.io/parent": "{{workflow.name}}"},
    )
    result = run_workflow(_parent(child), runs_dir=tmp_path / "runs")
    assert result.phase == "Succeeded", result.status
    children = _children(result)
    assert len(children) == 2
    for run_dir in children:
        status = json.loads((run_dir / "status.json").read_text())
        assert status["phase"] == "Succeeded"
        created = json.loads((run_dir / "workflow.json").read_text())
        assert created["metadata"]["labels"] == {"argofl.io/parent": result.name}
        assert created["metadata"]["ownerReferences"][0]["name"] == result.name
        assert created["metadata"]["ownerReferences"][0]["uid"] == result.uid
        assert run_dir.name.startswith(f"{result.name}-child-")
    # the parent's {{workflow.name}} and parameters were substituted into the manifest, as Argo does
    assert {p.name: p.read_text() for p in out.iterdir()} == {result.name: "7"}
    creates = [n for n in result.status["nodes"].values() if n.get("templateName") == "create"]
    assert [n["phase"] for n in creates] == ["Succeeded", "Succeeded"]
    assert {n["message"] for n in creates} == {f"workflow {d.name}" for d in children}


def test_a_failed_child_fails_the_node_and_the_parent(tmp_path: Path) -> None:
    child = _child(
        {"entrypoint": "work", "templates": [{"name": "work", "script": _script("raise SystemExit(3)")}]}
    )
    result = run_workflow(_parent(child), runs_dir=tmp_path / "runs")
    assert result.phase == "Failed"
    create = next(n for n in result.status["nodes"].values() if n.get("templateName") == "create")
    assert create["phase"] == "Failed"
    assert "Failed" in create["message"]
    assert "failureCondition 'status.phase in (Failed, Error)' holds" in create["message"]
    assert len(_children(result)) == 1  # steps fail fast: the second block never starts


def test_workflow_template_ref_resolves_against_the_given_templates(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    template = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "blocks"},
        "spec": {
            "entrypoint": "work",
            "arguments": {"parameters": [{"name": "x", "value": "default"}, {"name": "y", "value": "kept"}]},
            "templates": [
                {
                    "name": "work",
                    "script": _script(
                        f"open({str(out)!r}, 'a')"
                        ".write('{{workflow.parameters.x}} {{workflow.parameters.y}}\\n')"
                    ),
                }
            ],
        },
    }
    child = _child(
        {
            "workflowTemplateRef": {"name": "blocks"},
            "arguments": {"parameters": [{"name": "x", "value": "{{workflow.parameters.value}}"}]},
        }
    )
    parent = _parent(child)
    parent["spec"]["templates"][0]["steps"][0][0].pop("withSequence")
    result = run_workflow(parent, runs_dir=tmp_path / "runs", workflow_templates={"blocks": template})
    assert result.phase == "Succeeded", result.status
    assert out.read_text() == "7 kept\n"
    missing = run_workflow(parent, runs_dir=tmp_path / "runs2")
    assert missing.phase != "Succeeded"
    create = next(n for n in missing.status["nodes"].values() if n.get("templateName") == "create")
    assert create["phase"] == "Error"
    assert "workflowTemplateRef 'blocks' is not one of the WorkflowTemplates given" in create["message"]


def test_success_condition_that_does_not_hold_fails_the_node(tmp_path: Path) -> None:
    child = _child({"entrypoint": "work", "templates": [{"name": "work", "script": _script("pass")}]})
    parent = _parent(
        child, successCondition="status.phase == Failed", failureCondition="status.phase == Error"
    )
    result = run_workflow(parent, runs_dir=tmp_path / "runs")
    assert result.phase == "Failed"
    create = next(n for n in result.status["nodes"].values() if n.get("templateName") == "create")
    assert "successCondition 'status.phase == Failed' does not hold" in create["message"]


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        (
            {"action": "apply"},
            r"^spec\.templates\[1\]\.resource\.action: resource action 'apply' is not supported",
        ),
        (
            {"action": "delete"},
            r"resource action 'delete' is not supported by the local executor; only create",
        ),
        (
            {"successCondition": "status.succeeded > 0"},
            r"^spec\.templates\[1\]\.resource\.successCondition: "
            r"condition 'status.succeeded > 0' is not supported",
        ),
        (
            {"manifest": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"},
            r"creating a v1/ConfigMap is not supported by the local executor; "
            r"only argoproj.io/v1alpha1 Workflow",
        ),
        ({"mergeStrategy": "json"}, r"resource\.mergeStrategy: mergeStrategy is not supported"),
    ],
)
def test_other_resources_are_refused_with_one_line(
    tmp_path: Path, resource: dict[str, Any], message: str
) -> None:
    child = _child({"entrypoint": "work", "templates": [{"name": "work", "script": _script("pass")}]})
    with pytest.raises(UnsupportedWorkflow, match=message) as info:
        run_workflow(_parent(child, **resource), runs_dir=tmp_path / "runs")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_a_manifest_that_is_not_yaml_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(WorkflowInputError, match=r"resource\.manifest: not YAML"):
        run_workflow(_parent("kind: [unclosed"), runs_dir=tmp_path / "runs")


def test_an_interrupt_of_the_parent_stops_the_child_workflow(tmp_path: Path) -> None:
    import signal
    import subprocess

    from tests.processes import ARGOFL, argofl_env, run_processes, wait_for

    child = _child(
        {"entrypoint": "nap", "templates": [{"name": "nap", "container": {"command": ["sleep", "600"]}}]}
    )
    parent = _parent(child)
    parent["spec"]["templates"][0]["steps"][0][0].pop("withSequence")
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump(parent))
    proc = subprocess.Popen(
        [*ARGOFL, "local", "run", "parent.yaml"],
        cwd=tmp_path,
        env=argofl_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    runs = tmp_path / "runs" / "local"
    wait_for(lambda: any(runs.glob("*/workflows/*/status.json")) or proc.poll() is not None, "the child")
    assert proc.poll() is None, proc.communicate()[0].decode()
    child_dir = next(runs.glob("*/workflows/*/status.json")).parent
    wait_for(lambda: run_processes(child_dir.name), "the child's step process")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 128 + signal.SIGINT, output
    assert not run_processes(child_dir.name)
    status = json.loads((child_dir / "status.json").read_text())
    assert status["phase"] == "Failed"
    assert status["message"] == "stopped: parent workflow interrupted"
    parent_status = json.loads((child_dir.parent.parent / "status.json").read_text())
    assert parent_status["phase"] == "Failed"
    create = next(n for n in parent_status["nodes"].values() if n.get("templateName") == "create")
    assert create["phase"] == "Failed"
