"""`kind: split` configs: dispatch in load_config/compile, validation of the `split:` section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import ConfigError, ExperimentConfig, config_from_mapping, load_config
from argofl.pipelines.split_config import SplitExperimentConfig
from argofl.steps.settings import SettingsError
from argofl.steps.split.settings import SplitOptions, split_settings_params

ROOT = Path(__file__).resolve().parents[1]


def _doc(**split: object) -> dict[str, object]:
    return {"kind": "split", "experiment": "x", "split": split}


def test_kind_dispatches_to_the_split_builder():
    cfg = load_config(ROOT / "configs" / "splitfed-fmnist-torch.yaml")
    assert isinstance(cfg, SplitExperimentConfig)
    assert cfg.kind == "split"
    assert cfg.split.mode == "splitfed"
    manifest = manifest_for(cfg)
    assert manifest["spec"]["entrypoint"] == "split"
    params = {p["name"] for p in manifest["spec"]["arguments"]["parameters"]}
    assert {"split-cut", "split-idle-timeout", "split-request-timeout", "clients", "rounds"} <= params


def test_default_kind_is_fedavg():
    cfg = config_from_mapping({"experiment": "x"}, name="x", where="t")
    assert type(cfg) is ExperimentConfig
    assert cfg.kind == "fedavg"


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"kind": "gossip", "experiment": "x"}, "kind: must be one of fedavg, split"),
        (_doc(mode="sideways"), r"split\.mode"),
        (_doc(porrt=1), r"unknown key split\.porrt \(did you mean 'port'\?\)"),
        (_doc(port="8080"), r"split\.port: expected int, got str '8080'"),
        (_doc(idle_timeout=True), r"split\.idle_timeout: expected int, got bool True"),
        (_doc(port=80), r"split\.port"),
        ({"experiment": "x", "split": {"mode": "vanilla"}}, "split: only kind split splits the model"),
        (
            {**_doc(mode="splitfed"), "strategy": "fedavgm"},
            r"t\.yaml: strategy: split learning averages SplitFed bottoms with FedAvg: only strategy fedavg",
        ),
        (
            {**_doc(mode="vanilla"), "attack": "label-flip", "attack_clients": "0"},
            r"t\.yaml: attack: split learning simulates no attacks, got 'label-flip'",
        ),
        (
            {**_doc(mode="splitfed"), "fraction": 0.5},
            r"^t\.yaml: fraction: split learning trains every client each round \(1\.0\), got 0\.5$",
        ),
        (
            {**_doc(mode="vanilla"), "clients_per_pod": 2},
            r"^t\.yaml: clients_per_pod: split learning runs one pod per client \(1\), got 2$",
        ),
        (  # a FedAvg setting split learning would ignore silently
            {**_doc(mode="splitfed"), "prox_mu": 0.1},
            r"^t\.yaml: prox_mu: split learning has no use for this FedAvg setting, got 0\.1; remove it$",
        ),
        (
            {**_doc(mode="vanilla"), "max_client_examples": 500},
            r"^t\.yaml: max_client_examples: split learning has no use for this FedAvg setting, got 500; "
            "remove it$",
        ),
    ],
)
def test_bad_split_configs_are_refused_with_the_key(doc, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_from_mapping(doc, name="x", where="t.yaml")


def test_split_parameters_given_as_strings_are_parsed():
    options = SplitOptions.from_mapping({"port": " 9000 ", "idle-timeout": "5"}, strings=True)
    assert (options.port, options.idle_timeout) == (9000, 5)
    with pytest.raises(SettingsError, match=r"^params: split\.idle_timeout: expected int, got 'soon'$"):
        SplitOptions.from_mapping({"idle-timeout": "soon"}, where="params", strings=True)


def test_bad_cut_fails_at_init_not_silently(tmp_path):
    """A factory model's cut is only checked when split-init builds the halves."""
    from tests.require import require_module

    require_module("torch")
    from argofl.steps.frameworks.base import FrameworkError
    from argofl.steps.split.torch_split import build_halves

    with pytest.raises(FrameworkError, match=r"split\.cut='nope'"):
        build_halves("cnn", "nope", input_shape=(28, 28, 1), num_classes=10, seed=0, threads=1)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (
            _doc(cut="nope"),
            "t.yaml: split.cut: 'nope' is not a layer of the torch cnn model that leaves a top",
        ),
        (_doc(cut="logits"), "split.cut: 'logits' is not a layer of the torch cnn model"),
        ({**_doc(cut="pool2"), "model": "mlp"}, "expected one of flatten, fc1, relu1, fc2, relu2"),
        ({**_doc(cut="relu2"), "framework": "tensorflow"}, "split.cut: 'relu2' is not a layer of the tens"),
    ],
)
def test_a_cut_a_builtin_model_lacks_is_refused_when_the_config_loads(doc, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config_from_mapping(doc, name="x", where="t.yaml")


def test_a_factory_models_cut_is_left_to_split_init():
    cfg = config_from_mapping(
        {**_doc(cut="block3"), "model": "examples.custom_models:torch_tiny_cnn"}, name="x", where="t"
    )
    assert isinstance(cfg, SplitExperimentConfig)
    assert cfg.split.cut == "block3"


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_builtin_cuts_are_the_layers_of_the_built_models(framework, model):
    from argofl.steps.split.settings import BUILTIN_CUTS
    from tests.require import require_module

    require_module(framework)
    from argofl.steps.split import steps as split_steps

    full, _, _ = split_steps.halves(framework).build_halves(
        model, "fc1", input_shape=(28, 28, 1), num_classes=10, seed=0, threads=1
    )
    names = [n for n, _ in full.named_children()] if framework == "torch" else [x.name for x in full.layers]
    assert BUILTIN_CUTS[(framework, model)] == tuple(names[:-1])


def test_a_strategy_override_at_submit_time_fails_split_init(tmp_path, monkeypatch):
    """`-p strategy=fedadam` bypasses the config check; split init refuses it before writing anything."""
    from argofl.steps.runinfo import RunError
    from argofl.steps.settings import Settings
    from argofl.steps.split import steps as split_steps

    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    settings = Settings.from_mapping({"experiment": "x", "strategy": "fedavgm"})
    with pytest.raises(RunError, match="strategy: split learning averages SplitFed bottoms with FedAvg"):
        split_steps.init(settings, SplitOptions(), run_key="x/run", workflow_name="run", workflow_uid="u")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*"))


def test_split_halves_come_from_the_framework_registry(tmp_path, monkeypatch):
    """Each framework's FRAMEWORKS entry names its halves; split init refuses one without them."""
    import importlib

    from tests.require import require_module

    require_module("torch")
    from argofl.steps.frameworks import FRAMEWORKS, FrameworkInfo
    from argofl.steps.runinfo import RunError
    from argofl.steps.settings import Settings
    from argofl.steps.split import steps as split_steps

    assert split_steps.halves("torch") is importlib.import_module("argofl.steps.split.torch_split")
    monkeypatch.setitem(FRAMEWORKS, "jax", FrameworkInfo("my_jax_backend", "jax"))
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    settings = Settings.from_mapping({"experiment": "x", "framework": "jax"})
    with pytest.raises(RunError, match=r"^split learning supports frameworks torch, tensorflow, got 'jax'$"):
        split_steps.init(settings, SplitOptions(), run_key="x/run", workflow_name="run", workflow_uid="u")
    with pytest.raises(RunError, match="split learning does not support framework 'jax'"):
        split_steps.halves("jax")


def test_split_init_records_the_split_options_as_mlflow_params(tmp_path, monkeypatch, fmnist_dir):
    """The MLflow run says how the model was split (it had the settings only: no cut, no mode) and records
    only the settings split learning uses (it listed strategy, server-lr, prox-mu, attack, …)."""
    from tests.require import require_module

    require_module("torch")
    from mlflow.tracking import MlflowClient

    from argofl.steps.settings import Settings
    from argofl.steps.split import steps as split_steps

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = Settings.from_mapping({"experiment": "x", "data_dir": str(fmnist_dir), "clients": 2})
    options = SplitOptions(mode="splitfed", cut="pool1", idle_timeout=30)
    out = split_steps.init(settings, options, run_key="x/run", workflow_name="run", workflow_uid="u")
    params = MlflowClient(uri).get_run(out["mlflow-run-id"]).data.params
    assert {k: v for k, v in params.items() if k.startswith("split-")} == {
        "split-mode": "splitfed",
        "split-cut": "pool1",
        "split-port": "8080",
        "split-idle-timeout": "30",
        "split-request-timeout": "60",
    }
    assert params["clients"] == "2"
    assert set(params) == {*split_settings_params(settings), *options.to_params()}
    assert not {"strategy", "server-lr", "prox-mu", "dp-clip", "attack", "fraction"} & set(params)
