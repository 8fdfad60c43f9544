"""The registry of experiment kinds: configs, builders, parameters and progress lines come from it."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hera.workflows import Container, Steps, Workflow

from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import ConfigError, config_from_mapping, load_config
from argofl.pipelines.experiment import ExperimentConfig
from argofl.pipelines.kinds import KINDS, ExperimentKind, display_of, kind_of, manifest_kind
from argofl.pipelines.parameters import ParameterError, check_overrides, parameters_of
from argofl.pipelines.progress import AS_NAMED, round_views
from argofl.pipelines.split_config import SplitExperimentConfig
from argofl.steps.settings import param_name
from argofl.steps.strategies import strategy_options

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "fedavg": ROOT / "configs" / "fedavg-fmnist-torch.yaml",
    "split": ROOT / "configs" / "split-fmnist-torch.yaml",
}
COMMON = ["image", "store", "s3-endpoint", "mlflow-uri", "mlflow-ui", "start-round", "resume-from"]


def test_every_kind_has_an_example_config() -> None:
    assert set(KINDS) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_kind_loads_its_config_type_and_its_builder_declares_its_parameters(name: str) -> None:
    cfg = load_config(CONFIGS[name])
    kind = KINDS[name]
    assert type(cfg) is kind.config_type
    assert kind_of(cfg) is kind
    manifest = manifest_for(cfg)
    assert manifest["spec"]["entrypoint"] == name
    assert manifest_kind(manifest) is kind
    assert display_of(manifest) == kind.display
    assert list(parameters_of(manifest)) == [*cfg.workflow_parameters(), *COMMON]


def test_split_declares_its_options_and_not_the_server_optimizer_settings() -> None:
    cfg = load_config(CONFIGS["split"])
    assert isinstance(cfg, SplitExperimentConfig)
    params = cfg.workflow_parameters()
    assert params["split-cut"] == cfg.split.cut
    assert params["split-idle-timeout"] == str(cfg.split.idle_timeout)
    assert "server-lr" not in params
    assert "strategy" not in params


def _echo_builder(cfg: ExperimentConfig) -> Workflow:
    with Workflow(
        generate_name=f"{cfg.name}-", entrypoint="echo", labels={"argofl.io/experiment": "e"}
    ) as wf:
        hello = Container(name="hello", image="busybox", command=["echo", cfg.settings.experiment])
        with Steps(name="echo"):
            hello()
    return wf


def _echo_config(*, name: str, settings: Any, cluster: Any, source: Any, sections: Any, where: str) -> Any:
    if sections.get("echo") not in (None, "loud"):
        raise ConfigError(f"{where}: echo: must be loud, got {sections['echo']!r}")
    return ExperimentConfig(name=name, settings=settings, cluster=cluster, source=source, kind="echo")


def test_a_new_kind_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = ExperimentKind(
        name="echo",
        config_type=ExperimentConfig,
        make_config=_echo_config,
        builder=_echo_builder,
        sections={"echo": "echoes"},
    )
    monkeypatch.setitem(KINDS, "echo", kind)
    cfg = config_from_mapping({"kind": "echo", "experiment": "e", "echo": "loud"}, name="e", where="e.yaml")
    assert cfg.kind == "echo"
    manifest = manifest_for(cfg)  # compiled by the kind's builder
    assert manifest["spec"]["entrypoint"] == "echo"
    assert manifest_kind(manifest) is kind
    with pytest.raises(ConfigError, match=r"^e\.yaml: echo: must be loud, got 'soft'$"):
        config_from_mapping({"kind": "echo", "experiment": "e", "echo": "soft"}, name="e", where="e.yaml")
    with pytest.raises(ConfigError, match=r"^f\.yaml: echo: only kind echo echoes, not kind fedavg$"):
        config_from_mapping({"experiment": "e", "echo": "loud"}, name="f", where="f.yaml")
    with pytest.raises(ConfigError, match=r"kind: must be one of fedavg, split, echo, got 'gossip'"):
        config_from_mapping({"kind": "gossip", "experiment": "e"}, name="g", where="g.yaml")


def test_a_kind_refuses_a_config_of_another_kind() -> None:
    fedavg, split = load_config(CONFIGS["fedavg"]), load_config(CONFIGS["split"])
    with pytest.raises(ConfigError, match="a kind fedavg ExperimentConfig is no kind split config"):
        KINDS["split"].build(fedavg)
    # a SplitExperimentConfig is an ExperimentConfig, but no fedavg config
    with pytest.raises(ConfigError, match="a kind split SplitExperimentConfig is no kind fedavg config"):
        KINDS["fedavg"].build(split)


def test_split_parameter_values_are_checked_like_settings() -> None:
    manifest = manifest_for(load_config(CONFIGS["split"]))
    assert check_overrides(manifest, {"split_idle_timeout": "5"}) == {"split-idle-timeout": "5"}
    with pytest.raises(ParameterError, match=r"split\.idle_timeout: expected int, got 'soon'; nothing was"):
        check_overrides(manifest, {"split-idle-timeout": "soon"})
    with pytest.raises(
        ParameterError, match=r"^parameters: split\.cut: 'nope' is not a layer of the torch cnn"
    ):
        check_overrides(manifest, {"split-cut": "nope"})
    with pytest.raises(
        ParameterError, match=r"split\.cut: 'pool2' is not a layer of the torch mlp model .*started$"
    ):
        check_overrides(manifest, {"model": "mlp"})  # the config's cut, pool2, is no mlp layer
    assert check_overrides(manifest, {"model": "mlp", "split-cut": "fc2"}) == {
        "model": "mlp",
        "split-cut": "fc2",
    }
    fedavg = manifest_for(load_config(CONFIGS["fedavg"]))
    with pytest.raises(ParameterError, match="unknown workflow parameter 'split-cut'"):
        check_overrides(fedavg, {"split-cut": "pool1"})


FEDAVG_ONLY = (
    "strategy",
    *(param_name(o) for o in strategy_options()),
    "max-client-examples",
    "fraction",
    "clients-per-pod",
    "attack",
    "attack-clients",
    "attack-scale",
)
"""Settings only FedAvg reads: a split workflow that declared them looked settable (Argo UI, -p)."""


def test_a_split_workflow_declares_no_setting_only_fedavg_reads() -> None:
    manifest = manifest_for(load_config(CONFIGS["split"]))
    declared = parameters_of(manifest)
    assert {"prox-mu", "trim-beta", "krum-f", "dp-clip", "server-lr"} <= set(FEDAVG_ONLY)
    assert sorted(set(FEDAVG_ONLY) & set(declared)) == []
    init = next(t for t in manifest["spec"]["templates"] if t["name"] == "split-init")
    passed = {a.split("=", 1)[0] for a in init["container"]["args"] if "={{workflow.parameters." in a}
    assert sorted(set(FEDAVG_ONLY) & passed) == []
    fedavg = parameters_of(manifest_for(load_config(CONFIGS["fedavg"])))
    assert set(FEDAVG_ONLY) <= set(fedavg)  # the list above names real settings


@pytest.mark.parametrize("given", ["prox-mu=0.1", "attack=sign-flip", "fraction=0.5", "strategy=krum"])
def test_argofl_run_refuses_a_fedavg_only_setting_of_a_split_config_as_an_unknown_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """`-p prox-mu=0.1` was accepted and ignored; now it is an unknown parameter, one line, exit 2."""
    from click.testing import CliRunner

    from argofl.pipelines import commands
    from argofl.pipelines.cli import cli

    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)
    runs = tmp_path / "runs"
    args = ["run", str(CONFIGS["split"]), "--runs-dir", str(runs), "-p", given]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    name = given.split("=")[0]
    assert line.startswith(f"error: unknown workflow parameter {name!r};"), line
    assert line.endswith("; nothing was started")
    assert not runs.exists()


def _with_fedavg_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` declaring every setting, as split workflows compiled by an older argofl did."""
    params = manifest["spec"]["arguments"]["parameters"]
    declared = {p["name"] for p in params}
    defaults = load_config(CONFIGS["fedavg"]).settings.to_params()
    params += [{"name": k, "value": v} for k, v in defaults.items() if k not in declared]
    return manifest


