"""configs/ → argo/: golden manifests, Argo's JSON schema, hera round trip, workflow shape.

Regenerate the golden files with ``ARGOFL_REGEN=1 pytest tests/test_manifests.py`` (never under CI).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hera.workflows import Workflow, WorkflowTemplate

from argofl.pipelines.compile import (
    manifest_for,
    render_manifest,
    render_rounds_template,
    render_template_manifest,
)
from argofl.pipelines.config import config_from_mapping, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SCHEMA = ROOT.parent / "shared" / "argo-api" / "schema.json"


def argo_validator(kind: str) -> jsonschema.Draft202012Validator:
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} is absent")
    schema = json.loads(SCHEMA.read_text())
    root = {
        "definitions": schema["definitions"],
        "$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{kind}",
    }
    return jsonschema.Draft202012Validator(root)


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    validator = argo_validator(manifest["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_checked_in_manifest_is_what_compile_produces(config):
    cfg = load_config(config)
    target = ROOT / "argo" / f"{cfg.name}.yaml"
    expected = render_manifest(cfg, source=f"configs/{config.name}", target=f"argo/{target.name}")
    if os.environ.get("ARGOFL_REGEN") == "1" and not os.environ.get("CI"):
        target.write_text(expected)
    assert target.is_file(), f"{target} is missing: run `argofl compile {config.relative_to(ROOT)}`"
    assert target.read_text() == expected, (
        f"{target.name} is stale: run `argofl compile configs/{config.name}`"
    )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_checked_in_workflow_template_is_what_compile_produces(config):
    cfg = load_config(config)
    target = ROOT / "argo" / "templates" / f"{cfg.name}.yaml"
    expected = render_template_manifest(
        cfg, source=f"configs/{config.name}", target=f"argo/templates/{target.name}"
    )
    if os.environ.get("ARGOFL_REGEN") == "1" and not os.environ.get("CI"):
        target.write_text(expected)
    assert target.is_file(), f"{target} is missing: run `argofl compile {config.relative_to(ROOT)}`"
    assert target.read_text() == expected, f"templates/{target.name} is stale: run `argofl compile`"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_workflow_template_has_the_workflow_spec_and_validates(config):
    cfg = load_config(config)
    template = yaml.safe_load((ROOT / "argo" / "templates" / f"{cfg.name}.yaml").read_text())
    workflow = yaml.safe_load((ROOT / "argo" / f"{cfg.name}.yaml").read_text())
    assert template["kind"] == "WorkflowTemplate"
    assert template["metadata"]["name"] == cfg.name
    assert template["spec"] == workflow["spec"]
    assert schema_errors(template) == []
    assert isinstance(WorkflowTemplate.from_yaml(yaml.safe_dump(template)), WorkflowTemplate)


def test_every_manifest_in_argo_has_a_config():
    templates = {p.stem for p in (ROOT / "argo" / "templates").glob("*.yaml")}
    blocks = {f"{cfg.name}-rounds" for cfg in map(load_config, CONFIGS) if cfg.cluster.rounds_per_workflow}
    assert blocks, "no config compiles to blocks of rounds (cluster.rounds_per_workflow)"
    assert templates == {load_config(c).name for c in CONFIGS} | blocks
    names = {p.stem for p in (ROOT / "argo").glob("*.yaml")}
    assert names == {load_config(c).name for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_manifest_validates_against_argo_schema(config):
    manifest = yaml.safe_load((ROOT / "argo" / f"{load_config(config).name}.yaml").read_text())
    assert schema_errors(manifest) == []


def test_schema_check_catches_a_broken_manifest():
    manifest = manifest_for(load_config(CONFIGS[0]))
    broken = copy.deepcopy(manifest)
    broken["spec"]["templates"][0]["retryStrategy"]["limit"] = {"not": "a number"}
    assert schema_errors(broken)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_manifest_round_trips_through_hera(config):
    text = (ROOT / "argo" / f"{load_config(config).name}.yaml").read_text()
    workflow = Workflow.from_yaml(text)
    assert isinstance(workflow, Workflow)
    again = workflow.to_yaml()
    assert yaml.safe_load(again) == yaml.safe_load(text)


def templates(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in manifest["spec"]["templates"]}


def test_workflow_shape_rounds_in_order_and_round_dag():
    manifest = manifest_for(load_config(ROOT / "configs" / "fedavg-fmnist-torch.yaml"))
    spec = manifest["spec"]
    params = {p["name"]: p["value"] for p in spec["arguments"]["parameters"]}
    assert {
        "rounds",
        "clients",
        "fraction",
        "min-clients",
        "local-epochs",
        "lr",
        "seed",
        "image",
        "store",
        "mlflow-uri",
    } <= set(params)
    t = templates(manifest)
    entry = t[spec["entrypoint"]]
    assert entry["parallelism"] == 1
    groups = [[s["name"] for s in group] for group in entry["steps"]]
    assert groups == [["init"], ["rounds"], ["finalize"]]
    # only the loop fails fast (a retried init must not stop the workflow)
    assert "failFast" not in entry
    loop = t[entry["steps"][1][0]["template"]]
    assert (loop["failFast"], loop["parallelism"]) == (True, 1)
    assert loop["steps"][0][0]["withSequence"] == {
        "start": "{{workflow.parameters.start-round}}",
        "end": "{{workflow.parameters.rounds}}",
        "format": "round %d",  # loop children read round(0:round 1) in the Argo UI
    }
    tasks = {task["name"]: task for task in t["round"]["dag"]["tasks"]}
    assert tasks["train"]["withParam"] == "{{tasks.distribute.outputs.result}}"
    assert tasks["train"]["continueOn"] == {"failed": True, "error": True}
    assert "train.Failed" in tasks["aggregate"]["depends"]
    assert tasks["evaluate"]["depends"] == "aggregate"
    assert int(t["train"]["retryStrategy"]["limit"]) >= 1
    assert t["aggregate"]["outputs"]["artifacts"][0]["name"] == "global-checkpoint"
    assert t["train"]["container"]["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in t["train"]["container"]["volumeMounts"]
    assert spec["onExit"] == "finish"
    assert "nvidia.com/gpu" not in json.dumps(t["train"]["container"].get("resources", {}))


def test_gpus_in_config_request_nvidia_gpus_on_train_only():
    doc = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    doc["cluster"] = {
        **doc.get("cluster", {}),
        "gpus": 2,
        "node_selector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    manifest = manifest_for(config_from_mapping(doc, name="gpu-exp", where="gpu"))
    t = templates(manifest)
    resources = t["train"]["container"]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in json.dumps(t["aggregate"]["container"].get("resources", {}))
    assert manifest["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert manifest["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert schema_errors(manifest) == []


BLOCK_CONFIGS = [c for c in CONFIGS if load_config(c).cluster.rounds_per_workflow]


@pytest.mark.parametrize("config", BLOCK_CONFIGS, ids=lambda p: p.name)
def test_checked_in_rounds_template_is_what_compile_produces_and_validates(config):
    cfg = load_config(config)
    target = ROOT / "argo" / "templates" / f"{cfg.name}-rounds.yaml"
    expected = render_rounds_template(
        cfg, source=f"configs/{config.name}", target=f"argo/templates/{target.name}"
    )
    if os.environ.get("ARGOFL_REGEN") == "1" and not os.environ.get("CI"):
        target.write_text(str(expected))
    assert target.is_file(), f"{target} is missing: run `argofl compile {config.relative_to(ROOT)}`"
    assert target.read_text() == expected, f"templates/{target.name} is stale: run `argofl compile`"
    template = yaml.safe_load(expected)
    assert schema_errors(template) == []
    again = WorkflowTemplate.from_yaml(target.read_text())
    assert isinstance(again, WorkflowTemplate)
    assert yaml.safe_load(again.to_yaml()) == template


def test_rounds_per_workflow_parent_creates_a_child_workflow_per_block():
    doc = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    single = manifest_for(config_from_mapping(doc, name="flag", where="flag"))
    doc["cluster"] = {**doc["cluster"], "rounds_per_workflow": 3}
    cfg = config_from_mapping(doc, name="flag", where="flag")
    parent = manifest_for(cfg)
    t = templates(parent)
    # the parent keeps init, finalize and the exit handler; the rounds moved to the child, created block
    # after block by the loop that fails fast
    assert set(t) == {"init", "finish", "finalize", "rounds-in-order", "rounds", "fedavg"}
    assert parent["spec"]["onExit"] == "finish"
    groups = [[s["name"] for s in group] for group in t["fedavg"]["steps"]]
    assert groups == [["init"], ["rounds"], ["finalize"]]
    assert "failFast" not in t["fedavg"]
    blocks = t["rounds-in-order"]
    assert (blocks["failFast"], blocks["parallelism"]) == (True, 1)
    assert blocks["steps"][0][0]["template"] == "rounds"
    resource = t["rounds"]["resource"]
    assert resource["action"] == "create"
    assert resource["setOwnerReference"] is True
    assert resource["successCondition"] == "status.phase == Succeeded"
    assert resource["failureCondition"] == "status.phase in (Failed, Error)"
    child = yaml.safe_load(resource["manifest"])
    assert child["kind"] == "Workflow"
    assert child["spec"]["workflowTemplateRef"] == {"name": "flag-rounds"}
    assert child["metadata"]["labels"]["argofl.io/parent"] == "{{workflow.name}}"
    assert "argofl.io/rounds" in child["metadata"]["labels"]
    passed = {p["name"]: p["value"] for p in child["spec"]["arguments"]["parameters"]}
    assert passed["run-name"] == "{{workflow.name}}"
    assert passed["clients"] == "{{workflow.parameters.clients}}"
    params = {p["name"]: p["value"] for p in parent["spec"]["arguments"]["parameters"]}
    assert params["rounds-per-workflow"] == "3"
    assert schema_errors(parent) == []
    # the child template holds the single workflow's round templates, with the parent's run key
    from argofl.pipelines.compile import rounds_template_for

    rounds = rounds_template_for(cfg)
    assert rounds is not None
    assert rounds["metadata"]["name"] == "flag-rounds"
    ct = templates(rounds)
    single_t = templates(single)
    for name in ("round", "distribute", "train", "aggregate", "evaluate"):
        expected = json.dumps(single_t[name]).replace("{{workflow.name}}", "{{workflow.parameters.run-name}}")
        assert json.dumps(ct[name]) == expected
    assert "{{workflow.name}}" not in json.dumps(rounds)
    loop = ct[rounds["spec"]["entrypoint"]]["steps"][0][0]
    assert loop["name"] == "round"
    assert loop["withSequence"]["format"] == "round %d"
    # unset: the single workflow, unchanged
    assert (
        rounds_template_for(
            config_from_mapping(
                yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text()),
                name="flag",
                where="flag",
            )
        )
        is None
    )


def test_rounds_per_workflow_only_for_fedavg():
    from argofl.pipelines.config import ConfigError

    doc = yaml.safe_load((ROOT / "configs" / "split-fmnist-torch.yaml").read_text())
    doc["cluster"] = {**(doc.get("cluster") or {}), "rounds_per_workflow": 2}
    with pytest.raises(ConfigError, match="rounds_per_workflow: only kind fedavg"):
        config_from_mapping(doc, name="s", where="s")
    doc = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    doc["cluster"]["rounds_per_workflow"] = -1
    with pytest.raises(ConfigError, match="rounds_per_workflow: must be ≥ 0, got -1"):
        config_from_mapping(doc, name="s", where="s")
