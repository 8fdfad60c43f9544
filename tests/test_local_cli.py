"""``argofl local run`` / ``argofl local logs`` through click's CliRunner."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.local.cli import local
from argofl.steps.labels import ROUND_FORMAT, client_sequence_format

HELLO: dict[str, Any] = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"generateName": "hello-"},
    "spec": {
        "entrypoint": "main",
        "arguments": {"parameters": [{"name": "who", "value": "world"}]},
        "templates": [
            {
                "name": "main",
                "steps": [
                    [{"name": "greet", "template": "greet"}],
                    [{"name": "check", "template": "check", "when": "{{workflow.parameters.who}} == fail"}],
                ],
                "outputs": {
                    "parameters": [
                        {
                            "name": "said",
                            "valueFrom": {"parameter": "{{steps.greet.outputs.result}}"},
                            "globalName": "said",
                        }
                    ]
                },
            },
            {"name": "greet", "container": {"command": ["echo", "hello {{workflow.parameters.who}}"]}},
            {"name": "check", "container": {"command": ["sh", "-c", "echo failing >&2; exit 3"]}},
        ],
    },
}

NODE_KEYS = {"id", "name", "displayName", "type", "templateName", "phase", "startedAt", "finishedAt"}


def _write(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_run_json_shape_and_success(tmp_path: Path) -> None:
    path = _write(tmp_path, HELLO)
    result = CliRunner().invoke(local, ["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["phase"] == "Succeeded"
    assert status["startedAt"]
    assert status["finishedAt"]
    assert status["outputs"]["parameters"] == [{"name": "said", "value": "hello world"}]
    nodes = status["nodes"]
    by_type = {n["type"] for n in nodes.values()}
    assert {"Steps", "StepGroup", "Pod", "Skipped"} <= by_type
    for node_id, node in nodes.items():
        assert node["id"] == node_id
        assert NODE_KEYS - {"templateName"} <= set(node)
        for child in node.get("children", []):
            assert child in nodes
    greet = next(n for n in nodes.values() if n["displayName"] == "greet")
    assert set(greet) >= NODE_KEYS
    assert greet["outputs"]["result"] == "hello world"
    assert greet["outputs"]["exitCode"] == "0"
    assert greet["boundaryID"] in nodes
    skipped = next(n for n in nodes.values() if n["displayName"] == "check")
    assert skipped["phase"] == "Skipped"
    assert "evaluated false" in skipped["message"]


def test_run_failure_exits_1_and_prints_a_tree(tmp_path: Path) -> None:
    path = _write(tmp_path, HELLO)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(local, ["run", str(path), "-p", "who=fail", "--runs-dir", str(runs)])
    assert result.exit_code == 1, result.output
    assert "STEP" in result.output
    assert "✔ greet" in result.output
    assert "✖ check" in result.output
    assert "main: Error (exit code 3)" in result.output
    run_dir = next(p for p in runs.iterdir() if p.name.startswith("hello-"))
    logs = CliRunner().invoke(local, ["logs", run_dir.name, "check", "--runs-dir", str(runs)])
    assert logs.exit_code == 0, logs.output
    assert "attempt 0" in logs.output
    assert "failing" in logs.output
    everything = CliRunner().invoke(local, ["logs", str(run_dir)])
    assert "hello fail" in everything.output


def test_bad_input_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, HELLO)
    runs = str(tmp_path / "runs")
    unknown = CliRunner().invoke(local, ["run", str(path), "-p", "nope=1", "--runs-dir", runs])
    assert unknown.exit_code == 2
    assert "unknown workflow parameter 'nope'" in unknown.output
    malformed = CliRunner().invoke(local, ["run", str(path), "-p", "novalue", "--runs-dir", runs])
    assert malformed.exit_code == 2
    assert "NAME=VALUE" in malformed.output
    unsupported = dict(HELLO, spec={**HELLO["spec"], "volumes": [{"name": "v"}]})
    refused = CliRunner().invoke(local, ["run", str(_write(tmp_path, unsupported)), "--runs-dir", runs])
    assert refused.exit_code == 2
    assert "spec.volumes[0]: only emptyDir volumes" in refused.output
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("a: [")
    assert CliRunner().invoke(local, ["run", str(not_yaml), "--runs-dir", runs]).exit_code == 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\xff\xfe binary", "cannot read YAML: 'utf-8' codec can't decode byte 0xff in position 1"),
        (b"a: [1\n  b: }", 'cannot read YAML: while parsing a flow sequence in "<unicode string>", line 1'),
        (b"- a\n- b\n", "expected one Workflow document (a mapping), found a list"),
        (b"", "expected one Workflow document, found none"),
        (b"kind: Workflow\n---\nkind: Workflow\n", "expected one Workflow document, found 2"),
        (  # was "spec: missing; an Argo Workflow needs spec.entrypoint and spec.templates"
            b"experiment: mine\nrounds: 2\n",
            "an experiment config, not an Argo Workflow: run it with argofl run ",
        ),
    ],
)
def test_a_file_that_is_not_one_workflow_is_one_error_line(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(local, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(f"Error: Invalid value for WORKFLOW: {path}: {problem}")


def test_default_runs_dir_runs_scripts_and_output_paths_from_another_directory(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """With its default (relative) --runs-dir, from a working directory of the user's: a script template
    and a template with a declared output path both run, as with an absolute --runs-dir."""
    manifest: dict[str, Any] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "rel-"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {
                    "name": "main",
                    "steps": [
                        [{"name": "script", "template": "script"}],
                        [{"name": "out", "template": "out"}],
                    ],
                },
                {
                    "name": "script",
                    "script": {"image": "python", "command": ["python"], "source": "print(6 * 7)"},
                },
                {
                    "name": "out",
                    "container": {
                        "image": "x",
                        "command": ["sh", "-c", "mkdir -p /tmp/o && echo hi > /tmp/o/v"],
                    },
                    "outputs": {"parameters": [{"name": "v", "valueFrom": {"path": "/tmp/o/v"}}]},
                },
            ],
        },
    }
    user_dir = tmp_path / "elsewhere"
    user_dir.mkdir()
    _write(user_dir, manifest)
    monkeypatch.chdir(user_dir)
    result = CliRunner().invoke(local, ["run", "wf.yaml", "--json"])
    status = json.loads(result.output)
    assert result.exit_code == 0, status
    nodes = {n["displayName"]: n for n in status["nodes"].values()}
    assert nodes["script"]["outputs"]["result"] == "42"
    assert nodes["out"]["outputs"]["parameters"][0]["value"] == "hi"
    assert len(list((user_dir / "runs" / "local").glob("rel-*/status.json"))) == 1


ROUNDS: dict[str, Any] = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"generateName": "rounds-"},
    "spec": {
        "entrypoint": "main",
        "templates": [
            {
                "name": "main",
                "steps": [
                    [
                        {
                            "name": "round",
                            "template": "round",
                            "withItems": ["1", "2"],
                            "arguments": {"parameters": [{"name": "r", "value": "{{item}}"}]},
                        }
                    ]
                ],
            },
            {
                "name": "round",
                "inputs": {"parameters": [{"name": "r"}]},
                "dag": {
                    "tasks": [
                        {
                            "name": "fan",
                            "template": "say",
                            "withItems": ["a", "b"],
                            "arguments": {
                                "parameters": [{"name": "m", "value": "{{inputs.parameters.r}}-{{item}}"}]
                            },
                        },
                        {
                            "name": "after",
                            "depends": "fan",
                            "template": "say",
                            "arguments": {
                                "parameters": [{"name": "m", "value": "after-{{inputs.parameters.r}}"}]
                            },
                        },
                    ]
                },
            },
            {
                "name": "say",
                "inputs": {"parameters": [{"name": "m"}]},
                "retryStrategy": {"limit": 1},
                "container": {"command": ["echo", "said {{inputs.parameters.m}}"]},
            },
        ],
    },
}


def test_logs_of_a_fan_out_or_a_dag_print_the_pods_under_it(tmp_path: Path) -> None:
    """`argofl local logs RUN train` (README): the display name of a withItems/withParam task is its task
    group's, whose logs are those of its items' pods; a DAG's are those of every pod inside it."""
    path = _write(tmp_path, ROUNDS)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(local, ["run", str(path), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    run_dir = next(runs.iterdir())

    fan = CliRunner().invoke(local, ["logs", str(run_dir), "fan"])
    assert fan.exit_code == 0, fan.output
    said = [line for line in fan.output.splitlines() if line.startswith("said ")]
    assert sorted(said) == ["said 1-a", "said 1-b", "said 2-a", "said 2-b"]
    assert fan.output.count("==> fan(") == 4

    round_one = CliRunner().invoke(local, ["logs", str(run_dir), "round(0:1)"])
    assert round_one.exit_code == 0, round_one.output
    said = [line for line in round_one.output.splitlines() if line.startswith("said ")]
    assert sorted(said) == ["said 1-a", "said 1-b", "said after-1"]


def _labelled() -> dict[str, Any]:
    """ROUNDS with argofl's loop labels as items: rounds ``round 1``, ``round 2``, each fanning out over
    ``round N / client 0`` and ``round N / client 1``."""
    manifest = copy.deepcopy(ROUNDS)
    main, round_, _ = manifest["spec"]["templates"]
    rounds = main["steps"][0][0]
    del rounds["withItems"]
    rounds["withSequence"] = {"start": "1", "end": "2", "format": ROUND_FORMAT}
    fan = round_["dag"]["tasks"][0]
    del fan["withItems"]
    fan["withSequence"] = {"count": "2", "format": client_sequence_format("{{inputs.parameters.r}}")}
    fan["arguments"]["parameters"][0]["value"] = "{{item}}"
    return manifest


def test_logs_of_a_node_by_the_label_the_argo_ui_shows(tmp_path: Path) -> None:
    """The Argo UI shows a loop child by its item, the label of a round (``round 1``) or a client
    (``round 1 / client 0``): NODE may be that label as well as the display name ``fan(0:round 1 /
    client 0)``; a NODE that matches nothing is one line with candidates."""
    path = _write(tmp_path, _labelled())
    runs = tmp_path / "runs"
    assert CliRunner().invoke(local, ["run", str(path), "--runs-dir", str(runs)]).exit_code == 0
    run_dir = next(runs.iterdir())

    def said(node: str) -> list[str]:
        shown = CliRunner().invoke(local, ["logs", str(run_dir), node])
        assert shown.exit_code == 0, shown.output
        return sorted(line for line in shown.output.splitlines() if line.startswith("said "))

    assert said("fan(1:round 2 / client 1)") == ["said round 2 / client 1"]
    assert said("round 2 / client 1") == ["said round 2 / client 1"]
    assert said("round 1") == ["said after-round 1", "said round 1 / client 0", "said round 1 / client 1"]
    # a step of one round, as argofl run's progress names a split round's server ("round 2 / server")
    assert said("round 2 / after") == ["said after-round 2"]
    missing = CliRunner().invoke(local, ["logs", str(run_dir), "client 7"])
    assert missing.exit_code == 2
    errors = [line for line in missing.output.splitlines() if line.startswith("Error")]
    assert errors == [
        "Error: Invalid value for NODE: 'client 7': no node with that display name, loop item or id in "
        f"{run_dir.name} (candidates: 'round 1 / client 0', 'round 1 / client 1', 'round 2 / client 0', "
        "'round 2 / client 1', …)"
    ]


def test_logs_of_the_exit_handler_by_its_template_name(tmp_path: Path) -> None:
    """argofl run prints the exit handler as 'finish'; its node is '<workflow>.onExit', so NODE 'finish'
    was 'no node with that display name'."""
    manifest = copy.deepcopy(HELLO)
    manifest["spec"]["onExit"] = "bye"
    manifest["spec"]["templates"].append({"name": "bye", "container": {"command": ["echo", "said bye"]}})
    run_dir = _succeeded_run(tmp_path, manifest)
    shown = CliRunner().invoke(local, ["logs", str(run_dir), "bye"])
    assert shown.exit_code == 0, shown.output
    assert [line for line in shown.output.splitlines() if line.startswith("said ")] == ["said bye"]
    assert ".onExit (" in shown.output


def _succeeded_run(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    """The run directory of ``manifest`` run to success under ``tmp_path/runs``."""
    path = _write(tmp_path, manifest)
    runs = tmp_path / "runs"
    assert CliRunner().invoke(local, ["run", str(path), "--runs-dir", str(runs)]).exit_code == 0
    return next(runs.iterdir())


def test_logs_of_a_node_without_pods_say_so(tmp_path: Path) -> None:
    run_dir = _succeeded_run(tmp_path, HELLO)
    skipped = CliRunner().invoke(local, ["logs", str(run_dir), "check"])
    assert skipped.exit_code == 0, skipped.output
    assert "check: no pod ran under this node" in skipped.output


def test_logs_of_a_run_include_the_workflows_it_created(tmp_path: Path) -> None:
    """Blocks of rounds (rounds_per_workflow) run as child workflows nested in the parent's run directory:
    `argofl local logs RUN train` finds their nodes too, and RUN alone prints their pods' logs."""
    child = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "{{workflow.name}}-child-"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {"name": "main", "steps": [[{"name": "work", "template": "work"}]]},
                {"name": "work", "container": {"command": ["echo", "in child"]}},
            ],
        },
    }
    parent = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "parent-"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {"name": "main", "steps": [[{"name": "block", "template": "create", "withItems": [1, 2]}]]},
                {
                    "name": "create",
                    "resource": {
                        "action": "create",
                        "successCondition": "status.phase == Succeeded",
                        "manifest": yaml.safe_dump(child),
                    },
                },
            ],
        },
    }
    runs = tmp_path / "runs"
    assert (
        CliRunner().invoke(local, ["run", str(_write(tmp_path, parent)), "--runs-dir", str(runs)]).exit_code
        == 0
    )
    run_dir = next(runs.iterdir())
    work = CliRunner().invoke(local, ["logs", str(run_dir), "work"])
    assert work.exit_code == 0, work.output
    assert work.output.count("==> work (") == 2
    assert work.output.count("in child") == 2
    everything = CliRunner().invoke(local, ["logs", str(run_dir)])
    assert everything.output.count("in child") == 2


