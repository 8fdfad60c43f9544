"""The `argofl` CLI: --help on every command, bad input → one-line error and exit code 2."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.steps.data import DATASETS
from argofl.steps.frameworks import FRAMEWORKS, FrameworkInfo
from argofl.steps.partition import SCHEMES
from argofl.steps.strategies import STRATEGIES
from argofl.steps.tracking import TRACKING_URIS
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    ctx = click.Context(group)
    out = [prefix]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            out += all_commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


COMMANDS = all_commands(cli)


def test_every_expected_command_exists():
    names = {" ".join(c) for c in COMMANDS}
    assert {
        "compile",
        "run",
        "resume",
        "step init",
        "step distribute",
        "step train",
        "step aggregate",
        "step evaluate",
        "step finalize",
        "local run",
        "local logs",
    } <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda c: " ".join(c) or "argofl")
def test_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "``" not in result.output  # a docstring's reST markup, shown as is by --help


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, output
    return lines[0]


def test_compile_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: x\nrounds: -1\n")
    result = CliRunner().invoke(cli, ["compile", str(bad), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "rounds: must be ≥ 1, got -1" in one_error_line(result.output)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("manifest", ["fedavg-fmnist-torch.yaml", "templates/fedavg-fmnist-torch.yaml"])
@pytest.mark.parametrize("command", ["compile", "run"])
def test_a_compiled_manifest_given_as_a_config_says_which_is_which(tmp_path, started_runs, command, manifest):
    """It was "kind: must be one of fedavg, split, got 'Workflow'"."""
    path = ROOT / "argo" / manifest
    out = tmp_path / "out"
    option = "--out-dir" if command == "compile" else "--runs-dir"
    result = CliRunner().invoke(cli, [command, str(path), option, str(out)])
    assert result.exit_code == 2, result.output
    kind = "WorkflowTemplate" if manifest.startswith("templates/") else "Workflow"
    assert one_error_line(result.output) == (
        f"Error: {path}: an Argo {kind} manifest, not an experiment config: give the config it was "
        f"compiled from (configs/…), or run the manifest itself with argofl local run {path}"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "option", "what"), [("compile", "--out-dir", "write"), ("run", "--runs-dir", "create")]
)
def test_a_directory_that_cannot_be_made_is_one_error_line(tmp_path, command, option, what):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "out"
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    result = CliRunner().invoke(cli, [command, config, option, str(target)])
    assert result.exit_code == 2
    assert (
        one_error_line(result.output)
        == f"Error: Invalid value for '{option}': cannot {what} {target}: Not a directory"
    )


def test_run_with_a_store_uri_that_is_no_uri_starts_nothing(tmp_path):
    """urlparse's ValueError (Invalid IPv6 URL) was a traceback."""
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli, ["run", config, "--runs-dir", str(runs), "--store", "s3://[bucket"])
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        "Error: Invalid value for '--store': store URI 's3://[bucket' is not a valid URI (Invalid IPv6 URL): "
        "use file:///path, s3://bucket/prefix or minio://bucket/prefix; nothing was started"
    )
    assert not runs.exists()  # no runs directory either


@pytest.mark.parametrize(
    ("args", "hint"),
    [(["--store", "gs://bucket/runs"], "'--store'"), (["-p", "store=gs://bucket/runs"], "'-p store'")],
)
def test_run_with_a_store_it_cannot_open_starts_nothing(tmp_path, args, hint):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        cli, ["run", str(ROOT / "configs" / "fedavg-fmnist-torch.yaml"), "--runs-dir", str(runs), *args]
    )
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        f"Error: Invalid value for {hint}: unsupported store URI 'gs://bucket/runs': use file:///path, "
        "s3://bucket/prefix or minio://bucket/prefix; nothing was started"
    )
    assert not runs.exists()  # no runs directory either


S3_ARGS = ["--store", "s3://argofl", "-p", "s3-endpoint=http://127.0.0.1:9"]
CREDENTIALS = [("ARGOFL_S3_ACCESS_KEY", "a"), ("ARGOFL_S3_SECRET_KEY", "s")]


