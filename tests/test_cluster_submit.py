"""``argofl submit/status/watch/resubmit`` against a fake Argo server on loopback that records requests."""

from __future__ import annotations

import copy
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import load_config
from argofl.pipelines.local.runlock import hold_run_lock
from tests.fake_argo import FakeArgo

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fedavg-fmnist-torch.yaml"
SWAGGER = Path(__file__).resolve().parents[2] / "shared" / "argo-api" / "swagger.json"
TOKEN = "test-token-123"
EXPERIMENT = "fedavg-fmnist-torch"
RUN_URL = "http://localhost:5000/#/experiments/1/runs/0123abcd"


@pytest.fixture
def env(argo: FakeArgo, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("ARGO_SERVER", "ARGO_TOKEN", "ARGO_NAMESPACE", "ARGO_INSECURE_SKIP_VERIFY", "ARGO_SECURE"):
        monkeypatch.delenv(name, raising=False)
    return {"ARGO_SERVER": argo.url, "ARGO_TOKEN": TOKEN}


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


# ------------------------------------------------------------------- Argo-shaped workflows and status


def compiled() -> dict[str, Any]:
    return manifest_for(load_config(CONFIG))


class StatusBuilder:
    """Nodes shaped like Argo's for the fedavg workflow: Steps → StepGroups → round DAGs → Retry → Pod."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: dict[str, dict[str, Any]] = {}
        self.clock = 0
        self.node(name, name, "Steps", "fedavg", "Running")
        self.round_group = self.group(1)

    def stamp(self) -> str:
        self.clock += 1
        return f"2026-11-23T10:{self.clock // 60:02d}:{self.clock % 60:02d}Z"

    def node(self, nid: str, display: str, kind: str, template: str, phase: str, **extra: Any) -> str:
        node = {
            "id": nid,
            "name": f"{self.name}.{display}" if nid != self.name else nid,
            "displayName": display,
            "type": kind,
            "phase": phase,
            "startedAt": self.stamp(),
            **extra,
        }
        if template:
            node["templateName"] = template
        if phase in ("Succeeded", "Failed", "Error"):
            node["finishedAt"] = self.stamp()
        self.nodes[nid] = node
        return nid

    def child(self, parent: str, child: str) -> None:
        self.nodes[parent].setdefault("children", []).append(child)

    def group(self, index: int) -> str:
        gid = self.node(
            f"{self.name}-g{index}", f"[{index}]", "StepGroup", "", "Running", boundaryID=self.name
        )
        self.child(self.name, gid)
        return gid

    def step(
        self,
        parent: str,
        boundary: str,
        template: str,
        phase: str,
        inputs: dict[str, str],
        outputs: dict[str, str] | None = None,
        message: str = "",
        suffix: str = "",
        retry_inputs: bool = True,
    ) -> str:
        """A Retry node with one Pod attempt (as Argo makes for a template with a retryStrategy)."""
        base = f"{boundary}-{template}{suffix}"
        params = {"parameters": [{"name": k, "value": v} for k, v in inputs.items()]}
        outs = (
            {"outputs": {"parameters": [{"name": k, "value": v} for k, v in outputs.items()]}}
            if outputs
            else {}
        )
        msg = {"message": message} if message else {}
        pod = self.node(
            f"{base}-pod", f"{template}{suffix}(0)", "Pod", template, phase,
            boundaryID=boundary, inputs=params, **outs, **msg,
        )  # fmt: skip
        retry_extra = {"inputs": params} if retry_inputs else {}
        retry = self.node(
            base, f"{template}{suffix}", "Retry", template, phase,
            boundaryID=boundary, children=[pod], **retry_extra, **outs, **msg,
        )  # fmt: skip
        self.child(parent, retry)
        return retry

    def round(self, number: int, clients: int, outcome: str) -> None:
        """``outcome``: 'done' (evaluated), 'failed' (aggregate failed), 'running' (training)."""
        phase = {"done": "Succeeded", "failed": "Failed", "running": "Running"}[outcome]
        rid = self.node(
            f"{self.name}-r{number}",
            f"round({number - 1}:round {number})",
            "DAG",
            "round",
            phase,
            boundaryID=self.name,
            inputs={"parameters": [{"name": "round", "value": f"round {number}"}]},
        )
        self.child(self.round_group, rid)
        r = {"round": f"round {number}"}
        dist = self.step(rid, rid, "distribute", "Succeeded", r)
        group = self.node(f"{rid}-train", "train", "TaskGroup", "", phase, boundaryID=rid)
        self.child(dist, group)
        for i in range(clients):
            done = outcome != "running" or i == 0
            self.step(
                group,
                rid,
                "train",
                "Succeeded" if done else "Running",
                {**r, "clients": f"round {number} / client {i}"},
                {"loss": f"0.{5 - i}", "accuracy": f"0.{70 + i}", "seconds": "3.0"} if done else None,
                suffix=f"({i}:round {number} / client {i})",
                retry_inputs=False,
            )
        if outcome == "running":
            return
        if outcome == "failed":
            self.step(rid, rid, "aggregate", "Failed", r, message="only 0 valid updates, min-clients is 1")
            self.nodes[rid]["message"] = "child failed"
            return
        self.step(
            rid, rid, "aggregate", "Succeeded", r, {"clients": str(clients), "loss": "0.4", "accuracy": "0.8"}
        )
        self.step(
            rid, rid, "evaluate", "Succeeded", r, {"loss": f"0.{60 - number}", "accuracy": f"0.{80 + number}"}
        )

    def status(self, phase: str, message: str = "") -> dict[str, Any]:
        self.nodes[self.name]["phase"] = phase
        out = {"phase": phase, "startedAt": "2026-11-23T10:00:00Z", "nodes": copy.deepcopy(self.nodes)}
        if phase != "Running":
            out["finishedAt"] = self.stamp()
        if message:
            out["message"] = message
        return out


def old_workflow(
    name: str, outcomes: list[str], phase: str, total: int | None = None, config: Path = CONFIG
) -> dict[str, Any]:
    """The compiled manifest as the server returns it after running: name, labels, a status."""
    workflow = manifest_for(load_config(config))
    total = total or len(outcomes)
    for p in workflow["spec"]["arguments"]["parameters"]:
        if p["name"] == "rounds":
            p["value"] = str(total)
    workflow["metadata"].update(
        name=name,
        namespace="argofl",
        uid="0b5c",
        resourceVersion="4242",
        creationTimestamp="2026-11-23T10:00:00Z",
    )
    workflow["metadata"]["labels"]["workflows.argoproj.io/phase"] = phase
    workflow["metadata"]["labels"]["workflows.argoproj.io/completed"] = "true"
    builder = StatusBuilder(name)
    builder.step(builder.nodes[name]["children"][0], name, "init", "Succeeded", {}, {"mlflow-run-id": "abc"})
    for number, outcome in enumerate(outcomes, start=1):
        builder.round(number, clients=2, outcome=outcome)
    workflow["status"] = builder.status(phase, "child failed" if phase == "Failed" else "")
    return workflow


def params(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p.get("value", "") for p in workflow["spec"]["arguments"]["parameters"]}


# ---------------------------------------------------------------------------------------------- submit


def test_submit_sends_the_compiled_manifest_to_argo(argo: FakeArgo, env: dict[str, str]) -> None:
    result = invoke(["submit", str(CONFIG), "-p", "rounds=20", "-p", "mlflow-ui=http://localhost:5000"], env)
    assert result.exit_code == 0, result.output
    [request] = argo.requests
    assert request.method == "POST"
    assert request.path == "/api/v1/workflows/argofl"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    expected = compiled()
    for p in expected["spec"]["arguments"]["parameters"]:
        if p["name"] == "rounds":
            p["value"] = "20"
        if p["name"] == "mlflow-ui":  # where the run link points: the browser's address for MLflow
            p["value"] = "http://localhost:5000"
    assert request.body["workflow"] == expected
    assert params(request.body["workflow"])["rounds"] == "20"
    name = f"{EXPERIMENT}-x0001"
    assert name in result.output
    assert f"{argo.url}/workflows/argofl/{name}" in result.output


def test_submit_body_validates_against_the_argo_api_schema(argo: FakeArgo, env: dict[str, str]) -> None:
    if not SWAGGER.is_file():
        pytest.skip(f"Argo API schema not found at {SWAGGER}")
    import jsonschema
    from referencing import Registry
    from referencing.jsonschema import DRAFT4

    result = invoke(["submit", str(CONFIG), "-p", "clients=12"], env)
    assert result.exit_code == 0, result.output
    swagger = json.loads(SWAGGER.read_text())
    registry = Registry().with_resource("urn:argo-swagger", DRAFT4.create_resource(swagger))
    schema = {"$ref": "urn:argo-swagger#/definitions/io.argoproj.workflow.v1alpha1.WorkflowCreateRequest"}
    validator = jsonschema.Draft4Validator(schema, registry=registry)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(argo.requests[0].body)]
    assert errors == []
    # and the schema is not vacuous: a wrongly typed field is caught
    bad = copy.deepcopy(argo.requests[0].body)
    bad["workflow"]["spec"]["arguments"]["parameters"] = "rounds=3"
    assert list(validator.iter_errors(bad))


def test_submit_namespace_and_bearer_token_from_flags(argo: FakeArgo, env: dict[str, str]) -> None:
    args = ["submit", str(CONFIG), "--host", argo.url, "--namespace", "team-a", "--token", "Bearer abc"]
    result = invoke(args, {})
    assert result.exit_code == 0, result.output
    [request] = argo.requests
    assert request.path == "/api/v1/workflows/team-a"
    assert request.headers["Authorization"] == "Bearer abc"
    assert f"{argo.url}/workflows/team-a/" in result.output


def test_submit_namespace_from_env(argo: FakeArgo, env: dict[str, str]) -> None:
    result = invoke(["submit", str(CONFIG)], {**env, "ARGO_NAMESPACE": "ml"})
    assert result.exit_code == 0, result.output
    assert argo.requests[0].path == "/api/v1/workflows/ml"


def test_submit_refuses_unknown_parameter(argo: FakeArgo, env: dict[str, str]) -> None:
    result = invoke(["submit", str(CONFIG), "-p", "nope=1"], env)
    assert result.exit_code == 2
    assert "'nope'" in result.output
    assert "rounds" in result.output  # the valid names are listed
    assert argo.requests == []


def test_submit_refuses_invalid_setting(argo: FakeArgo, env: dict[str, str]) -> None:
    result = invoke(["submit", str(CONFIG), "-p", "rounds=-1"], env)
    assert result.exit_code == 2
    assert "rounds" in result.output
    assert argo.requests == []


def test_submit_without_host_says_what_to_set(env: dict[str, str]) -> None:
    result = invoke(["submit", str(CONFIG)], {})
    assert result.exit_code == 2
    assert "--host" in result.output
    assert "ARGO_SERVER" in result.output


def test_submit_to_unreachable_server_is_one_error_line() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["submit", str(CONFIG), "--host", url])
    assert time.monotonic() - started < 120  # no minutes of retries (a bound a loaded machine meets)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot reach Argo server at {url}")
    assert "Traceback" not in result.output


def test_watch_of_a_server_never_reached_is_one_error_line_without_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retries are for a server that answered before; one that never did is a wrong --host."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    result = CliRunner().invoke(cli, ["watch", "some-workflow", "--host", url])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot reach Argo server at {url}")
    assert sleeps == []


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("http://[::1", "Invalid IPv6 URL"),  # was "gave an unexpected answer" (exit 1): none was asked
        ("localhost:abc", "Port could not be cast to integer value as 'abc'"),  # was "cannot reach" (exit 1)
        ("localhost:99999", "Port out of range 0-65535"),
    ],
)
@pytest.mark.parametrize("command", [["status", "some-workflow"], ["submit", str(CONFIG)]])
def test_a_host_that_is_no_address_is_one_usage_line(command: list[str], host: str, problem: str) -> None:
    result = CliRunner().invoke(cli, [*command, "--host", host])
    assert result.exit_code == 2, result.output
    assert one_line(result.output) == (
        f"Error: Invalid value for '--host' / ARGO_SERVER: Argo server {host!r}: {problem}; expected "
        "host:port or an http(s):// URL"
    )


def test_a_host_naming_no_host_is_one_usage_line() -> None:
    result = CliRunner().invoke(cli, ["status", "some-workflow", "--host", "https://:2746"])
    assert result.exit_code == 2, result.output
    assert one_line(result.output) == (
        "Error: Invalid value for '--host' / ARGO_SERVER: Argo server 'https://:2746' names no host: "
        "expected host:port or an http(s):// URL"
    )


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, output
    return lines[0]


def test_bare_host_port_means_https(argo: FakeArgo, env: dict[str, str]) -> None:
    host_port = argo.url.removeprefix("http://")
    result = CliRunner().invoke(cli, ["submit", str(CONFIG)], env={**env, "ARGO_SERVER": host_port})
    assert result.exit_code == 1
    assert f"https://{host_port}" in result.output
    result = invoke(["submit", str(CONFIG)], {**env, "ARGO_SERVER": host_port, "ARGO_SECURE": "false"})
    assert result.exit_code == 0, result.output


def test_submit_refused_by_server(argo: FakeArgo, env: dict[str, str]) -> None:
    argo.refuse = 403
    result = CliRunner().invoke(cli, ["submit", str(CONFIG)], env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Argo server refused")
    assert "403" in lines[0]
    assert "forbidden" in lines[0]


def test_submit_wait_follows_the_workflow(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-x0001"
    argo.workflows[name] = [old_workflow(name, ["done", "done"], "Succeeded")]
    result = invoke(["submit", str(CONFIG), "--wait", "--interval", "0.05"], env)
    assert result.exit_code == 0, result.output
    assert "round 2 ✔ test accuracy" in result.output


# ---------------------------------------------------------------------------------------------- status


def test_status_prints_phase_and_rounds(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-abcde"
    workflow = old_workflow(name, ["done", "done", "running"], "Running", total=5)
    workflow["status"]["outputs"] = {"parameters": [{"name": "mlflow-run-url", "value": RUN_URL}]}
    argo.workflows[name] = [workflow]
    result = invoke(["status", name], env)
    assert result.exit_code == 0, result.output
    assert argo.requests[0].method == "GET"
    assert argo.requests[0].path.split("?")[0] == f"/api/v1/workflows/argofl/{name}"
    assert argo.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    out = result.output
    assert "Running" in out
    assert "2 evaluated of rounds 1..5" in out
    round_lines = [line.strip() for line in out.splitlines() if line.strip().startswith("round")]
    assert len(round_lines) == 3
    assert "clients 2/2 trained" in round_lines[0]
    assert "test accuracy 0.8100 loss 0.5900" in round_lines[0]
    assert "test accuracy 0.8200" in round_lines[1]
    assert "clients 1/2 trained" in round_lines[2]
    assert "test accuracy" not in round_lines[2]
    assert f"MLflow:     {RUN_URL}" in out.splitlines()


def test_status_without_a_central_test_set_names_the_federated_evaluation(
    argo: FakeArgo, env: dict[str, str]
) -> None:
    """Per-client data: the round's accuracy (and the run's final-accuracy) is its clients' evaluation of
    the model that entered the round, which status showed as the test accuracy."""
    name = f"{EXPERIMENT}-abcde"
    workflow = old_workflow(name, ["done"], "Succeeded", total=1)
    for node in workflow["status"]["nodes"].values():  # the step's Retry node and its attempt
        if node.get("templateName") == "evaluate":
            outputs = {p["name"]: p["value"] for p in node["outputs"]["parameters"]}
            fed = {"fed-loss": outputs["loss"], "fed-accuracy": outputs["accuracy"], "fed-clients": "4"}
            node["outputs"]["parameters"] += [{"name": k, "value": v} for k, v in fed.items()]
    workflow["status"]["outputs"] = {"parameters": [{"name": "final-accuracy", "value": outputs["accuracy"]}]}
    argo.workflows[name] = [workflow]
    result = invoke(["status", name], env)
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    (round_line,) = [line for line in lines if line.startswith("round")]
    assert round_line.endswith("fed accuracy of the incoming model 0.8100 loss 0.5900 (4 clients)")
    assert (
        "Final:      fed accuracy of the incoming model 0.8100 (round 1; the final model is not evaluated)"
        in lines
    )


def _local_run_dir(tmp_path: Path, workflow: dict[str, Any]) -> Path:
    """``workflow`` recorded as a local run: runs/workflows/NAME/{workflow,status}.json."""
    run_dir = tmp_path / "runs" / "workflows" / workflow["metadata"]["name"]
    run_dir.mkdir(parents=True)
    manifest = {k: v for k, v in workflow.items() if k != "status"}
    (run_dir / "workflow.json").write_text(json.dumps(manifest))
    (run_dir / "status.json").write_text(json.dumps(workflow["status"]))
    return run_dir


def test_status_and_watch_of_a_local_run_need_no_server_and_read_as_a_clusters(
    argo: FakeArgo, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``argofl status runs/workflows/NAME`` (and ``watch``) read the local run's records: the same round
    lines as a cluster's status of the same workflow, with its directory for the namespace and URL."""
    name = f"{EXPERIMENT}-abcde"
    workflow = old_workflow(name, ["done", "done", "running"], "Running", total=5)
    workflow["status"]["outputs"] = {"parameters": [{"name": "mlflow-run-url", "value": RUN_URL}]}
    argo.workflows[name] = [workflow]
    on_cluster = invoke(["status", name], env).output.splitlines()
    run_dir = _local_run_dir(tmp_path, workflow)
    for variable in ("ARGO_SERVER", "ARGO_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    with hold_run_lock(run_dir):  # its executor runs
        local = invoke(["status", str(run_dir)]).output.splitlines()
        raw = invoke(["status", str(run_dir), "--json"]).output
    assert local[:3] == [f"Name:       {name}", f"Run dir:    {run_dir}", "Phase:      Running"]
    assert local[3:] == [line for line in on_cluster[3:] if not line.startswith("URL:")]
    assert json.loads(raw) == workflow["status"]
    assert not argo.requests[1:]  # only the cluster's status asked the server

    # the executor was killed: the run stays "Running" in its records, and can be resumed
    stopped = invoke(["status", str(run_dir)]).output.splitlines()
    assert stopped[2] == "Phase:      Stopped (its executor was killed)"
    assert stopped[-1] == f"Resume:     argofl resume {run_dir}"
    watched = CliRunner().invoke(cli, ["watch", str(run_dir), "--interval", "0.01"])
    assert watched.exit_code == 1, watched.output
    assert [line for line in watched.output.splitlines() if "round 2 ✔" in line]
    assert watched.output.splitlines()[-1] == (f"error: workflow {run_dir} Stopped (its executor was killed)")

    # once resumed, the run to look at is the one that continues it (resuming this one is refused)
    later = old_workflow(f"{EXPERIMENT}-klmno", ["done"], "Running")
    later["metadata"]["annotations"] = {"argofl.io/resumes": name}
    later_dir = _local_run_dir(tmp_path, later)
    resumed = invoke(["status", str(run_dir)]).output.splitlines()
    assert resumed[-1] == f"Resumed by: {later_dir}"


def test_watch_of_a_local_run_follows_it_to_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{EXPERIMENT}-fghij"
    run_dir = _local_run_dir(tmp_path, old_workflow(name, ["done", "done"], "Succeeded"))
    monkeypatch.delenv("ARGO_SERVER", raising=False)
    result = invoke(["watch", str(run_dir), "--interval", "0.01"])
    assert result.exit_code == 0, result.output
    assert "round 2 ✔ test accuracy" in result.output
    assert result.output.splitlines()[-1].startswith(f"{run_dir} Succeeded: 2 round(s) evaluated")


def test_status_of_a_local_run_of_a_workflow_that_cannot_resume_gives_no_resume_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any Argo workflow run by argofl local run: resume refuses one whose rounds cannot start later."""
    workflow = old_workflow(f"{EXPERIMENT}-pqrst", ["done", "failed"], "Failed")
    workflow["spec"]["arguments"]["parameters"] = [
        p for p in workflow["spec"]["arguments"]["parameters"] if p["name"] != "start-round"
    ]
    monkeypatch.delenv("ARGO_SERVER", raising=False)
    lines = invoke(["status", str(_local_run_dir(tmp_path, workflow))]).output.splitlines()
    assert lines[2] == "Phase:      Failed"
    assert not [line for line in lines if line.startswith(("Resume", "URL"))]


def test_status_of_a_directory_that_is_not_a_run_asks_for_a_server(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("ARGO_SERVER", raising=False)
    result = CliRunner().invoke(cli, ["status", str(tmp_path)])
    assert result.exit_code == 2
    assert one_line(result.output) == (
        "Error: no Argo server given: pass --host https://HOST:2746 or set ARGO_SERVER=HOST:PORT"
    )


def test_status_json_is_the_raw_status(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-abcde"
    workflow = old_workflow(name, ["done", "failed"], "Failed")
    argo.workflows[name] = [workflow]
    result = invoke(["status", name, "--json"], env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == workflow["status"]
    result = invoke(["status", name], env)
    assert result.exit_code == 0, result.output
    [failed] = [line for line in result.output.splitlines() if line.strip().startswith("round   2")]
    assert "Failed" in failed
    assert "only 0 valid updates" in failed  # the reason, not Argo's generic "child failed"


def test_status_of_an_answer_that_is_no_workflow_names_what_was_asked(
    argo: FakeArgo, env: dict[str, str]
) -> None:
    argo.workflows["odd"] = [{"metadata": "not an object"}]
    result = CliRunner().invoke(cli, ["status", "odd"], env=env)
    assert result.exit_code == 1
    assert result.output.startswith(
        f"error: Argo server at {argo.url} gave an unexpected answer when asked to return workflow odd: "
    )


@pytest.mark.parametrize(
    ("command", "asked"),
    [
        (["status", "odd"], "return workflow odd"),
        (["watch", "odd"], "return workflow odd"),
        (["submit", str(CONFIG)], "create the workflow"),
    ],
    ids=["status", "watch", "submit"],
)
@pytest.mark.parametrize("answer", [[1, 2], "text", 3], ids=["list", "string", "number"])
def test_an_answer_that_is_no_json_object_names_the_server_and_what_it_answered(
    argo: FakeArgo, env: dict[str, str], command: list[str], asked: str, answer: object
) -> None:
    """A JSON list was a TypeError traceback from hera."""
    argo.answer = answer
    result = CliRunner().invoke(cli, command, env=env)
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"error: Argo server at {argo.url} gave an unexpected answer when asked to {asked}: "
        f"a JSON {type(answer).__name__.replace('str', 'string').replace('int', 'number')}, "
        "not an object\n"
    )


def test_status_of_missing_workflow(argo: FakeArgo, env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["status", "nope-12345"], env=env)
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: workflow nope-12345 not found in namespace argofl")


# ----------------------------------------------------------------------------------------------- watch


def test_watch_prints_finished_clients_and_rounds_until_succeeded(
    argo: FakeArgo, env: dict[str, str]
) -> None:
    name = f"{EXPERIMENT}-abcde"
    argo.workflows[name] = [
        {**old_workflow(name, [], "Running", total=2), "status": {"phase": "Pending"}},
        old_workflow(name, ["running"], "Running", total=2),
        old_workflow(name, ["done"], "Running", total=2),
        old_workflow(name, ["done", "done"], "Running", total=2),
        old_workflow(name, ["done", "done"], "Succeeded", total=2),
    ]
    for workflow in argo.workflows[name][1:]:  # init has run: its global outputs are on the workflow
        workflow["status"]["outputs"] = {"parameters": [{"name": "mlflow-run-url", "value": RUN_URL}]}
    result = invoke(["watch", name, "--interval", "0.05"], env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines.count(f"MLflow run: {RUN_URL}") == 1
    trained = [line for line in lines if " / client " in line]
    # each client of each round once, with its metrics
    assert len(trained) == 4
    assert len([line for line in trained if "round 1 / client 0 ✔ train loss 0.5000" in line]) == 1
    evaluated = [line for line in lines if "test accuracy" in line and "✔" in line]
    assert len(evaluated) == 2
    assert "round 1" in evaluated[0]
    assert "round 2" in evaluated[1]
    assert len([r for r in argo.requests if r.method == "GET"]) >= 5


def test_watch_exits_1_when_the_workflow_fails(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-abcde"
    argo.workflows[name] = [
        old_workflow(name, ["done"], "Running", total=2),
        old_workflow(name, ["done", "failed"], "Failed", total=2),
    ]
    result = CliRunner().invoke(cli, ["watch", name, "--interval", "0.05"], env=env)
    assert result.exit_code == 1
    assert "round 2 ✖ aggregate (only 0 valid updates" in result.output
    assert "only 0 valid updates" in result.output
    assert f"error: workflow {name} Failed" in result.output


def test_watch_ctrl_c_exits_cleanly(
    argo: FakeArgo, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"{EXPERIMENT}-abcde"
    argo.workflows[name] = [old_workflow(name, ["running"], "Running", total=2)]

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    result = CliRunner().invoke(cli, ["watch", name, "--interval", "0.05"], env=env)
    assert result.exit_code == 130
    assert "stopped watching" in result.output
    assert "Traceback" not in result.output


# -------------------------------------------------------------------------------------------- resubmit


def test_resubmit_continues_after_the_last_completed_round(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-old01"
    old = old_workflow(name, ["done", "done", "done", "failed"], "Failed", total=5)
    argo.workflows[name] = [old]
    result = invoke(["resubmit", name], env)
    assert result.exit_code == 0, result.output
    [post] = argo.posts()
    assert post.path == "/api/v1/workflows/argofl"
    assert post.headers["Authorization"] == f"Bearer {TOKEN}"
    new = post.body["workflow"]
    got = params(new)
    assert got["start-round"] == "4"
    assert got["resume-from"] == f"{EXPERIMENT}/{name}"
    assert {k: v for k, v in got.items() if k not in ("start-round", "resume-from")} == {
        k: v for k, v in params(old).items() if k not in ("start-round", "resume-from")
    }
    meta = new["metadata"]
    assert meta["generateName"] == f"{EXPERIMENT}-"
    assert not {"name", "uid", "resourceVersion", "creationTimestamp"} & set(meta)
    assert meta["labels"] == compiled()["metadata"]["labels"]
    assert "status" not in new
    assert {k: v for k, v in new["spec"].items() if k != "arguments"} == {
        k: v for k, v in old["spec"].items() if k != "arguments"
    }
    assert f"{EXPERIMENT}-x0001" in result.output


def test_resubmit_adds_missing_parameters_and_applies_overrides(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-old02"
    old = old_workflow(name, ["done", "failed"], "Failed", total=3)
    old["spec"]["arguments"]["parameters"] = [
        p for p in old["spec"]["arguments"]["parameters"] if p["name"] not in ("start-round", "resume-from")
    ]
    argo.workflows[name] = [old]
    result = invoke(["resubmit", name, "-p", "lr=0.01"], env)
    assert result.exit_code == 0, result.output
    got = params(argo.posts()[0].body["workflow"])
    assert got["start-round"] == "2"
    assert got["resume-from"] == f"{EXPERIMENT}/{name}"
    assert got["lr"] == "0.01"


def test_resubmit_refuses_bad_override(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-old03"
    argo.workflows[name] = [old_workflow(name, ["done", "failed"], "Failed")]
    result = invoke(["resubmit", name, "-p", "rounds=0"], env)
    assert result.exit_code == 2
    assert "rounds" in result.output
    assert argo.posts() == []


def test_resubmit_of_a_complete_workflow_submits_nothing(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-old04"
    argo.workflows[name] = [old_workflow(name, ["done", "done", "done"], "Failed")]  # finalize failed
    result = invoke(["resubmit", name], env)
    assert result.exit_code == 0, result.output
    assert "all 3 rounds" in result.output
    assert argo.posts() == []
    # asking for more rounds extends the experiment
    result = invoke(["resubmit", name, "-p", "rounds=5"], env)
    assert result.exit_code == 0, result.output
    got = params(argo.posts()[0].body["workflow"])
    assert (got["start-round"], got["rounds"]) == ("4", "5")


def test_resubmit_refuses_a_running_workflow(argo: FakeArgo, env: dict[str, str]) -> None:
    name = f"{EXPERIMENT}-old05"
    argo.workflows[name] = [old_workflow(name, ["done", "running"], "Running")]
    result = CliRunner().invoke(cli, ["resubmit", name], env=env)
    assert result.exit_code == 1
    assert "Running" in result.output
    assert argo.posts() == []


def test_resubmit_with_no_completed_round_starts_where_the_old_one_did(
    argo: FakeArgo, env: dict[str, str]
) -> None:
    name = f"{EXPERIMENT}-old06"
    argo.workflows[name] = [old_workflow(name, ["failed"], "Failed", total=3)]
    result = invoke(["resubmit", name], env)
    assert result.exit_code == 0, result.output
    got = params(argo.posts()[0].body["workflow"])
    assert (got["start-round"], got["resume-from"]) == ("1", "")


def test_resubmit_continues_a_split_workflow_from_its_next_round(argo: FakeArgo, env: dict[str, str]) -> None:
    name = "split-fmnist-torch-old07"
    config = ROOT / "configs" / "split-fmnist-torch.yaml"
    argo.workflows[name] = [old_workflow(name, ["done", "done", "failed"], "Failed", total=4, config=config)]
    result = invoke(["resubmit", name], env)
    assert result.exit_code == 0, result.output
    new = argo.posts()[0].body["workflow"]
    assert (params(new)["start-round"], params(new)["resume-from"]) == ("3", f"split-fmnist-torch/{name}")
    templates = {t["name"]: t for t in new["spec"]["templates"]}
    [loop] = [s for group in templates["rounds-in-order"]["steps"] for s in group if s["name"] == "round"]
    assert loop["withSequence"]["start"] == "{{workflow.parameters.start-round}}"
    init_args = templates["split-init"]["container"]["args"]
    assert init_args[init_args.index("--resume-from") + 1] == "{{workflow.parameters.resume-from}}"
    assert not {"strategy", "server-lr"} & set(params(new))  # split refuses them: not parameters


def test_resubmit_refuses_a_workflow_whose_rounds_would_start_over(
    argo: FakeArgo, env: dict[str, str]
) -> None:
    # a split workflow compiled before split runs could resume: its round loop starts at 1, always
    name = "split-fmnist-torch-old08"
    config = ROOT / "configs" / "split-fmnist-torch.yaml"
    old = old_workflow(name, ["done", "failed"], "Failed", total=3, config=config)
    text = json.dumps(old).replace('"{{workflow.parameters.start-round}}"', '"1"')
    text = text.replace('"--resume-from", "{{workflow.parameters.resume-from}}", ', "")
    old = json.loads(text)
    old["spec"]["arguments"]["parameters"] = [
        p for p in old["spec"]["arguments"]["parameters"] if p["name"] not in ("start-round", "resume-from")
    ]
    argo.workflows[name] = [old]
    result = invoke(["resubmit", name], env)
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {name} cannot resume from a later round")
    assert "start-round, resume-from" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert argo.posts() == []


# ------------------------------------------------------------------------------------------- client


def test_tls_verification_follows_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from argofl.pipelines.cluster_commands import _target

    monkeypatch.delenv("ARGO_INSECURE_SKIP_VERIFY", raising=False)
    monkeypatch.delenv("ARGO_SECURE", raising=False)
    assert _target("argo.example:2746", None, "argofl", None).verify is True
    assert _target("argo.example:2746", None, "argofl", False).service.verify_ssl is False
    monkeypatch.setenv("ARGO_INSECURE_SKIP_VERIFY", "true")
    target = _target("argo.example:2746", "tok", "argofl", None)
    assert target.host == "https://argo.example:2746"
    assert target.service.verify_ssl is False
    assert target.service.token == "Bearer tok"
    assert _target("https://argo.example/argo/", None, "argofl", True).service.verify_ssl is True
