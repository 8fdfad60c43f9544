"""Bad input is refused with one clear line naming it: ``-p`` in either spelling, duplicate YAML
keys, oversized configs, MLflow tracking URIs no step could use."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.pipelines.compile import compile_config
from argofl.pipelines.config import MAX_CONFIG_BYTES, ConfigError, load_config
from argofl.pipelines.local_params import tracking_server_problem
from argofl.steps.tracking import tracking_uri_problem
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fedavg-fmnist-torch.yaml"  # clients: 10, min_clients: 8


def _run(tmp_path: Path, *params: str) -> str:
    args = ["run", str(CONFIG), "--runs-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(cli, [*args, *(a for p in params for a in ("-p", p))])
    assert result.exit_code == 2, result.output
    return result.output


def test_run_takes_the_configs_spelling_of_a_setting(tmp_path):
    # the given value is checked (5 > 4), not dropped in favour of the config's 8
    output = _run(tmp_path, "min_clients=5", "clients=4")
    assert "min_clients: must be ≤ clients (4), got 5" in output
    assert "got 8" not in output


def test_run_refuses_an_unknown_spelling_naming_it_before_checking_values(tmp_path):
    output = _run(tmp_path, "min_clientz=2", "clients=4")
    assert "unknown workflow parameter 'min_clientz'; did you mean 'min-clients'?" in output
    assert "got 8" not in output


def test_both_spellings_with_different_values_are_refused(tmp_path):
    output = _run(tmp_path, "min_clients=2", "min-clients=3")
    assert "min-clients is given twice, as '2' and '3'" in output


def test_a_duplicate_yaml_key_is_refused_naming_key_and_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("experiment: dup\nrounds: 2\nclients: 4\nrounds: 3\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'rounds' on line 4 \(first on line 2\)"):
        load_config(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("experiment: dup\ncluster:\n  cpu: '1'\n  cpu: '2'\n")
    with pytest.raises(ConfigError, match="duplicate key 'cpu' on line 4"):
        load_config(nested)


def test_a_50_mb_config_is_refused_by_its_size_without_parsing(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    with path.open("w") as out:
        out.write("experiment: big\nnotes: |\n")
        line = "  " + "x" * 1000 + "\n"
        for _ in range(50 * 1024):
            out.write(line)
    assert path.stat().st_size > 50 * 10**6

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the config was parsed")

    monkeypatch.setattr(yaml, "load", no_parsing)
    result = CliRunner().invoke(cli, ["compile", str(path), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    error = result.output.strip().splitlines()[-1]
    assert f"more than the {MAX_CONFIG_BYTES} a config may have" in error
    assert error.endswith("not parsed")


@pytest.mark.parametrize(
    ("param", "message"),
    [
        (
            "roundz=2",
            "error: unknown workflow parameter 'roundz'; did you mean 'rounds'? valid: experiment, ",
        ),
        ("rounds=0", "error: parameters: rounds: must be ≥ 1, got 0; nothing was started"),
        (
            "clients=100000000000",
            "error: parameters: clients: must be ≤ 1000000 (distribute samples each round from every "
            "client), got 100000000000; nothing was started",
        ),
        (  # a run on IID clients
            "alpha=0.3",
            "error: parameters: alpha: 0.3 is the concentration of partition dirichlet; partition iid does "
            "not use it (remove it or set partition: dirichlet); nothing was started",
        ),
        # these three started the run, whose init failed (start-round=0: with no reason in its message)
        ("start-round=0", "error: parameters: start-round must be in 1..5 (rounds), got 0; nothing was"),
        ("start-round=x", "error: parameters: start-round: expected int, got 'x'; nothing was started"),
        (
            "start-round=2",
            "error: parameters: start-round 2 needs resume-from: the <experiment>/<run> to continue; nothing",
        ),
    ],
)
def test_run_submit_and_local_run_refuse_a_bad_parameter_with_the_same_line(tmp_path, param, message):
    workflow = compile_config(CONFIG, tmp_path / "argo")
    runs = str(tmp_path / "runs")
    commands = {
        "run": ["run", str(CONFIG), "--runs-dir", runs],
        # refused before the (unreachable) server is contacted
        "submit": ["submit", str(CONFIG), "--host", "http://127.0.0.1:9"],
        "local run": ["local", "run", str(workflow), "--runs-dir", runs],
    }
    lines = {}
    for name, args in commands.items():
        result = CliRunner().invoke(cli, [*args, "-p", param])
        assert result.exit_code == 2, (name, result.output)
        lines[name] = result.output.strip().splitlines()
    assert lines["run"] == lines["submit"] == lines["local run"]
    [line] = lines["run"]
    assert line.startswith(message)
    assert line.endswith("nothing was started")
    assert not (tmp_path / "runs" / "workflows").exists()


ACCEPTED_URIS = (
    "sqlite:///PATH, http(s)://HOST[:PORT], postgresql://…, mysql://…, mssql://…, databricks://PROFILE "
    "or file:///PATH"
)


@pytest.mark.parametrize("uri", ["ftp://host/x", "gs://bucket/mlflow", "sqlte:///x.db", "uc:profile"])
def test_a_tracking_uri_mlflow_has_no_store_for_is_one_line_naming_the_accepted_ones(uri):
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    assert tracking_uri_problem(uri) == f"unsupported MLflow tracking URI {uri!r}: use {ACCEPTED_URIS}"
    with pytest.raises(Exception, match=r"unsupported URI|is not supported"):  # MLflow's verdict, in init
        _tracking_store_registry.get_store(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///x.db",
        "sqlite:////abs/x.db",
        "http://mlflow:5000",
        "HTTPS://mlflow.example/prefix",
        "postgresql+psycopg2://user@db/mlflow",
        "mysql://db/mlflow",
        "mssql://db/mlflow",
        "databricks",
        "databricks://profile",
        "file:///abs/mlruns",
        "mlruns",
    ],
)
def test_every_tracking_uri_mlflow_has_a_store_for_is_accepted(uri, monkeypatch):
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # file stores: MLflow 3 opens them only so
    assert tracking_uri_problem(uri) is None
    assert _tracking_store_registry.get_store_builder(uri)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("sqlite://x.db", "MLflow tracking URI 'sqlite://x.db' names no database file: use sqlite:///"),
        ("sqlite://", "MLflow tracking URI 'sqlite://' names no database file: use sqlite:///"),
        ("http:///mlflow", "MLflow tracking URI 'http:///mlflow' names no host: use http://HOST[:PORT]"),
        (
            "http://localhost:abc",
            "MLflow tracking URI 'http://localhost:abc' has no valid port (Port could not be cast to integer "
            "value as 'abc'): use http://HOST[:PORT]",
        ),
        ("https://h:70000", "MLflow tracking URI 'https://h:70000' has no valid port (Port out of range"),
        ("http://[::1", "MLflow tracking URI 'http://[::1' is not a valid URI (Invalid IPv6 URL): use "),
    ],
)
def test_a_tracking_uri_naming_no_database_host_or_port_is_refused(uri, problem):
    assert (tracking_uri_problem(uri) or "").startswith(problem)


@pytest.mark.parametrize("uri", ["mlruns", "file:///abs/mlruns"])
def test_a_file_store_mlflow_refuses_is_refused_unless_mlflow_is_told_to_allow_it(uri, tmp_path, monkeypatch):
    """MLflow 3 opens a file store only with MLFLOW_ALLOW_FILE_STORE=true: init failed on it."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert tracking_uri_problem(uri) == (
        f"MLflow tracking URI {uri!r} is a file store, which MLflow 3 refuses unless "
        "MLFLOW_ALLOW_FILE_STORE=true is exported: use sqlite:///PATH.db"
    )
    with pytest.raises(mlflow.exceptions.MlflowException, match="MLFLOW_ALLOW_FILE_STORE"):
        MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri()).create_experiment("refused")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert tracking_uri_problem(uri) is None