@pytest.fixture
def no_s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No S3 credentials in the environment, and no fork server started for ``argofl run``."""
    import argofl.pipelines.commands as commands

    for name in (
        "ARGOFL_S3_ACCESS_KEY",
        "ARGOFL_S3_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)


def test_run_with_an_s3_store_and_no_credentials_is_one_line_and_starts_nothing(tmp_path, no_s3_credentials):
    """It started the run, whose init and exit handler both failed on the missing credentials."""
    runs = tmp_path / "runs"
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    result = CliRunner().invoke(cli, ["run", config, "--runs-dir", str(runs), *S3_ARGS])
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        "Error: S3 credentials for http://127.0.0.1:9 are not set: export ARGOFL_S3_ACCESS_KEY and "
        "ARGOFL_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or pass the argofl-s3 "
        "Secret's YAML with --secrets FILE; nothing was started"
    )
    assert not runs.exists()  # no runs directory either


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("http://minio:9000/argofl", "has a path; give only http(s)://HOST[:PORT]"),
        # these two were tracebacks (ValueError from urlparse and from minio)
        ("http://[::1", "is not an http(s)://HOST[:PORT] endpoint"),
        ("http://minio:abc", "has no valid port (Port could not be cast to integer value as 'abc'): give "),
    ],
)
def test_run_with_an_s3_endpoint_it_cannot_use_is_one_line_and_starts_nothing(
    tmp_path, no_s3_credentials, monkeypatch, endpoint, problem
):
    monkeypatch.setenv("ARGOFL_S3_ACCESS_KEY", "a")
    monkeypatch.setenv("ARGOFL_S3_SECRET_KEY", "s")
    runs = tmp_path / "runs"
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    args = ["--store", "s3://argofl", "-p", f"s3-endpoint={endpoint}"]
    result = CliRunner().invoke(cli, ["run", config, "--runs-dir", str(runs), *args])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"Error: ARGOFL_S3_ENDPOINT={endpoint!r} {problem}"), line
    assert line.endswith("; nothing was started"), line
    assert not runs.exists()  # no runs directory either


def test_run_with_an_s3_store_takes_its_credentials_from_secrets(tmp_path, no_s3_credentials, monkeypatch):
    import argofl.pipelines.local as local

    started: list[object] = []

    def run_workflow(*args: object, **kwargs: object) -> None:
        started.append(kwargs["key_refs"])
        raise click.exceptions.Exit(0)

    monkeypatch.setattr(local, "run_workflow", run_workflow)
    secrets = tmp_path / "s3.yaml"
    secrets.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: argofl-s3}\n"
        "stringData: {accesskey: a, secretkey: s}\n"
    )
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    result = CliRunner().invoke(
        cli, ["run", config, "--runs-dir", str(tmp_path / "runs"), *S3_ARGS, "--secrets", str(secrets)]
    )
    assert result.exit_code == 0, result.output
    assert started == [{("Secret", "argofl-s3"): {"accesskey": "a", "secretkey": "s"}}]


@pytest.mark.parametrize(
    ("given", "expected"),
    [([], "http://exported:9000"), (["-p", "s3-endpoint=http://given:9000"], "http://given:9000")],
)
def test_a_local_run_takes_the_exported_s3_endpoint_unless_one_is_given(
    tmp_path, no_s3_credentials, monkeypatch, given, expected
):
    """The steps' ARGOFL_S3_ENDPOINT comes from the s3-endpoint parameter: its default (the config's,
    http://minio:9000) hid the endpoint the user exported, and the run retried an unknown host."""
    import argofl.pipelines.local as local

    for name, value in [("ARGOFL_S3_ENDPOINT", "http://exported:9000"), *CREDENTIALS]:
        monkeypatch.setenv(name, value)
    started: list[dict[str, str]] = []

    def run_workflow(manifest: object, params: dict[str, str], **kwargs: object) -> None:
        started.append(params)
        raise click.exceptions.Exit(0)

    monkeypatch.setattr(local, "run_workflow", run_workflow)
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    args = ["run", config, "--runs-dir", str(tmp_path / "runs"), "--store", "s3://argofl", *given]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [p["s3-endpoint"] for p in started] == [expected]


