"""Config files and settings: bad input gives one clear error naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from argofl.pipelines.config import ConfigError, load_config
from argofl.steps.attacks import ATTACKS
from argofl.steps.data import DATASETS
from argofl.steps.frameworks import BUILTIN_MODELS, FRAMEWORKS, FrameworkInfo
from argofl.steps.labels import parse_clients
from argofl.steps.partition import SCHEMES
from argofl.steps.settings import FIELDS, MAX_CLIENTS, Settings, SettingsError
from argofl.steps.step_distribute import group_clients
from argofl.steps.strategies import PROX_MU, SERVER_BETA2, STRATEGIES, strategy_options

FLAGSHIP = Path(__file__).resolve().parents[1] / "configs" / "fedavg-fmnist-torch.yaml"


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_flagship_config_loads():
    cfg = load_config(FLAGSHIP)
    assert cfg.name == "fedavg-fmnist-torch"
    assert cfg.settings.clients == 10
    assert cfg.settings.rounds == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("experiment: x\nround: 5\n", "unknown setting 'round' (did you mean 'rounds'?)"),
        ("experiment: x\nrounds: five\n", "rounds: expected int, got str 'five'"),
        ("experiment: x\nrounds: -1\n", "rounds: must be ≥ 1, got -1"),
        ("experiment: x\nrounds: true\n", "rounds: expected int, got bool True"),
        ("experiment: x\nrounds: 100000000\n", "rounds: must be ≤ 9999 (the store numbers rounds"),
        (
            "experiment: x\nclients: 100000000000\n",
            "clients: must be ≤ 1000000 (distribute samples each round from every client), got 100000000000",
        ),
        ("experiment: x\nclients: 3\nmin_clients: 4\n", "min_clients: must be ≤ clients (3), got 4"),
        ("experiment: x\nfraction: 1.5\n", "fraction: must be in (0, 1]"),
        ("experiment: x\nlr: .nan\n", "lr: must be a finite number"),
        ("experiment: x\nframework: jax\n", "framework: must be one of torch, tensorflow"),
        ("experiment: Bad_Name\n", "experiment: must be lowercase"),
        ("rounds: 2\n", "missing required setting 'experiment'"),
        ("experiment: x\ncluster: {gpu: 1}\n", "unknown key cluster.gpu (did you mean 'gpus'?)"),
        ("experiment: x\ncluster: {memory: lots}\n", "cluster.memory: not a Kubernetes quantity"),
        ("experiment: x\ncluster: {gpus: -1}\n", "cluster.gpus: must be ≥ 0"),
        ("experiment: x\ncluster: {gpus: two}\n", "cluster.gpus: expected int, got str 'two'"),
        ("experiment: x\ncluster: {retries: true}\n", "cluster.retries: expected int, got bool True"),
        ("experiment: x\ncluster: {cpu: true}\n", "cluster.cpu: expected str, got bool True"),
        ("- a\n- b\n", "expected a mapping"),
        ("# only a comment\n", "empty (no YAML document); expected a mapping of settings"),
        ("experiment: [unclosed\n", "cannot read YAML"),
    ],
)
def test_bad_config_gives_one_line_error_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text_out = str(info.value)
    assert message in text_out
    assert str(path) in text_out
    assert "\n" not in text_out


FOREIGN_OPTIONS = [
    (
        "strategy: fedavg\nprox_mu: 0.1\n",
        "prox_mu: 0.1 is an option of strategy fedprox; strategy fedavg does not use it "
        "(remove it or set strategy: fedprox)",
    ),
    (  # fedavg is the default strategy
        "prox_mu: 0.1\n",
        "prox_mu: 0.1 is an option of strategy fedprox; strategy fedavg does not use it "
        "(remove it or set strategy: fedprox)",
    ),
    (
        "server_lr: 0.5\n",
        "server_lr: 0.5 is an option of strategy fedavgm or fedadam; strategy fedavg does not use it "
        "(remove it or set strategy: fedavgm or fedadam)",
    ),
    (
        "strategy: fedavgm\nserver_beta2: 0.9\n",
        "server_beta2: 0.9 is an option of strategy fedadam; strategy fedavgm does not use it "
        "(remove it or set strategy: fedadam)",
    ),
    (
        "strategy: median\ndp_mode: local\n",
        "dp_mode: 'local' is an option of strategy dp-fedavg; strategy median does not use it "
        "(remove it or set strategy: dp-fedavg)",
    ),
]


@pytest.mark.parametrize(("text", "line"), FOREIGN_OPTIONS)
def test_an_option_of_another_strategy_is_refused_naming_both_strategies(tmp_path, text, line):
    """`strategy: fedavg` with `prox_mu: 0.1` trained plain FedAvg: the proximal term was silently ignored."""
    path = write(tmp_path, "experiment: x\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {line}"


ALPHA_WITHOUT_DIRICHLET = (
    "alpha: 0.3 is the concentration of partition dirichlet; partition iid does not use it "
    "(remove it or set partition: dirichlet)"
)


@pytest.mark.parametrize("kind", ["", "kind: split\n"])
def test_alpha_without_the_dirichlet_partition_is_refused(tmp_path, kind):
    """`alpha: 0.3` with partition iid (the default) split the data IID all the same, silently."""
    path = write(tmp_path, f"experiment: x\n{kind}alpha: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {ALPHA_WITHOUT_DIRICHLET}"
    dirichlet = write(tmp_path, f"experiment: x\n{kind}partition: dirichlet\nalpha: 0.3\n")
    assert load_config(dirichlet).settings.alpha == 0.3
    assert load_config(write(tmp_path, f"experiment: x\n{kind}alpha: 0.5\n")).settings.alpha == 0.5  # default


def test_options_at_their_defaults_and_the_strategy_s_own_options_are_accepted(tmp_path):
    defaults = {name: option.default for name, option in strategy_options().items()}
    for strategy in STRATEGIES:  # a config may list every option at its default, whatever its strategy
        doc = {"experiment": "x", "strategy": strategy, "clients": 10, "min_clients": 5, **defaults}
        if strategy == "fedadam":
            doc["server_lr"] = 0.01  # fedadam's own check refuses the shared default 1.0
        assert load_config(write(tmp_path, yaml.safe_dump(doc))).settings.strategy == strategy
    own = "experiment: x\nstrategy: fedprox\nprox_mu: 0.1\n"
    assert load_config(write(tmp_path, own)).settings.option(PROX_MU) == 0.1
    own = "experiment: x\nstrategy: fedadam\nserver_lr: 0.01\nserver_beta2: 0.9\n"
    assert load_config(write(tmp_path, own)).settings.option(SERVER_BETA2) == 0.9


def test_cluster_cpu_and_memory_may_be_numbers(tmp_path):
    cluster = load_config(write(tmp_path, "experiment: x\ncluster: {cpu: 2, memory: 0.5}\n")).cluster
    assert (cluster.cpu, cluster.memory) == ("2", "0.5")


def test_a_config_that_is_not_utf8_text_is_one_error_line(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: cannot read YAML: 'utf-8' codec can't decode byte 0xff in position 1: invalid start byte"
    )


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_workflow_parameters_parse_back_to_the_same_settings():
    settings = load_config(FLAGSHIP).settings
    assert Settings.from_mapping(settings.to_params(), strings=True) == settings


def test_string_parameters_are_validated_like_config_values():
    params = {**load_config(FLAGSHIP).settings.to_params(), "rounds": "0"}
    with pytest.raises(SettingsError, match="rounds: must be ≥ 1, got 0"):
        Settings.from_mapping(params, where="workflow parameters", strings=True)
    with pytest.raises(SettingsError, match="lr: expected float, got 'fast'"):
        Settings.from_mapping({**params, "rounds": "2", "lr": "fast"}, strings=True)


def test_clients_are_at_most_the_widest_label_a_pod_can_read():
    """10**11 clients passed every check and ended in a MemoryError in distribute, after the run started.
    A pod of every client (``clients 0-999999``) is the widest label train parses: the cap is there."""
    params = {"experiment": "x", "clients": str(MAX_CLIENTS), "clients-per-pod": str(MAX_CLIENTS)}
    assert Settings.from_mapping(params, strings=True).clients == MAX_CLIENTS == 1_000_000
    label = group_clients(1, list(range(MAX_CLIENTS)), MAX_CLIENTS)[0]
    assert len(parse_clients(label)) == MAX_CLIENTS
    with pytest.raises(SettingsError) as info:
        Settings.from_mapping({**params, "clients": str(MAX_CLIENTS + 1)}, strings=True)
    assert str(info.value) == (
        "settings: clients: must be ≤ 1000000 (distribute samples each round from every client), got 1000001"
    )
    with pytest.raises(SettingsError) as info:
        Settings.from_mapping({"experiment": "x", "min-clients": "100000000000"}, strings=True)
    assert str(info.value) == "settings: min_clients: must be ≤ clients (10), got 100000000000"


REGISTRIES = [
    pytest.param(FRAMEWORKS, "framework", "jax", FrameworkInfo("my_jax_backend", "jax"), id="framework"),
    pytest.param(BUILTIN_MODELS, "model", "resnet18", "a residual network", id="model"),
    pytest.param(DATASETS, "dataset", "emnist", DATASETS["mnist"], id="dataset"),
    pytest.param(STRATEGIES, "strategy", "fedsgd", STRATEGIES["fedavg"], id="strategy"),
]


def complaint(setting: str, value: str) -> str | None:
    """The error about ``setting`` when it is ``value`` (None: accepted; other settings' rules, such as a
    strategy's own checks, are not this test's concern)."""
    try:
        Settings.from_mapping({"experiment": "x", setting: value})
    except SettingsError as exc:
        return str(exc) if str(exc).startswith(f"settings: {setting}: ") else None
    return None


@pytest.mark.parametrize(("registry", "setting", "name", "entry"), REGISTRIES)
def test_settings_accept_exactly_the_registered_choices(registry, setting, name, entry):
    for choice in registry:
        assert complaint(setting, choice) is None
    with pytest.raises(
        SettingsError, match=rf"^settings: {setting}: .*{re.escape(', '.join(registry))}.*, got '{name}'$"
    ):
        Settings.from_mapping({"experiment": "x", setting: name})


@pytest.mark.parametrize(("registry", "setting", "name", "entry"), REGISTRIES)
def test_a_new_registry_entry_is_a_valid_setting_with_no_other_edit(
    monkeypatch, registry, setting, name, entry
):
    assert complaint(setting, name) is not None
    monkeypatch.setitem(registry, name, entry)
    assert complaint(setting, name) is None
    with pytest.raises(
        SettingsError, match=rf"^settings: {setting}: .*{re.escape(', '.join(registry))}.*, got 'nope'$"
    ):
        Settings.from_mapping({"experiment": "x", setting: "nope"})  # the message lists the new entry too


def test_help_texts_list_the_registries():
    helps = {f.name: f.metadata["help"] for f in FIELDS}
    for setting, registry in (
        ("framework", FRAMEWORKS),
        ("model", BUILTIN_MODELS),
        ("dataset", DATASETS),
        ("partition", SCHEMES),
        ("strategy", STRATEGIES),
        ("attack", ATTACKS),
    ):
        mentioned = re.findall(r"[a-z0-9-]+", helps[setting])
        assert set(registry) <= set(mentioned), setting


@pytest.mark.parametrize(
    ("setting", "registry", "extra"),
    [
        ("framework", FRAMEWORKS, set()),
        ("dataset", DATASETS, set()),
        ("model", BUILTIN_MODELS, {"or", "package.module:factory", "see", "examples/custom_models.py"}),
        ("partition", SCHEMES, {"alpha"}),
    ],
)
def test_readme_settings_list_the_registered_choices(setting, registry, extra):
    readme = " ".join((FLAGSHIP.parents[1] / "README.md").read_text().split())
    listed = re.search(rf"`{setting}` \(([^()]*)\)", readme)
    assert listed, f"README: no `{setting}` (choices) in the settings paragraph"
    assert set(re.findall(r"[\w.:/-]+", listed[1])) - extra == set(registry)