@pytest.mark.parametrize("where", ["runs/local", "runs/workflows"])
def test_logs_of_a_run_by_name_find_it_where_argofl_local_run_or_argofl_run_put_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A bare run name was looked up under runs/local only: the runs of ``argofl run`` (runs/workflows)
    needed their path."""
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, HELLO)
    assert CliRunner().invoke(local, ["run", str(path), "--runs-dir", where]).exit_code == 0
    name = next((tmp_path / where).iterdir()).name
    shown = CliRunner().invoke(local, ["logs", name])
    assert shown.exit_code == 0, shown.output
    assert "==> " in shown.output
    missing = CliRunner().invoke(local, ["logs", "nosuch"])
    assert missing.exit_code == 2
    assert "no run directory with a status.json here or under runs/local or runs/workflows" in missing.output


ROOT = Path(__file__).resolve().parents[1]

SAID = ("framework", "store", "s3-endpoint", "mlflow-uri", "mlflow-ui", "data-dir")
"""The parameters :data:`ARGOFL_LIKE`'s one step prints, space-separated."""

ARGOFL_LIKE: dict[str, Any] = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"generateName": "tiny-", "labels": {"app.kubernetes.io/name": "argofl"}},
    "spec": {
        "entrypoint": "main",
        "arguments": {  # the cluster's defaults, as argofl compile writes them
            "parameters": [
                {"name": "framework", "value": "tensorflow"},
                {"name": "store", "value": "s3://argofl"},
                {"name": "s3-endpoint", "value": "http://minio:9000"},
                {"name": "mlflow-uri", "value": "http://mlflow:5000"},
                {"name": "mlflow-ui", "value": "http://mlflow:5000"},
                {"name": "data-dir", "value": ""},
            ]
        },
        "templates": [
            {
                "name": "main",
                "container": {
                    "command": [
                        "sh",
                        "-c",
                        "echo " + " ".join(f"'{{{{workflow.parameters.{p}}}}}'" for p in SAID),
                    ]
                },
            }
        ],
    },
}


