"""Placement and least privilege: each placement group's train template alone carries its nodes, volume
and Secret; distribute routes every sampled client only to its own group's fan-out; the compiled
workflows validate against Argo's schema and run with the local executor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import ConfigError, config_from_mapping, load_config
from argofl.pipelines.data_commands import SplitSpec, split_dataset
from argofl.pipelines.local.cli import local
from argofl.steps.checkpoint import load_checkpoint
from argofl.steps.runinfo import RunError, RunLayout
from argofl.steps.settings import Settings
from argofl.steps.step_distribute import place_groups
from argofl.steps.store import FileStore

ROOT = Path(__file__).resolve().parents[1]
PLACED = sorted(p for p in (ROOT / "configs").glob("*.yaml") if "placement:" in p.read_text())


def client_resources(template: dict[str, Any]) -> set[str]:
    """The client-owned things a template's pod gets: volumes (claim / host path) and Secrets besides the
    run store's."""
    found = set()
    for volume in template.get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            found.add("pvc:" + volume["persistentVolumeClaim"]["claimName"])
        if "hostPath" in volume:
            found.add("hostPath:" + volume["hostPath"]["path"])
    for env in (template.get("container") or {}).get("env") or []:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref["name"] != "argofl-s3":
            found.add("secret:" + ref["name"])
    return found


def test_placed_configs_exist_for_every_deployment_shape():
    assert {p.stem for p in PLACED} >= {
        "fedavg-fmnist-sites-buckets",
        "fedavg-fmnist-sites-pvc",
        "fedavg-fmnist-sites-loader",
    }


@pytest.mark.parametrize("config", PLACED, ids=lambda p: p.name)
def test_no_pod_receives_another_clients_volume_or_secret(config):
    cfg = load_config(config)
    manifest = yaml.safe_load((ROOT / "argo" / f"{cfg.name}.yaml").read_text())
    assert manifest == manifest_for(cfg)
    templates = {t["name"]: t for t in manifest["spec"]["templates"]}
    assert not manifest["spec"].get("volumes", []) or all(
        v["name"] == "tmp" for v in manifest["spec"]["volumes"]
    )
    expected = {}
    for group in cfg.placement:
        own = {f"secret:{group.secret}"} if group.secret else set()
        if "pvc" in group.volume:
            own.add(f"pvc:{group.volume['pvc']}")
        if "host_path" in group.volume:
            own.add(f"hostPath:{group.volume['host_path']}")
        expected[f"train-{group.name}"] = own
    # each group's template has exactly its own resources; every other template has none
    for name, template in templates.items():
        assert client_resources(template) == expected.get(name, set()), name
    for group in cfg.placement:
        template = templates[f"train-{group.name}"]
        assert template.get("nodeSelector", {}) == group.node_selector
        assert template.get("affinity", {}) == group.affinity
        assert template.get("tolerations", []) == group.tolerations
        mounts = template["container"]["volumeMounts"]
        assert all(m.get("readOnly") for m in mounts if m["name"] != "tmp")
    # the round fans out over each group's own list, with that group's template
    round_dag = templates["round"]["dag"]["tasks"]
    fanned = {t["template"]: t["withParam"] for t in round_dag if "withParam" in t}
    assert fanned == {
        f"train-{g.name}": f"{{{{tasks.distribute.outputs.parameters.clients-{g.name}}}}}"
        for g in cfg.placement
    }
    # no PVC or Secret is shared between groups (a host path may repeat: it is on each group's own nodes)
    shared = [r for r in set().union(*expected.values()) if sum(r in v for v in expected.values()) > 1]
    assert [r for r in shared if not r.startswith("hostPath:")] == []
    # what Argo does at run time: distribute routes every sampled client to its group's list only
    owner = {c: g.name for g in cfg.placement for c in g.clients}
    pods = place_groups(3, sorted(owner), 2, {g.name: g.clients for g in cfg.placement})
    for group_name, labels in pods.items():
        for label in labels:
            clients = [int(c) for c in label.rsplit(" ", 1)[1].split(",")]
            assert {owner[c] for c in clients} == {group_name}, label