def test_databricks_stays_the_workspace_not_a_local_path():
    """``--mlflow-uri databricks`` (the default profile's workspace) was made ``/cwd/databricks``."""
    from argofl.pipelines.local_params import absolute_tracking_uri

    assert absolute_tracking_uri("databricks") == "databricks"
    assert absolute_tracking_uri("mlruns") == str(Path("mlruns").resolve())


def test_an_mlflow_server_that_does_not_answer_is_named_with_what_failed():
    """Init found out after its retries (~25 s), in its own log; the probe takes at most two timeouts."""
    closed = f"http://127.0.0.1:{free_port()}"
    assert (
        tracking_server_problem(closed) == f"MLflow server at {closed} cannot be reached: Connection refused"
    )
    assert tracking_server_problem("http://no-such-host.invalid:5000") == (
        "MLflow server at http://no-such-host.invalid:5000 cannot be reached: "
        "cannot resolve host no-such-host.invalid (Name or service not known)"
    )
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        problem = tracking_server_problem(uri)
        took = time.monotonic() - started
    assert problem == f"MLflow server at {uri} cannot be reached: no answer within 1.5 s"
    assert 1.4 < took < 3.5
    assert tracking_server_problem("sqlite:///x.db") is None  # no server to ask


def _hanging_lookups(monkeypatch: pytest.MonkeyPatch, hangs: str) -> threading.Event:
    """``socket.getaddrinfo`` hangs for host ``hangs`` (a resolver that never answers) until the returned
    event is set, then fails; other names resolve as usual."""
    release = threading.Event()
    lookup = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        if host != hangs:
            return lookup(host, *args, **kwargs)  # type: ignore[arg-type]
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return release