@pytest.fixture
def prestarted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The frameworks ``argofl local run`` starts a fork server for (none is started); no S3 settings."""
    import argofl.pipelines.local.cli as local_cli

    for name in ("ARGOFL_S3_ENDPOINT", "ARGOFL_S3_ACCESS_KEY", "ARGOFL_S3_SECRET_KEY", *AWS_KEYS):
        monkeypatch.delenv(name, raising=False)
    frameworks: list[str] = []
    monkeypatch.setattr(local_cli, "prestart_steps", frameworks.append, raising=False)
    return frameworks


AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture
def run_options(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The keyword arguments ``argofl local run`` runs its workflow with (it does run)."""
    import argofl.pipelines.local.cli as local_cli

    given: dict[str, Any] = {}
    run_workflow = local_cli.run_workflow

    def recorded(*args: Any, **kwargs: Any) -> Any:
        given.update(kwargs)
        return run_workflow(*args, **kwargs)

    monkeypatch.setattr(local_cli, "run_workflow", recorded)
    return given


def _said(result: Any) -> dict[str, str]:
    """What :data:`ARGOFL_LIKE`'s step printed, by parameter."""
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    (pod,) = (n for n in status["nodes"].values() if n["type"] == "Pod")
    return dict(zip(SAID, pod["outputs"]["result"].split(" "), strict=True))


