"""A strategy's options are declared once, with it in ``steps/strategies.py``: a new strategy with a new
option needs no other module for its option to be a config key, a ``-p`` workflow parameter, a checked
step setting and one of the strategy's arguments."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from argofl.steps.settings import FIELDS, Settings
from argofl.steps.strategies import (
    SERVER_LR,
    SERVER_MOMENTUM,
    STRATEGIES,
    FedAvg,
    Option,
    StrategyInfo,
    strategy_options,
)

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""Strategy fedx and its new option fedx_rho, registered as an entry in steps/strategies.py would be."""

import sys

from argofl.steps import checks
from argofl.steps.strategies import STRATEGIES, FedAvg, Option, StrategyInfo

FEDX_RHO = Option("fedx_rho", float, 0.5, "fedx: the test strategy's rho", checks.open_unit)


class FedX(FedAvg):
    name = "fedx"

    def __init__(self, *, fedx_rho: float) -> None:
        self.rho = fedx_rho


STRATEGIES["fedx"] = StrategyInfo(
    "FedAvg that carries a rho (test only)", lambda o, _: FedX(fedx_rho=o["fedx_rho"]), (FEDX_RHO,)
)

if __name__ == "__main__":
    from argofl.pipelines.cli import main

    sys.exit(main())
'''

PROBE = '''
"""A workflow's path through argofl: ``-p`` overrides checked as ``run`` and ``submit`` check them, the
init step's ``--param`` arguments filled in as Argo fills them, parsed as ``argofl step init`` parses
them, and the strategy built from the settings as the aggregate step builds it."""

import json
import re
import sys
from pathlib import Path

import yaml

import fedx_plugin  # registers fedx before argofl.steps.settings is imported
from argofl.pipelines.parameters import check_overrides, parameters_of
from argofl.steps.settings import Settings
from argofl.steps.strategies import get_strategy