def test_an_attack_given_to_an_older_split_workflow_is_refused_before_it_starts() -> None:
    """The config check refuses `attack:` in a split config; `-p attack=` on a split workflow that still
    declares it (compiled by an older argofl) is refused the same way (it failed split-init, after the run
    had started)."""
    manifest = _with_fedavg_settings(manifest_for(load_config(CONFIGS["split"])))
    with pytest.raises(
        ParameterError,
        match=r"^parameters: attack: split learning simulates no attacks, got 'sign-flip'; nothing was",
    ):
        check_overrides(manifest, {"attack": "sign-flip", "attack-clients": "0"})
    assert check_overrides(manifest, {"attack": "none"}) == {"attack": "none"}


def test_a_strategy_given_to_an_older_split_workflow_is_refused_before_it_starts() -> None:
    """`-p strategy=fedavgm` on a split workflow that still declares it passed the check and failed
    split-init, after the run had started; it is refused as a config's `strategy: fedavgm` is."""
    manifest = _with_fedavg_settings(manifest_for(load_config(CONFIGS["split"])))
    with pytest.raises(
        ParameterError,
        match=r"^parameters: strategy: split learning averages SplitFed bottoms with FedAvg: only strategy "
        r"fedavg applies, got 'fedavgm'; nothing was started$",
    ):
        check_overrides(manifest, {"strategy": "fedavgm"})


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ({"fraction": "0.5"}, "fraction: split learning trains every client each round (1.0), got 0.5"),
        ({"clients-per-pod": "2"}, "clients_per_pod: split learning runs one pod per client (1), got 2"),
    ],
)
def test_a_fedavg_setting_an_older_split_workflow_would_ignore_is_refused_before_it_starts(
    given, fragment
) -> None:
    """All clients trained, one pod each, whatever -p fraction / clients-per-pod said."""
    manifest = _with_fedavg_settings(manifest_for(load_config(CONFIGS["split"])))
    with pytest.raises(ParameterError, match=f"^parameters: {re.escape(fragment)}; nothing was started$"):
        check_overrides(manifest, given)