def test_an_argofl_workflow_gets_argofl_runs_local_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prestarted: list[str], run_options: dict[str, Any]
) -> None:
    """An argofl manifest ran with the cluster's defaults (s3://argofl, http://mlflow:5000): its init failed
    on 'S3 credentials for http://minio:9000 are not set'. Now the store and MLflow are argofl run's, beside
    the directory of run directories (runs/store, runs/mlflow.db); the fork server is started for the
    manifest's framework, the steps import the user's modules from here, and two run at once."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, ARGOFL_LIKE)
    said = _said(CliRunner().invoke(local, ["run", "wf.yaml", "--json"]))
    assert said == {
        "framework": "tensorflow",
        "store": (tmp_path / "runs" / "store").as_uri(),
        "s3-endpoint": "http://minio:9000",
        "mlflow-uri": f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}",
        "mlflow-ui": "http://127.0.0.1:5000",
        "data-dir": "",
    }
    assert len(list((tmp_path / "runs" / "local").glob("tiny-*/status.json"))) == 1
    assert prestarted == ["tensorflow"]
    assert run_options["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    assert run_options["parallelism"] == 2


def test_relative_paths_given_to_an_argofl_workflow_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prestarted: list[str]
) -> None:
    """-p store=lstore -p mlflow-uri=sqlite:///l.db reached init as given: it wrote them in its own pod's
    working directory, and distribute found no run record."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARGOFL_S3_ENDPOINT", "http://127.0.0.1:9000")
    _write(tmp_path, ARGOFL_LIKE)
    args = [
        "-p",
        "store=lstore",
        "-p",
        "mlflow-uri=sqlite:///l.db",
        "-p",
        "data-dir=data",
        "-p",
        "framework=torch",
    ]
    said = _said(CliRunner().invoke(local, ["run", "wf.yaml", "--runs-dir", "elsewhere", "--json", *args]))
    assert said == {
        "framework": "torch",
        "store": (tmp_path / "lstore").as_uri(),
        "s3-endpoint": "http://127.0.0.1:9000",  # the exported one, as for argofl run
        "mlflow-uri": f"sqlite:///{tmp_path / 'l.db'}",
        "mlflow-ui": "http://127.0.0.1:5000",
        "data-dir": str(tmp_path / "data"),
    }
    assert prestarted == ["torch"]