def test_a_host_name_that_never_resolves_is_named_within_the_probe_s_budget(monkeypatch):
    """The lookup had no time limit: a hung resolver held ``argofl run`` well past the probe's 2 x 1.5 s."""
    release = _hanging_lookups(monkeypatch, "mlflow.hangs.example")
    before = set(threading.enumerate())
    started = time.monotonic()
    problem = tracking_server_problem("http://mlflow.hangs.example:5000", timeout=0.2)
    took = time.monotonic() - started
    left = [thread for thread in threading.enumerate() if thread not in before]
    release.set()
    assert problem == (
        "MLflow server at http://mlflow.hangs.example:5000 cannot be reached: "
        "cannot resolve host mlflow.hangs.example within 0.2 s"
    )
    assert took < 1
    assert left  # the thread still waiting on the lookup, a daemon: it cannot hold up exit
    assert all(thread.daemon for thread in left)


def test_a_host_name_that_resolves_slowly_still_leaves_the_server_its_time(monkeypatch):
    """The lookup has ``timeout`` s, the connection the rest of twice that (urllib looks it up again)."""
    lookup = socket.getaddrinfo

    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(0.3)
        return lookup(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    closed = f"http://localhost:{free_port()}"
    problem = tracking_server_problem(closed, timeout=0.5)
    assert problem == f"MLflow server at {closed} cannot be reached: Connection refused"


def test_through_a_proxy_the_host_name_is_the_proxy_s_to_resolve(monkeypatch):
    """Only the proxy may know the server's name: the probe asks the proxy, which here is not running."""
    release = _hanging_lookups(monkeypatch, "mlflow.behind.proxy")
    proxy = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    problem = tracking_server_problem("http://mlflow.behind.proxy:5000", timeout=0.5)
    release.set()
    assert problem == "MLflow server at http://mlflow.behind.proxy:5000 cannot be reached: Connection refused"


def test_a_running_mlflow_server_answers_the_probe_at_once(mlflow_server):
    started = time.monotonic()
    assert tracking_server_problem(mlflow_server.uri) is None
    assert tracking_server_problem(mlflow_server.uri + "/") is None
    assert time.monotonic() - started < 1