def test_a_groups_train_pods_keep_the_cluster_node_selector_and_tolerations_beside_their_own():
    """Argo gives a pod its template's nodeSelector and tolerations instead of the workflow's: a GPU
    cluster's (``cluster.node_selector``, ``cluster.tolerations``) must stay on every group's train pods."""
    from tests.test_manifests import schema_errors

    gpu_pool = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    site = {"key": "argofl.io/site", "operator": "Equal", "value": "a", "effect": "NoSchedule"}
    doc = {
        "experiment": "x",
        "clients": 3,
        "placement": [
            {"name": "a", "clients": [0, 1], "node_selector": {"argofl.io/site": "a"}, "tolerations": [site]},
            {"name": "b", "clients": [2], "node_selector": {"gpu": "h100"}},
        ],
        "cluster": {"gpus": 1, "node_selector": {"gpu": "a100"}, "tolerations": [gpu_pool]},
    }
    manifest = manifest_for(config_from_mapping(doc, name="x", where="x.yaml"))
    templates = {t["name"]: t for t in manifest["spec"]["templates"]}
    a, b = templates["train-a"], templates["train-b"]
    assert a["nodeSelector"] == {"gpu": "a100", "argofl.io/site": "a"}
    assert a["tolerations"] == [gpu_pool, site]
    assert b["nodeSelector"] == {"gpu": "h100"}  # the group's own value wins
    assert "tolerations" not in b  # none of its own: the workflow's apply
    assert manifest["spec"]["tolerations"] == [gpu_pool]
    assert a["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert schema_errors(manifest) == []


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("fedavg-fmnist-sites-pvc.yaml", "placement group 'site-a' mounts a volume (pvc: site-a-data)"),
        ("fedavg-fmnist-sites-loader.yaml", "placement group 'edge-0' mounts a volume (host_path: "),
    ],
)
def test_argofl_run_of_a_config_with_client_volumes_is_one_line_naming_the_group(
    config, named, tmp_path, monkeypatch
):
    """The local executor mounts no volumes: refused before anything starts, naming the group and the
    way to run it, not a template index with advice for workflow authors."""
    import argofl.pipelines.commands as commands
    from argofl.pipelines.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)
    result = CliRunner().invoke(cli, ["run", str(ROOT / "configs" / config)])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert named in line
    assert "needs a cluster: run this config with argofl submit" in line
    assert line.endswith("nothing was started")
    assert not (tmp_path / "runs").exists()