def test_a_workflow_not_compiled_by_argofl_keeps_its_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prestarted: list[str], run_options: dict[str, Any]
) -> None:
    """Argo's semantics for any other workflow: its own defaults, -p values as given, no checks."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARGOFL_S3_ENDPOINT", "http://127.0.0.1:9000")
    foreign = copy.deepcopy(ARGOFL_LIKE)
    foreign["metadata"]["labels"] = {"app.kubernetes.io/name": "other"}
    _write(tmp_path, foreign)
    said = _said(CliRunner().invoke(local, ["run", "wf.yaml", "--json", "-p", "mlflow-uri=sqlite:///l.db"]))
    assert said == {
        "framework": "tensorflow",
        "store": "s3://argofl",
        "s3-endpoint": "http://minio:9000",
        "mlflow-uri": "sqlite:///l.db",
        "mlflow-ui": "http://mlflow:5000",
        "data-dir": "",
    }
    assert prestarted == []
    assert (run_options.get("env"), run_options.get("parallelism")) == (None, None)
    assert not (tmp_path / "runs" / "store").exists()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["-p", "mlflow-uri=bogus://x"],
            "Error: Invalid value for '-p mlflow-uri': unsupported MLflow tracking URI 'bogus://x': use ",
        ),
        (
            ["-p", "store=gs://bucket/runs"],
            "Error: Invalid value for '-p store': unsupported store URI 'gs://bucket/runs': use ",
        ),
        (
            ["-p", "store=s3://argofl"],
            "Error: S3 credentials for http://minio:9000 are not set: export ARGOFL_S3_ACCESS_KEY and ",
        ),
    ],
)
def test_an_argofl_workflow_the_steps_could_not_run_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prestarted: list[str], args: list[str], error: str
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, ARGOFL_LIKE)
    result = CliRunner().invoke(local, ["run", "wf.yaml", *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(error), errors[0]
    assert errors[0].endswith("; nothing was started"), errors[0]
    assert not (tmp_path / "runs").exists()
    assert prestarted == []


@pytest.mark.slow
def test_a_compiled_experiment_runs_to_success_with_its_store_and_mlflow_under_the_runs_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist_dir: Path
) -> None:
    """`argofl local run argo/fedavg-fmnist-torch.yaml` failed in init after ~5 s: 'S3 credentials for
    http://minio:9000 are not set'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARGOFL_S3_ENDPOINT", raising=False)
    tiny = ["rounds=1", "clients=2", "min-clients=2", "data-limit=600", f"data-dir={fmnist_dir}"]
    args = [arg for value in tiny for arg in ("-p", value)]
    result = CliRunner().invoke(local, ["run", str(ROOT / "argo" / "fedavg-fmnist-torch.yaml"), *args])
    assert result.exit_code == 0, result.output
    assert "Succeeded" in result.output
    runs = tmp_path / "runs"  # --runs-dir runs/local: store and MLflow beside it, where argofl run puts them
    (run_dir,) = (runs / "local").glob("fedavg-fmnist-torch-*")
    assert len(list((runs / "store").glob(f"*/{run_dir.name}/round-0001/global.safetensors"))) == 1
    assert (runs / "mlflow.db").is_file()
    assert f"(start the UI: mlflow ui --backend-store-uri sqlite:///{runs / 'mlflow.db'})" in result.output
    # its summary.json, as argofl run writes one (it had none)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [row["round"] for row in summary["rounds"]] == [1]
    assert f"summary: {run_dir / 'summary.json'}" in result.output