manifest = yaml.safe_load(Path(sys.argv[1]).read_text())
given = check_overrides(manifest, dict(arg.split("=", 1) for arg in sys.argv[2:]))
values = {**parameters_of(manifest), **given}
args = next(t for t in manifest["spec"]["templates"] if t["name"] == "init")["container"]["args"]
pairs = [args[i + 1] for i, arg in enumerate(args) if arg == "--param"]
filled = [re.sub(r"\\{\\{workflow\\.parameters\\.([\\w-]+)\\}\\}", lambda m: values[m[1]], p) for p in pairs]
params = dict(p.split("=", 1) for p in filled)
settings = Settings.from_mapping(params, where="workflow parameters", strings=True)
strategy = get_strategy(settings.strategy, noise_seed=None, **settings.server_options())
rho = settings.option(fedx_plugin.FEDX_RHO)
print(json.dumps({"given": given, "rho": rho, "strategy_rho": strategy.rho}))
'''


def _python(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python on ``args`` in a fresh interpreter that finds the plugin (the registry edit)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _argofl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _python(tmp_path, str(tmp_path / "fedx_plugin.py"), *args)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def _init_params(manifest: dict[str, Any], values: dict[str, str]) -> list[str]:
    """The init step's ``--param NAME=VALUE`` arguments, with the workflow parameters ``values`` filled in."""
    init = next(t for t in manifest["spec"]["templates"] if t["name"] == "init")
    args = init["container"]["args"]
    pairs = [args[i + 1] for i, arg in enumerate(args) if arg == "--param"]
    return [re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda m: values[m[1]], p) for p in pairs]


def test_a_new_strategy_option_is_a_setting_with_no_other_module_edited(tmp_path: Path) -> None:
    (tmp_path / "fedx_plugin.py").write_text(PLUGIN)
    (tmp_path / "probe.py").write_text(PROBE)
    config = tmp_path / "fedx-exp.yaml"
    config.write_text("experiment: fedx-exp\nstrategy: fedx\nfedx_rho: 0.25\nclients: 4\n")

    # the config accepts the option under its section (the settings), and compiles to a parameter
    out = tmp_path / "argo"
    done = _argofl(tmp_path, "compile", str(config), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load((out / "fedx-exp.yaml").read_text())
    declared = {p["name"]: p["value"] for p in manifest["spec"]["arguments"]["parameters"]}
    assert declared["fedx-rho"] == "0.25"
    names = list(declared)
    assert names.index("fedx-rho") > names.index("dp-delta")  # after the shipped options
    as_declared = {n: "{{workflow.parameters." + n + "}}" for n in names}
    assert "fedx-rho={{workflow.parameters.fedx-rho}}" in _init_params(manifest, as_declared)

    # a bad value in the config: one line naming it
    bad = tmp_path / "fedx-bad.yaml"
    bad.write_text("experiment: fedx-bad\nstrategy: fedx\nfedx_rho: 1.5\n")
    line = _one_line_error(_argofl(tmp_path, "compile", str(bad), "--out-dir", str(out)))
    assert "fedx_rho: must be in (0, 1), got 1.5" in line
    assert str(bad) in line

    # -p overrides it (either spelling), and refuses a bad value before anything starts
    runs = tmp_path / "runs"
    for command in (
        ["run", str(config), "-p", "fedx_rho=0"],
        ["local", "run", str(out / "fedx-exp.yaml"), "-p", "fedx-rho=0"],
    ):
        line = _one_line_error(_argofl(tmp_path, *command, "--runs-dir", str(runs)))
        assert "fedx_rho: must be in (0, 1), got 0" in line, command
        assert "nothing was started" in line, command

    # the init step parses and checks it like any setting, and the strategy receives it
    done = _python(tmp_path, str(tmp_path / "probe.py"), str(out / "fedx-exp.yaml"), "fedx_rho=0.75")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"given": {"fedx-rho": "0.75"}, "rho": 0.75, "strategy_rho": 0.75}
    step_args = ["step", "init", "--run-key", "fedx-exp/run", "--workflow-name", "w"]
    for value, problem in (("1.5", "must be in (0, 1), got 1.5"), ("one", "expected float, got 'one'")):
        pairs = _init_params(manifest, {**declared, "fedx-rho": value})
        line = _one_line_error(_argofl(tmp_path, *step_args, *(a for p in pairs for a in ("--param", p))))
        assert f"workflow parameters: fedx_rho: {problem}" in line


def test_options_two_strategies_share_are_declared_once_with_one_default() -> None:
    assert STRATEGIES["fedavgm"].options == (SERVER_LR, SERVER_MOMENTUM)
    assert STRATEGIES["fedadam"].options[:2] == (SERVER_LR, SERVER_MOMENTUM)
    options = strategy_options()
    assert list(options).count("server_lr") == 1
    assert options["server_lr"] is SERVER_LR
    # each option is a setting, in the registry's order, right after `strategy` (max_client_examples, an
    # older setting, keeps its place among them so that compiled workflows do not change)
    names = [f.name for f in FIELDS]
    after = names[names.index("strategy") + 1 : names.index("attack")]
    assert [n for n in after if n != "max_client_examples"] == list(options)
    for option in options.values():
        field = next(f for f in FIELDS if f.name == option.name)
        assert (field.type, field.default, field.metadata["help"]) == (
            option.type.__name__,
            option.default,
            option.help,
        )


def test_settings_read_an_option_typed_as_declared() -> None:
    s = Settings.from_mapping({"experiment": "x", "strategy": "fedavgm", "server_lr": 2})
    lr: float = s.option(SERVER_LR)
    assert (lr, type(lr)) == (2.0, float)
    assert s.server_options() == {"server_lr": 2.0, "server_momentum": 0.9}


def test_two_options_of_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    other = Option("server_lr", float, 0.1, "another server_lr")
    monkeypatch.setitem(STRATEGIES, "fedy", StrategyInfo("two server_lr", lambda o, _: FedAvg(), (other,)))
    with pytest.raises(TypeError, match="strategy fedy: option 'server_lr' is declared twice"):
        strategy_options()


def test_an_option_registered_after_settings_were_made_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    late = Option("late_x", int, 1, "registered too late")
    monkeypatch.setitem(STRATEGIES, "late", StrategyInfo("late", lambda o, _: FedAvg(), (late,)))
    with pytest.raises(TypeError, match=r"strategy late: option\(s\) late_x registered after"):
        Settings(experiment="x", strategy="late")


FOREIGN = (
    "prox_mu: 0.1 is an option of strategy fedprox; strategy fedavg does not use it "
    "(remove it or set strategy: fedprox)"
)


def test_an_option_of_another_strategy_given_as_a_parameter_is_refused_before_anything_starts() -> None:
    """`-p prox-mu=0.1` on a FedAvg workflow was accepted: the run trained plain FedAvg."""
    from argofl.pipelines.compile import manifest_for
    from argofl.pipelines.config import load_config
    from argofl.pipelines.parameters import ParameterError, check_overrides

    fedavg = manifest_for(load_config(ROOT / "configs" / "fedavg-fmnist-torch.yaml"))
    for spelling in ("prox-mu", "prox_mu"):
        with pytest.raises(ParameterError) as info:
            check_overrides(fedavg, {spelling: "0.1"})
        assert str(info.value) == f"parameters: {FOREIGN}; nothing was started"
    assert check_overrides(fedavg, {"prox-mu": "0.01"}) == {"prox-mu": "0.01"}  # its default: no change
    both = {"strategy": "fedprox", "prox-mu": "0.1"}
    assert check_overrides(fedavg, both) == both
    # switching a workflow's strategy or partition (the classic A/B run) leaves its own options unused:
    # not refused; the user's own -p of an option the switched-to strategy ignores is
    fedavgm = manifest_for(load_config(ROOT / "configs" / "fedavgm-fmnist-torch-noniid.yaml"))
    for switched in (
        {"strategy": "fedavg"},
        {"partition": "iid"},
        {"strategy": "fedavg", "partition": "iid"},
    ):
        assert check_overrides(fedavgm, switched) == switched
    with pytest.raises(ParameterError, match=r"^parameters: server_momentum: 0\.7 is an option of strategy "):
        check_overrides(fedavgm, {"strategy": "fedavg", "server-momentum": "0.7"})
    with pytest.raises(ParameterError, match=r"^parameters: alpha: 0\.2 is the concentration of partition "):
        check_overrides(fedavgm, {"partition": "iid", "alpha": "0.2"})


def test_a_valid_workflow_with_an_option_away_from_its_default_takes_an_unrelated_parameter() -> None:
    """A krum workflow with krum_f=0 and 3 clients was refused for `-p rounds=2`: the options the user did
    not give were reset to their defaults and validated, and krum_f=1 needs 5 clients."""
    from argofl.pipelines.kinds import get_kind
    from argofl.steps.settings import Settings, SettingsError

    settings = {"experiment": "x", "strategy": "krum", "krum_f": 0, "min_clients": 3, "clients": 3}
    values = Settings.from_mapping(settings).to_params()
    kind = get_kind("fedavg", where="x")
    kind.check_parameters({**values, "rounds": "2"}, where="parameters", given={"rounds"})
    with pytest.raises(SettingsError, match=r"^parameters: prox_mu: 0\.1 is an option of strategy "):
        kind.check_parameters({**values, "prox-mu": "0.1"}, where="parameters", given={"prox-mu"})


def test_the_init_step_warns_of_an_option_its_strategy_does_not_use_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In a pod, init cannot tell `argo submit -p strategy=fedavg` on a FedAvgM workflow (an A/B run, its
    server_momentum left as compiled) from a mistaken `-p prox-mu=0.1`: it names the option in a warning
    and runs (refusing broke the A/B run on a cluster); the commands refuse what the user gave."""
    from click.testing import CliRunner

    from argofl.steps.cli import step as step_cli

    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = {**Settings(experiment="x", data_limit=100).to_params(), "prox-mu": "0.1"}
    args = ["init", "--run-key", "x/run", "--workflow-name", "w"]
    result = CliRunner().invoke(
        step_cli, [*args, *(a for k, v in params.items() for a in ("--param", f"{k}={v}"))]
    )
    assert result.exit_code == 0, result.output
    assert f"workflow parameters: {FOREIGN}" in caplog.text
    assert (tmp_path / "store" / "x" / "run" / "run.json").exists()