def test_compile_writes_manifest(tmp_path):
    result = CliRunner().invoke(
        cli, ["compile", str(ROOT / "configs" / "fedavg-fmnist-torch.yaml"), "--out-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fedavg-fmnist-torch.yaml").read_text() == (
        ROOT / "argo" / "fedavg-fmnist-torch.yaml"
    ).read_text().replace("argo/fedavg-fmnist-torch.yaml", f"{tmp_path}/fedavg-fmnist-torch.yaml").replace(
        "configs/fedavg-fmnist-torch.yaml", str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "rounds=-2"], "rounds: must be ≥ 1, got -2"),
        (["-p", "min-clients=99"], "min_clients: must be ≤ clients (10), got 99"),
        (["-p", "rounds"], "expected NAME=VALUE"),
        (["--parallelism", "0"], "0 is not in the range"),
    ],
)
def test_run_bad_arguments_fail_before_running(tmp_path, args, message):
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(ROOT / "configs" / "fedavg-fmnist-torch.yaml"),
            "--runs-dir",
            str(tmp_path / "runs"),
            *args,
        ],
    )
    assert result.exit_code == 2
    assert message in one_error_line(result.output)
    assert not (tmp_path / "runs").exists()  # no runs directory either


@pytest.fixture
def started_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The parameters of each run ``argofl run`` starts (none is run; no fork server is started)."""
    import argofl.pipelines.commands as commands
    import argofl.pipelines.local as local

    started: list[dict[str, str]] = []

    def run_workflow(manifest: object, params: dict[str, str], **kwargs: object) -> None:
        started.append(params)
        raise click.exceptions.Exit(0)

    monkeypatch.setattr(local, "run_workflow", run_workflow)
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)
    return started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-p", "clients=100000000000"],
            "clients: must be ≤ 1000000 (distribute samples each round from every client), got 100000000000",
        ),
        (["-p", "clients=4", "-p", "min_clients=5"], "min_clients: must be ≤ clients (4), got 5"),
    ],
)
def test_run_with_too_many_clients_starts_nothing(tmp_path, started_runs, args, message):
    """-p clients=10**11 started the run, whose distribute step then failed with a MemoryError."""
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    result = CliRunner().invoke(cli, ["run", config, "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result.output)
    assert "nothing was started" in one_error_line(result.output)
    assert started_runs == []


@pytest.mark.parametrize("source", ["partition", "per-client"])
def test_run_with_a_data_dir_that_holds_no_dataset_starts_nothing(
    tmp_path, started_runs, monkeypatch, source
):
    """-p data-dir=/nonexistent started the run, whose init then failed to find the dataset. A run whose
    clients own the data and that has no central test set reads no dataset: it starts."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no dataset in ~/.cache/argofl either
    monkeypatch.delenv("ARGOFL_DOWNLOAD", raising=False)
    monkeypatch.delenv("ARGOFL_DATA_DIR", raising=False)
    config = tmp_path / "exp.yaml"
    text = (ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text()
    if source == "per-client":
        text += "data:\n  source: per-client\n  uri: shards/{client}/\n"
    config.write_text(text)
    missing = tmp_path / "nonexistent"
    args = ["run", str(config), "--runs-dir", str(tmp_path / "runs"), "-p", f"data-dir={missing}"]
    result = CliRunner().invoke(cli, args)
    if source == "per-client":
        assert result.exit_code == 0, result.output
        assert len(started_runs) == 1
        return
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"Error: Invalid value for '-p data-dir': fashion-mnist not found in {missing}: ")
    assert line.endswith("; nothing was started")
    assert started_runs == []
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "runtime", [[], ["--runtime", "docker", "--image-map", "a=b"]], ids=["process", "docker"]
)
def test_run_with_a_model_module_that_cannot_be_imported_starts_nothing(
    tmp_path, started_runs, monkeypatch, runtime
):
    """-p model=nosuch.mod:fn started the run, whose init then failed to import it. Steps in containers
    import it from their image: only host-process steps' modules are looked for here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text("def factory(input_shape, num_classes): ...\n")
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    run = ["run", config, "--runs-dir", "runs", *runtime]
    beside = CliRunner().invoke(cli, [*run, "-p", "model=mymodels:factory"])  # found where argofl starts
    assert beside.exit_code == 0, beside.output
    result = CliRunner().invoke(cli, [*run, "-p", "model=nosuch.mod:fn"])
    if runtime:
        assert result.exit_code == 0, result.output
        assert len(started_runs) == 2
        return
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        "Error: Invalid value for '-p model': cannot import model factory module 'nosuch.mod' (no module "
        f"named 'nosuch' in {tmp_path} or this Python's path); nothing was started"
    )
    assert len(started_runs) == 1


FOREIGN_OPTION = (
    "prox_mu: 0.1 is an option of strategy fedprox; strategy fedavg does not use it "
    "(remove it or set strategy: fedprox)"
)


def test_an_option_of_another_strategy_is_one_line_and_starts_or_writes_nothing(tmp_path, started_runs):
    """`strategy: fedavg` with `prox_mu: 0.1` (in the config or as -p) ran plain FedAvg, silently."""
    config = tmp_path / "prox.yaml"
    config.write_text("experiment: prox\nstrategy: fedavg\nprox_mu: 0.1\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compile", str(config), "--out-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output).split(": ", 1)[1] == f"{config}: {FOREIGN_OPTION}"
    assert not out.exists()
    runs = str(tmp_path / "runs")
    result = CliRunner().invoke(cli, ["run", str(config), "--runs-dir", runs])
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output).split(": ", 1)[1] == f"{config}: {FOREIGN_OPTION}"
    flagship = ROOT / "configs" / "fedavg-fmnist-torch.yaml"
    for command in (["run", str(flagship)], ["local", "run", str(ROOT / "argo" / flagship.name)]):
        result = CliRunner().invoke(cli, [*command, "--runs-dir", runs, "-p", "prox-mu=0.1"])
        assert result.exit_code == 2, result.output
        assert one_error_line(result.output) == f"error: parameters: {FOREIGN_OPTION}; nothing was started"
    assert started_runs == []
    result = CliRunner().invoke(cli, ["run", str(flagship), "--runs-dir", runs, "-p", "prox-mu=0.01"])
    assert result.exit_code == 0, result.output  # the option's default: accepted
    assert [p["prox-mu"] for p in started_runs] == ["0.01"]


def test_run_resuming_from_a_run_directory_instead_of_its_key_starts_nothing(tmp_path, started_runs):
    """-p resume-from=runs/workflows/NAME (a path, not <experiment>/<run>) started the run; init failed."""
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    given = ["-p", "start-round=2", "-p", "resume-from=runs/workflows/fedavg-fmnist-torch-abcde"]
    result = CliRunner().invoke(cli, ["run", config, "--runs-dir", str(tmp_path / "runs"), *given])
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        "error: parameters: resume-from: expected <experiment>/<run> (two names, e.g. fedavg/run-1), got "
        "'runs/workflows/fedavg-fmnist-torch-abcde'; nothing was started"
    )
    assert started_runs == []
    given = ["-p", "start-round=2", "-p", "resume-from=fedavg-fmnist-torch/fedavg-fmnist-torch-abcde"]
    result = CliRunner().invoke(cli, ["run", config, "--runs-dir", str(tmp_path / "runs"), *given])
    assert result.exit_code == 0, result.output
    assert [(p["start-round"], p["resume-from"]) for p in started_runs] == [
        ("2", "fedavg-fmnist-torch/fedavg-fmnist-torch-abcde")
    ]


def test_run_with_the_most_clients_allowed_starts(tmp_path, started_runs):
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    args = ["run", config, "--runs-dir", str(tmp_path / "runs"), "-p", "clients=1000000"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [p["clients"] for p in started_runs] == ["1000000"]


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--mlflow-uri", "ftp://host/x"], "'--mlflow-uri'"),
        (["-p", "mlflow-uri=sqlte:///x.db"], "'-p mlflow-uri'"),
    ],
)
def test_run_with_a_tracking_uri_mlflow_cannot_use_starts_nothing(tmp_path, started_runs, args, hint):
    """The run started and its init step failed on the URI."""
    uri = args[-1].removeprefix("mlflow-uri=")
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    result = CliRunner().invoke(cli, ["run", config, "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        f"Error: Invalid value for {hint}: unsupported MLflow tracking URI {uri!r}: use sqlite:///PATH, "
        "http(s)://HOST[:PORT], postgresql://…, mysql://…, mssql://…, databricks://PROFILE or file:///PATH; "
        "nothing was started"
    )
    assert started_runs == []
    assert not (tmp_path / "runs").exists()  # no runs directory either


def test_run_with_a_tracking_server_port_that_is_no_number_starts_nothing(tmp_path, started_runs):
    """The probe raised http.client.InvalidURL: a traceback."""
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    args = ["run", config, "--runs-dir", str(tmp_path / "runs"), "--mlflow-uri", "http://localhost:abc"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        "Error: Invalid value for '--mlflow-uri': MLflow tracking URI 'http://localhost:abc' has no valid "
        "port (Port could not be cast to integer value as 'abc'): use http://HOST[:PORT]; nothing was started"
    )
    assert started_runs == []


@pytest.mark.parametrize("args", [["--mlflow-uri", "http://[::1"], ["-p", "mlflow-uri=http://[::1"]])
def test_run_with_a_tracking_uri_that_is_no_uri_starts_nothing(tmp_path, started_runs, args):
    """urlparse's ValueError (Invalid IPv6 URL) in absolute_tracking_uri was a traceback."""
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    result = CliRunner().invoke(cli, ["run", config, "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2, result.output
    hint = "'--mlflow-uri'" if args[0] == "--mlflow-uri" else "'-p mlflow-uri'"
    assert one_error_line(result.output) == (
        f"Error: Invalid value for {hint}: MLflow tracking URI 'http://[::1' is not a valid URI "
        f"(Invalid IPv6 URL): use {TRACKING_URIS}; nothing was started"
    )
    assert started_runs == []


def test_run_with_an_mlflow_server_that_does_not_answer_starts_nothing(tmp_path, started_runs):
    """The run started and failed in init after its retries (~25 s), the reason deep in init's log."""
    uri = f"http://127.0.0.1:{free_port()}"
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["run", config, "--runs-dir", str(tmp_path / "runs"), "--mlflow-uri", uri]
    )
    assert time.monotonic() - started < 10
    assert result.exit_code == 2, result.output
    assert one_error_line(result.output) == (
        f"Error: Invalid value for '--mlflow-uri': MLflow server at {uri} cannot be reached: "
        "Connection refused; nothing was started"
    )
    assert started_runs == []
    assert not (tmp_path / "runs").exists()  # no runs directory either


def test_run_with_a_running_mlflow_server_starts(tmp_path, started_runs, mlflow_server):
    config = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml")
    args = ["run", config, "--runs-dir", str(tmp_path / "runs"), "--mlflow-uri", mlflow_server.uri]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [p["mlflow-uri"] for p in started_runs] == [mlflow_server.uri]


def test_data_split_choices_are_the_registries():
    from argofl.pipelines.data_commands import split_cmd

    choices = {p.name: list(p.type.choices) for p in split_cmd.params if isinstance(p.type, click.Choice)}
    assert choices == {"dataset": list(DATASETS), "scheme": list(SCHEMES)}


@pytest.mark.parametrize(
    ("registry", "key", "entry"),
    [
        (FRAMEWORKS, "framework", FrameworkInfo("my_jax_backend", "jax")),
        (STRATEGIES, "strategy", STRATEGIES["fedavg"]),
    ],
)
def test_compile_accepts_a_new_registry_entry_with_no_other_edit(tmp_path, monkeypatch, registry, key, entry):
    config = tmp_path / "exp.yaml"
    config.write_text(f"experiment: exp\n{key}: new-one\n")
    args = ["compile", str(config), "--out-dir", str(tmp_path / "out")]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2
    assert f"{key}: must be one of {', '.join(registry)}, got 'new-one'" in one_error_line(refused.output)
    monkeypatch.setitem(registry, "new-one", entry)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load((tmp_path / "out" / "exp.yaml").read_text())
    params = {p["name"]: p["value"] for p in manifest["spec"]["arguments"]["parameters"]}
    assert params[key] == "new-one"


def test_run_missing_config():
    result = CliRunner().invoke(cli, ["run", "no/such.yaml"])
    assert result.exit_code == 2
    assert "no/such.yaml" in one_error_line(result.output)


def test_step_process_does_not_import_tensorflow_or_mlflow_or_hera():
    code = (
        "import sys; from argofl.pipelines.cli import main\n"
        "try:\n    main(['step', 'train', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('tensorflow', 'mlflow', 'hera', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_run_commands_import_no_hera_before_the_fork_server_starts():
    """`argofl run` starts the fork server first thing, then compiles with hera: importing hera (~0.5 s)
    with the commands would delay the server, and init, by as much (a branch of this project did)."""
    code = "import sys, argofl.pipelines.commands; print('hera' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_run_progress_prints_one_line_per_finished_pod_like_watch():
    import io

    from argofl.pipelines.commands import Progress

    def pod(template, phase, inputs, outputs=None, message="", nid=None):
        return {
            "id": nid or f"{template}-{phase}",
            "type": "Pod",
            "templateName": template,
            "phase": phase,
            "inputs": {"parameters": [{"name": k, "value": v} for k, v in inputs.items()]},
            "outputs": {"parameters": [{"name": k, "value": v} for k, v in (outputs or {}).items()]},
            "message": message,
        }

    out = io.StringIO()
    progress = Progress(out)
    train = pod(
        "train",
        "Succeeded",
        {"round": "round 2", "clients": "round 2 / client 7"},
        {"loss": "0.5", "accuracy": "0.8"},
    )
    progress(train)
    progress(train)  # the same event again: printed once
    progress({**train, "phase": "Running", "id": "other"})  # not finished: nothing
    progress(
        pod("aggregate", "Failed", {"round": "round 2"}, message="only 1 valid update, min-clients is 2")
    )
    progress(pod("evaluate", "Succeeded", {"round": "round 3"}, {"loss": "0.25", "accuracy": "0.9"}))
    central = {
        "loss": "0.25",
        "accuracy": "0.9",
        "fed-loss": "0.3",
        "fed-accuracy": "0.8",
        "fed-clients": "4",
    }
    progress(pod("evaluate", "Succeeded", {"round": "round 4"}, central, nid="e4"))
    # no central test set: the round's loss/accuracy are its clients' evaluation of the incoming model
    federated = {**central, "loss": "0.3", "accuracy": "0.8"}
    progress(pod("evaluate", "Succeeded", {"round": "round 5"}, federated, nid="e5"))
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "round 2 / client 7 ✔ train loss 0.5000 acc 0.8000",
        "round 2 ✖ aggregate (only 1 valid update, min-clients is 2)",
        "round 3 ✔ test accuracy 0.9000 loss 0.2500",
        "round 4 ✔ test accuracy 0.9000 loss 0.2500",
        "round 5 ✔ fed accuracy of the incoming model 0.8000 loss 0.3000 (4 clients)",
    ]


def test_status_round_lines_say_when_the_figure_is_the_federated_evaluation():
    from argofl.pipelines.progress import RoundView

    federated = {
        "loss": "0.3",
        "accuracy": "0.8",
        "fed-loss": "0.3",
        "fed-accuracy": "0.8",
        "fed-clients": "4",
    }
    view = RoundView(round=1, phase="Succeeded", loss="0.3", accuracy="0.8", evaluation=federated)
    assert view.line().endswith("  fed accuracy of the incoming model 0.8000 loss 0.3000 (4 clients)")
    central = RoundView(
        round=1, phase="Succeeded", loss="0.3", accuracy="0.8", evaluation={"fed-clients": "4"}
    )
    assert central.line().endswith("  test accuracy 0.8000 loss 0.3000")


@pytest.mark.parametrize("central", [True, False], ids=["central", "federated"])
def test_run_summary_lines_say_when_the_figure_is_the_federated_evaluation(tmp_path, monkeypatch, central):
    """Without a central test set a round's accuracy is its clients' evaluation of the model that entered
    it: "round 1: test accuracy 0.1331" was the untrained model's, shown as the round's test accuracy."""
    import json

    import argofl.pipelines.commands as commands
    import argofl.pipelines.local as local
    from argofl.pipelines.local.engine import LocalRunResult

    run_dir = tmp_path / "runs" / "workflows" / "fedavg-fmnist-torch-abcde"

    def run_workflow(manifest, params, **kwargs):
        run_dir.mkdir(parents=True)
        (run_dir / "workflow.json").write_text(json.dumps(manifest))
        return LocalRunResult(run_dir.name, "uid", "Succeeded", {"phase": "Succeeded", "nodes": {}}, run_dir)

    row: dict[str, Any] = {"round": 1, "accuracy": 0.1331, "loss": 2.3, "examples": 4000, "clients": 4}
    if not central:
        row["federated"] = {"clients": 4.0, "examples": 4000.0, "accuracy": 0.1331, "loss": 2.3}
        row["evaluated_on"] = "clients' test splits"
    summary = {"rounds": [row], "final_accuracy": 0.1331, "final_loss": 2.3}
    monkeypatch.setattr(local, "run_workflow", run_workflow)
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)
    monkeypatch.setattr(commands, "save_run_summary", lambda *a: (run_dir / "summary.json", summary))
    config = ROOT / "configs" / "fedavg-fmnist-torch.yaml"
    result = CliRunner().invoke(cli, ["run", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    rows = [line.strip() for line in result.output.splitlines() if line.startswith("  ")]
    if central:
        assert rows == ["round 1: test accuracy 0.1331, loss 2.3000"]
    else:
        assert rows == [
            "round 1: fed accuracy of the incoming model 0.1331 (4 clients), loss 2.3000",
            "(no central test set: each round's clients evaluated the model that entered it; the final "
            "model is not evaluated)",
        ]


def test_compile_names_every_file_it_wrote(tmp_path):
    """README: `argofl compile` → argo/X.yaml + argo/templates/X.yaml (+ X-rounds.yaml for blocks of rounds,
    which must be applied before `argo submit`): the command names each one."""
    config = ROOT / "configs" / "fedavg-fmnist-torch-blocks.yaml"
    result = CliRunner().invoke(cli, ["compile", str(config), "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = sorted(p for p in tmp_path.rglob("*.yaml"))
    assert len(written) == 3
    for path in written:
        assert str(path) in result.output


@pytest.mark.parametrize(
    ("config", "args", "framework"),
    [
        ("fedavg-fmnist-keras.yaml", [], "tensorflow"),
        ("fedavg-fmnist-torch.yaml", [], "torch"),
        ("fedavg-fmnist-torch.yaml", ["-p", "framework=tensorflow"], "tensorflow"),
    ],
)
def test_argofl_run_starts_the_fork_server_for_the_run_s_framework_before_loading_the_config(
    config: str, args: list[str], framework: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server imports the framework while the config loads (~0.5 s of imports) and compiles: a Keras
    run's server imports TensorFlow, not torch, which its steps would each import again."""
    from argofl.pipelines import commands

    calls: list[str] = []
    real_load = commands.load_config
    monkeypatch.setattr(commands, "prestart_steps", lambda name: calls.append(f"server for {name}"))

    def load(path: Path) -> Any:
        calls.append("load")
        return real_load(path)

    monkeypatch.setattr(commands, "load_config", load)
    monkeypatch.setattr(commands, "_run_locally", lambda *a, **k: calls.append("run"))
    result = CliRunner().invoke(
        cli, ["run", str(ROOT / "configs" / config), *args, "--runs-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    assert calls == [f"server for {framework}", "load", "run"]


def test_a_config_the_server_cannot_read_a_framework_from_gets_torch(tmp_path: Path) -> None:
    from argofl.pipelines.commands import _framework_of_config

    cases = {
        "list.yaml": "- a\n",
        "bad.yaml": "a: [\n",
        "none.yaml": "rounds: 2\n",
        "num.yaml": "framework: 3\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert _framework_of_config(tmp_path / name) == "torch", name
    (tmp_path / "latin1.yaml").write_bytes(b"framework: \xe9\n")
    assert _framework_of_config(tmp_path / "latin1.yaml") == "torch"
    assert _framework_of_config(tmp_path / "missing.yaml") == "torch"


def test_a_local_run_starts_the_fork_server_for_its_framework_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workflow's ``framework`` parameter, a given value over the declared one (resume runs this)."""
    from argofl import api
    from argofl.pipelines import commands, local

    class NoRun(Exception):
        pass

    def run_workflow(*args: object, **kwargs: object) -> None:
        raise NoRun

    servers: list[str] = []
    monkeypatch.setattr(commands, "prestart_steps", servers.append)
    monkeypatch.setattr(local, "run_workflow", run_workflow)
    keras, torch = (
        api.to_manifest(api.build(ROOT / "configs" / f"fedavg-fmnist-{n}.yaml")) for n in ("keras", "torch")
    )
    for manifest, params in ((keras, {}), (torch, {}), (torch, {"framework": "tensorflow"})):
        with pytest.raises(NoRun):
            commands._run_locally(manifest, params, tmp_path / "workflows", 1)
    assert servers == ["tensorflow", "torch", "tensorflow"]
