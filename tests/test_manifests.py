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

from argofl.pipelines.compile import manifest_for, render_manifest, render_template_manifest
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
    assert templates == {load_config(c).name for c in CONFIGS}
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
    assert groups == [["init"], ["round"], ["finalize"]]
    assert entry["steps"][1][0]["withSequence"] == {
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