def test_distribute_never_mixes_groups_in_a_pod_and_refuses_unplaced_clients():
    pods = place_groups(2, [0, 1, 2, 3, 5], 2, {"a": [0, 2, 5], "b": [1, 3], "c": [4]})
    assert pods == {
        "a": ["round 2 / clients 0,2", "round 2 / client 5"],
        "b": ["round 2 / clients 1,3"],
        "c": [],
    }
    with pytest.raises(RunError, match=r"clients \[4\] are in no placement group"):
        place_groups(2, [4], 1, {"a": [0]})


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        (
            [{"name": "a", "clients": [0, 1]}, {"name": "b", "clients": [1, 2]}],
            "client 1 is in both 'a' and 'b'",
        ),
        ([{"name": "a", "clients": [0, 1]}], r"clients \[2\] are in no group"),
        ([{"name": "a", "clients": [0, 1, 2, 3]}], "client 3 does not exist"),
        ([{"name": "a", "clients": [0, 1, 2], "volume": {"nfs": "x"}}], "volume must be"),
        ([{"name": "a", "clients": [0, 1, 2], "volume": {"host_path": "data"}}], "must be absolute"),
        ([{"name": "A_b", "clients": [0, 1, 2]}], "placement.name: must be a DNS label"),
        ([{"name": "a", "clients": [0, 1, 2], "affinity": {"nodeAffinity": 3}}], "not a Kubernetes affinity"),
        ([{"name": "a", "clients": [0, 1, 2], "tolerations": [{"kee": "x"}]}], "not a toleration"),
        ([{"name": "a", "clients": [0, 1, 2], "secrets": "x"}], "unknown key placement.secrets"),
        ({"name": "a"}, "expected a non-empty list of groups"),
        (
            [{"name": "a", "clients": [0], "secret": "s"}, {"name": "b", "clients": [1, 2], "secret": "s"}],
            "Secret 's' is given to both 'a' and 'b'",
        ),
        (
            [
                {"name": "a", "clients": [0], "volume": {"pvc": "v"}},
                {"name": "b", "clients": [1, 2], "volume": {"pvc": "v"}},
            ],
            "PVC 'v' is given to both 'a' and 'b'",
        ),
    ],
)
def test_bad_placement_is_one_line_naming_it(placement, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_mapping(
            {"experiment": "x", "clients": 3, "placement": placement}, name="x", where="x.yaml"
        )
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("x.yaml: ")


@pytest.mark.slow
def test_placed_per_client_workflow_runs_locally_with_federated_evaluation(tmp_path, fmnist_dir, monkeypatch):
    """The per-site-bucket config with file:// shards: two of three sites sampled (one group's list is
    empty and its fan-out Skipped), no central test set, federated metrics as round outputs."""
    s = Settings.from_mapping({"experiment": "x", "clients": 3, "data_limit": 300, "seed": 0})
    template = (tmp_path / "sites").as_uri() + "/{client}/"
    split_dataset(SplitSpec.from_settings(s), template)
    for name in ("ARGOFL_DATA_S3_ACCESS_KEY", "ARGOFL_DATA_S3_SECRET_KEY"):
        monkeypatch.setenv(name, "unused-for-file-shards")
    params = {
        "rounds": "1",
        "fraction": "0.67",
        "min-clients": "2",
        "data-uri": template,
        "store": (tmp_path / "store").as_uri(),
        "mlflow-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    args = ["run", str(ROOT / "argo" / "fedavg-fmnist-sites-buckets.yaml"), "--json"]
    args += ["--runs-dir", str(tmp_path / "runs")]
    for name, value in params.items():
        args += ["-p", f"{name}={value}"]
    result = CliRunner().invoke(local, args)
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["phase"] == "Succeeded"
    run_name = next(p for p in (tmp_path / "runs").iterdir() if (p / "status.json").is_file()).name
    layout = RunLayout(f"fedavg-fmnist-sites-buckets/{run_name}")
    store = FileStore(tmp_path / "store")
    plan = json.loads(store.get_bytes(layout.plan_key(1)))
    assert len(plan["clients"]) == 2
    assert sorted(len(v) for v in plan["pods"].values()) == [0, 1, 1]
    final = load_checkpoint(store, layout.global_key(1))
    assert final.manifest.metrics["clients"] == 2
    evaluation = json.loads(store.get_bytes(layout.eval_key(1)))
    assert evaluation["evaluated_on"] == "clients' test splits"
    assert evaluation["federated"]["clients"] == 2
    assert evaluation["accuracy"] == evaluation["federated"]["accuracy"]


def test_watch_and_status_read_a_groups_train_template_as_train():
    from argofl.pipelines.kinds import KINDS
    from argofl.pipelines.progress import step_line, step_of

    node = {
        "templateName": "train-site-a",
        "phase": "Succeeded",
        "inputs": {
            "parameters": [
                {"name": "round", "value": "round 2"},
                {"name": "clients", "value": "round 2 / client 0"},
            ]
        },
        "outputs": {"parameters": [{"name": "loss", "value": "0.5"}, {"name": "accuracy", "value": "0.75"}]},
    }
    step = step_of(node, KINDS["fedavg"].display)
    assert step.template == "train"
    assert step_line(step) == "round 2 / client 0 ✔ train loss 0.5000 acc 0.7500"


@pytest.mark.parametrize("config", PLACED, ids=lambda p: p.name)
def test_a_groups_train_template_refuses_other_clients(config):
    cfg = load_config(config)
    templates = {t["name"]: t for t in manifest_for(cfg)["spec"]["templates"]}
    for group in cfg.placement:
        args = templates[f"train-{group.name}"]["container"]["args"]
        assert args[args.index("--only-clients") + 1] == ",".join(map(str, group.clients))


def test_train_refuses_a_client_outside_its_group_before_reading_anything(tmp_path, monkeypatch):
    from argofl.steps.cli import step as step_cli

    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setattr("argofl.steps.step_train.open_run", lambda key: (None, None, _record()))
    result = CliRunner().invoke(
        step_cli,
        [
            "train",
            "--run-key",
            "x/y",
            "--round",
            "1",
            "--clients",
            "round 1 / clients 1,2",
            "--only-clients",
            "0,1",
        ],
    )
    assert result.exit_code == 2
    assert "error: clients ['2'] of 'round 1 / clients 1,2' are not this pod's to train" in result.output


def _record():
    from argofl.steps.client_data import DataOptions
    from argofl.steps.runinfo import RunRecord

    return RunRecord(
        Settings.from_mapping({"experiment": "x", "clients": 3}), "r", "w", "u", 0.0, DataOptions()
    )
