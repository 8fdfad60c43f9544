"""``--secrets FILE``: ``secretKeyRef``/``configMapKeyRef`` resolve from Kubernetes Secret/ConfigMap
manifests in a local file, before the environment; a bad file or a missing key is one line."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.cli import cli

SCRIPT = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('USER_KEY', 'MODE', 'PLAIN')}))"


def _workflow(tmp_path: Path, env: list[dict[str, Any]]) -> Path:
    manifest = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "refs-"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {
                    "name": "main",
                    "script": {
                        "image": "python:3.11",
                        "command": [sys.executable],
                        "source": SCRIPT,
                        "env": env,
                    },
                }
            ],
        },
    }
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


ENV = [
    {"name": "USER_KEY", "valueFrom": {"secretKeyRef": {"name": "argofl-s3", "key": "accesskey"}}},
    {"name": "PLAIN", "valueFrom": {"secretKeyRef": {"name": "argofl-s3", "key": "secretkey"}}},
    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
]


def _secrets(tmp_path: Path, *docs: dict[str, Any]) -> Path:
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "argofl-s3"},
    "data": {"accesskey": base64.b64encode(b"from-the-file").decode()},
    "stringData": {"secretkey": "plain-text"},
}
CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "settings"},
    "data": {"mode": "fast"},
}


def _run(tmp_path: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Any:
    return CliRunner().invoke(
        cli, ["local", "run", *args, "--runs-dir", str(tmp_path / "runs"), "--json"], env=env
    )


def test_key_refs_resolve_from_the_secrets_file_before_the_environment(tmp_path: Path) -> None:
    secrets = _secrets(tmp_path, SECRET, CONFIG_MAP)
    result = _run(
        tmp_path,
        str(_workflow(tmp_path, ENV)),
        "--secrets",
        str(secrets),
        env={"USER_KEY": "from-the-environment", "MODE": "slow"},
    )
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    [node] = [n for n in status["nodes"].values() if n["type"] == "Pod"]
    assert json.loads(node["outputs"]["result"]) == {
        "USER_KEY": "from-the-file",
        "MODE": "fast",
        "PLAIN": "plain-text",
    }


def test_without_a_file_the_environment_still_resolves_them(tmp_path: Path) -> None:
    env = {"USER_KEY": "u", "MODE": "m", "PLAIN": "p"}
    result = _run(tmp_path, str(_workflow(tmp_path, ENV)), env=env)
    assert result.exit_code == 0, result.output
    [node] = [n for n in json.loads(result.output)["nodes"].values() if n["type"] == "Pod"]
    assert json.loads(node["outputs"]["result"]) == {"USER_KEY": "u", "MODE": "m", "PLAIN": "p"}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"kind": "Deployment", "metadata": {"name": "x"}},
            "document 1 is Deployment; expected kind Secret or ConfigMap",
        ),
        ({"kind": "Secret", "metadata": {}}, "a Secret (document 1) has no metadata.name"),
        (
            {"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "not base64!"}},
            "Secret s: data.k is not base64 of UTF-8 text (use stringData for plain values)",
        ),
    ],
)
def test_a_bad_secrets_file_is_one_line_and_runs_nothing(
    tmp_path: Path, doc: dict[str, Any], expected: str
) -> None:
    result = _run(tmp_path, str(_workflow(tmp_path, ENV)), "--secrets", str(_secrets(tmp_path, doc)))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.output
    assert expected in errors[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_secrets_file_that_is_not_utf8_text_is_one_line_and_runs_nothing(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.yaml"
    secrets.write_bytes(b"\x00\xff\xfe binary")
    result = _run(tmp_path, str(_workflow(tmp_path, ENV)), "--secrets", str(secrets))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.output
    assert f"--secrets {secrets}: cannot read it as YAML: 'utf-8' codec can't decode byte 0xff" in errors[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_key_neither_in_the_file_nor_the_environment_is_one_line(tmp_path: Path) -> None:
    secrets = _secrets(tmp_path, CONFIG_MAP)
    workflow = _workflow(tmp_path, ENV[:1])
    result = _run(tmp_path, str(workflow), "--secrets", str(secrets), env={"USER_KEY": None})
    assert result.exit_code == 1  # the pod errors, as a pod whose Secret is missing does
    expected = (
        "secretKeyRef argofl-s3/accesskey is neither in a --secrets file nor set as the environment "
        "variable USER_KEY"
    )
    assert expected in result.output, result.output


def test_argofl_run_reads_an_s3_summary_with_the_steps_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``argofl run`` reads the run's summary from S3 itself: with the flagship's ``s3-endpoint`` and the
    credentials its steps' ``secretKeyRef`` found in ``--secrets``, not only an exported ARGOFL_S3_*."""
    from argofl.pipelines.compile import manifest_for
    from argofl.pipelines.config import load_config
    from argofl.pipelines.run_summary import steps_s3_env

    for name in ("ARGOFL_S3_ENDPOINT", "ARGOFL_S3_ACCESS_KEY", "ARGOFL_S3_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    workflow = manifest_for(load_config(Path(__file__).parents[1] / "configs/fedavg-fmnist-torch.yaml"))
    secret = {"accesskey": "from-the-file", "secretkey": "also-from-the-file"}
    env = steps_s3_env(workflow, {"s3-endpoint": "http://172.17.0.1:9000"}, {("Secret", "argofl-s3"): secret})
    assert {k: v for k, v in env.items() if k.startswith("ARGOFL_S3_")} == {
        "ARGOFL_S3_ENDPOINT": "http://172.17.0.1:9000",
        "ARGOFL_S3_ACCESS_KEY": "from-the-file",
        "ARGOFL_S3_SECRET_KEY": "also-from-the-file",
    }
    # without a --secrets file the environment stays as it is
    monkeypatch.setenv("ARGOFL_S3_ACCESS_KEY", "exported")
    assert steps_s3_env(workflow, {}, None)["ARGOFL_S3_ACCESS_KEY"] == "exported"