@pytest.mark.parametrize("where", ["cwd", "parent", "home"])
def test_docker_steps_never_get_the_working_directory_or_home_made_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """With --runtime docker the runs root becomes mode 777 and is mounted in every container; `argofl
    local run --runs-dir out` (root: out's parent) or `argofl run --runs-dir .` made that the working
    directory. Such a root is refused, unchanged."""
    import click

    from argofl.pipelines.local import DockerOptions
    from argofl.pipelines.local_start import containers_for

    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    work.chmod(0o755)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = {"cwd": work, "parent": tmp_path, "home": tmp_path / "home"}[where]
    with pytest.raises(click.UsageError, match=r"--runtime docker .* nothing was started"):
        containers_for(root, DockerOptions())
    assert work.stat().st_mode & 0o777 == 0o755
    assert list(work.iterdir()) == []
    shared = containers_for(work / "runs", DockerOptions())  # a directory of its own: shared
    assert shared is not None
    assert shared.binds == (str(work / "runs"),)


def test_an_argofl_workflow_whose_data_dir_holds_no_dataset_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`argofl run` refused `-p data-dir=` without the dataset before starting; `argofl local run` of the
    compiled workflow started the run, and init failed."""
    monkeypatch.chdir(tmp_path)
    manifest = str(ROOT / "argo" / "fedavg-fmnist-torch.yaml")
    result = CliRunner().invoke(local, ["run", manifest, "-p", f"data-dir={tmp_path / 'none'}"])
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.output.splitlines() if "nothing was started" in ln]
    assert "'-p data-dir'" in line
    assert str(tmp_path / "none") in line
    assert not (tmp_path / "runs").exists()