def test_a_workflow_that_is_no_experiment_gets_no_settings_check() -> None:
    manifest = {
        "spec": {"entrypoint": "fedavg", "arguments": {"parameters": [{"name": "rounds", "value": "x"}]}}
    }
    assert manifest_kind(manifest) is None
    assert check_overrides(manifest, {"rounds": "many"}) == {"rounds": "many"}


def _node(nid: str, node_type: str, template: str, phase: str, **extra: Any) -> dict[str, Any]:
    return {"id": nid, "type": node_type, "templateName": template, "phase": phase, **extra}


def _split_round_status() -> dict[str, Any]:
    round_in = {"parameters": [{"name": "round", "value": "round 1"}]}
    metrics = {"parameters": [{"name": "loss", "value": "0.5"}, {"name": "accuracy", "value": "0.8"}]}
    nodes = [
        _node("r1", "DAG", "round", "Succeeded", inputs=round_in, children=["c0", "c1", "e"]),
        _node("c0", "Pod", "split-client", "Succeeded", boundaryID="r1", inputs=round_in),
        _node("c1", "Pod", "split-client", "Failed", boundaryID="r1", inputs=round_in, message="gone"),
        _node("e", "Pod", "evaluate", "Succeeded", boundaryID="r1", inputs=round_in, outputs=metrics),
    ]
    return {"nodes": {n["id"]: n for n in nodes}}


def test_the_split_kinds_display_counts_its_clients_as_training() -> None:
    [view] = round_views(_split_round_status(), KINDS["split"].display)
    assert (view.trained, view.train_failed, view.train_total) == (1, 1, 2)
    assert "clients 1/2 trained (1 failed)" in view.line()
    [as_named] = round_views(_split_round_status(), AS_NAMED)
    assert as_named.train_total == 0


def test_argofl_runs_progress_lines_use_the_kinds_display() -> None:
    from argofl.pipelines.commands import Progress

    out = io.StringIO()
    node = _split_round_status()["nodes"]["c0"]
    node = {
        **node,
        "inputs": {
            "parameters": [
                {"name": "round", "value": "round 1"},
                {"name": "clients", "value": "round 1 / client 0"},
            ]
        },
    }
    Progress(out, KINDS["split"].display)(node)
    Progress(out)({**node, "id": "other"})
    first, second = out.getvalue().splitlines()
    assert first.endswith("] round 1 / client 0 ✔")
    assert second.endswith("] split-client ✔")


def test_a_split_servers_progress_line_names_its_round() -> None:
    """Each round's server read `split-server ✔`, the same line every round (and on a failure)."""
    from argofl.pipelines.commands import Progress

    out = io.StringIO()
    round_in = {"parameters": [{"name": "round", "value": "round 2"}]}
    Progress(out, KINDS["split"].display)(_node("s", "Pod", "split-server", "Succeeded", inputs=round_in))
    stopped = _node(
        "t", "Pod", "split-server", "Failed", inputs=round_in, message="stopped: executor interrupted"
    )
    Progress(out, KINDS["split"].display)(stopped)
    first, second = out.getvalue().splitlines()
    assert first.endswith("] round 2 / server ✔")
    assert second.endswith("] round 2 / server ✖ (stopped: executor interrupted)")


def test_argofl_runs_progress_lines_load_no_cluster_module() -> None:
    code = (
        "import io, sys\n"
        "from argofl.pipelines.commands import Progress\n"
        "Progress(io.StringIO())({'id': 'n', 'type': 'Pod', 'phase': 'Succeeded', 'templateName': 'train'})\n"
        "print([m for m in sys.modules if m.startswith('argofl.pipelines.') and 'cluster' in m])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
