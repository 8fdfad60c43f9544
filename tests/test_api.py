"""The Python API (``pipelines.api``): hera objects out, the same manifests as ``argofl compile``, local
runs like ``argofl run``, submission through hera's WorkflowsService, and the end-to-end example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hera.workflows import Workflow, WorkflowTemplate

from argofl import api
from argofl.pipelines.compile import manifest_for, template_manifest_for
from argofl.pipelines.config import load_config
from argofl.steps.errors import BadInputError
from tests.fake_argo import FakeArgo
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fedavg-fmnist-torch.yaml"
TINY = {"rounds": "1", "clients": "2", "min-clients": "2", "data-limit": "300", "local-epochs": "1"}


def test_build_gives_hera_objects_whose_manifest_is_what_compile_writes() -> None:
    workflow = api.build(CONFIG)
    assert isinstance(workflow, Workflow)
    assert not isinstance(workflow, WorkflowTemplate)
    assert api.to_manifest(workflow) == manifest_for(load_config(CONFIG))
    template = api.build(load_config(CONFIG), template=True)
    assert isinstance(template, WorkflowTemplate)
    assert api.to_manifest(template) == template_manifest_for(load_config(CONFIG))


def test_a_customised_workflow_is_saved_with_its_changes(tmp_path: Path) -> None:
    workflow = api.build(CONFIG)
    workflow.labels = {"team": "federated"}
    workflow.parallelism = 3
    path = api.save(workflow, tmp_path / "out" / "x.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved["metadata"]["labels"] == {"team": "federated"}
    assert saved["spec"]["parallelism"] == 3
    assert saved["spec"]["templates"] == manifest_for(load_config(CONFIG))["spec"]["templates"]


def test_compile_config_writes_workflow_and_template(tmp_path: Path) -> None:
    path = api.compile_config(CONFIG, tmp_path)
    assert path == tmp_path / "fedavg-fmnist-torch.yaml"
    assert yaml.safe_load(path.read_text()) == manifest_for(load_config(CONFIG))
    assert (tmp_path / "templates" / "fedavg-fmnist-torch.yaml").is_file()


def test_bad_arguments_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(api.ApiError, match=r"expected a hera Workflow.*got int"):
        api.to_manifest(42)  # type: ignore[arg-type]
    with pytest.raises(api.ApiError, match="unknown workflow parameter 'roundz'"):
        api.run_local(CONFIG, {"roundz": "2"})
    monkeypatch.delenv("ARGO_SERVER", raising=False)
    with pytest.raises(BadInputError, match="no Argo server given"):
        api.submit(CONFIG)


def test_run_local_refuses_an_mlflow_uri_its_steps_cannot_use_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad scheme or a server that does not answer failed the run in init (the latter after ~25 s)."""
    from argofl.pipelines.local import forkserver

    def no_start(*args: object, **kwargs: object) -> None:
        raise AssertionError("a step server was started")

    monkeypatch.setattr(forkserver, "prestart_steps", no_start)
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BadInputError) as info:
        api.run_local(CONFIG, runs_dir=tmp_path / "runs", mlflow_uri=closed)
    assert str(info.value) == (
        f"MLflow server at {closed} cannot be reached: Connection refused; nothing was started"
    )
    with pytest.raises(BadInputError, match=r"^unsupported MLflow tracking URI 'gs://b/mlflow': use sqlite"):
        api.run_local(api.build(CONFIG), {"mlflow-uri": "gs://b/mlflow"}, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # no runs directory either


@pytest.mark.parametrize(
    ("config", "params", "framework"),
    [
        ("fedavg-fmnist-keras.yaml", {}, "tensorflow"),
        ("fedavg-fmnist-torch.yaml", {}, "torch"),
        ("fedavg-fmnist-torch.yaml", {"framework": "tensorflow"}, "tensorflow"),
    ],
)
def test_run_local_starts_the_fork_server_for_the_run_s_framework(
    config: str, params: dict[str, str], framework: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Keras run's server imports TensorFlow, not torch; a given ``framework`` wins over the config's."""
    from argofl.pipelines.local import forkserver

    class Started(Exception):
        pass

    def prestart(env: object, name: str) -> None:
        raise Started(name)

    monkeypatch.setattr(forkserver, "prestart_steps", prestart)
    with pytest.raises(Started) as started:
        api.run_local(ROOT / "configs" / config, params, runs_dir=tmp_path / "runs")
    assert started.value.args == (framework,)


def test_submit_sends_the_customised_workflow_through_hera(argo: FakeArgo) -> None:
    workflow = api.build(CONFIG)
    workflow.labels = {"team": "federated"}
    name = api.submit(workflow, {"rounds": "20"}, host=argo.url, token="tok", namespace="ml")
    assert name == "fedavg-fmnist-torch-x0001"
    [request] = argo.posts()
    assert request.path == "/api/v1/workflows/ml"
    assert request.headers["Authorization"] == "Bearer tok"
    sent = request.body["workflow"]
    assert sent["metadata"]["labels"] == {"team": "federated"}
    params = {p["name"]: p.get("value") for p in sent["spec"]["arguments"]["parameters"]}
    assert params["rounds"] == "20"


def test_the_run_summary_counts_are_ints(tmp_path: Path) -> None:
    """summary.json had ``clients`` 2.0 and ``examples`` 10000.0 beside an int ``train_examples``."""
    from argofl.pipelines.parameters import set_parameters
    from argofl.pipelines.run_summary import save_run_summary
    from argofl.steps.runinfo import RunLayout, write_json
    from argofl.steps.store import FileStore

    run_dir = tmp_path / "workflows" / "fedavg-fmnist-torch-abcde"
    run_dir.mkdir(parents=True)
    manifest = manifest_for(load_config(CONFIG))
    store = FileStore(tmp_path / "store")
    set_parameters(manifest, {"store": (tmp_path / "store").as_uri(), "experiment": "x"})
    (run_dir / "workflow.json").write_text(json.dumps(manifest))
    fed = {"clients": 4.0, "examples": 10000.0, "accuracy": 0.5, "loss": 1.5}
    row = {"round": 1, "accuracy": 0.5, "loss": 1.5, "examples": 1e4, "clients": 2.0, "train_examples": 600}
    write_json(store, RunLayout(f"x/{run_dir.name}").summary_key, {"rounds": [{**row, "federated": fed}]})
    _, summary = save_run_summary(run_dir, 1.0)
    saved = json.loads((run_dir / "summary.json").read_text())
    for doc in (summary, saved):
        (got,) = doc["rounds"]
        counts = [got["clients"], got["examples"], got["train_examples"], *map(got["federated"].get, fed)]
        assert counts[:5] == [2, 10000, 600, 4, 10000]
        assert [type(c) for c in counts] == [int] * 5 + [float] * 2


@pytest.mark.slow
def test_run_local_runs_a_workflow_like_argofl_run(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative runs_dir: resolved against the caller's directory
    result = api.run_local(api.build(CONFIG), TINY, runs_dir="runs")
    assert result.phase == "Succeeded", json.dumps(result.status.get("message"))
    assert result.run_dir == tmp_path / "runs" / "workflows" / result.name
    globals_ = list((tmp_path / "runs" / "store").glob("*/*/round-0001/global.safetensors"))
    assert len(globals_) == 1
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    summary = json.loads((result.run_dir / "summary.json").read_text())  # README: runs/workflows/<run>/
    assert summary["run"] == result.name
    assert [row["round"] for row in summary["rounds"]] == [1]
    assert summary["rounds"][0]["global"] == globals_[0].as_uri()
    assert summary["store_uri"] == globals_[0].parents[1].as_uri()
    assert summary["local_wall_time_s"] > 0
    assert summary["mlflow_run_id"]


@pytest.mark.slow
def test_the_example_script_runs_end_to_end(fmnist_dir: Path, tmp_path: Path, argo: FakeArgo) -> None:
    env = {**os.environ, "ARGO_SERVER": argo.url, "ARGO_TOKEN": "tok", "ARGO_NAMESPACE": "argofl"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), "--submit"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Succeeded" in done.stdout
    manifest = yaml.safe_load((tmp_path / "argo-out" / "fedavg-fmnist-torch.yaml").read_text())
    assert manifest["metadata"]["labels"]["team"] == "federated"
    [request] = argo.posts()
    assert request.body["workflow"]["spec"]["parallelism"] == 4


def test_import_argofl_is_cheap_and_exposes_the_api() -> None:
    code = (
        "import sys, argofl; names = sorted(argofl.api.__all__); "
        "heavy = sorted(m for m in ('hera', 'torch', 'tensorflow', 'mlflow') if m in sys.modules); "
        "print(names == sorted(n for n in dir(argofl) if n != 'api'), "
        "argofl.build is argofl.api.build, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "True", "[]"]
