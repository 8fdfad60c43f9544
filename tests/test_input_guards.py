"""Bad input is refused with one clear line naming it: ``-p`` in either spelling, duplicate YAML
keys, oversized configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.pipelines.compile import compile_config
from argofl.pipelines.config import MAX_CONFIG_BYTES, ConfigError, load_config

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
