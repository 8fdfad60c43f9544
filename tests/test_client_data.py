"""Clients own their data: per-client shards, ``argofl data split``, loaders, federated evaluation,
bad client data (one line naming client and location; the round goes on per ``min_clients``) and an
aggregator that never reads data."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.pipelines.config import ConfigError, config_from_mapping
from argofl.pipelines.data_commands import SplitSpec, split_dataset
from argofl.steps import step_aggregate, step_distribute, step_evaluate, step_init, step_train
from argofl.steps.checkpoint import checkpoint_exists, load_manifest
from argofl.steps.cli import step as step_cli
from argofl.steps.client_data import (
    ClientDataError,
    DataOptions,
    client_data,
    client_example_count,
    read_shard,
    shard_exists,
    shard_uri,
    write_shard,
)
from argofl.steps.data import load_dataset
from argofl.steps.runinfo import RunLayout
from argofl.steps.settings import Settings, SettingsError
from argofl.steps.store import FileStore, open_uri
from argofl.steps.strategies import AggregationError
from tests.servers import empty_bucket

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path, monkeypatch, fmnist_dir):
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return FileStore(tmp_path / "store")


def settings(**overrides) -> Settings:
    base = {"experiment": "data-test", "data_limit": 300, "clients": 3, "min_clients": 1, "rounds": 2}
    return Settings.from_mapping({**base, "seed": 7, **overrides})


def run_rounds(s: Settings, run_key: str, data: DataOptions | None = None) -> list[dict[str, float]]:
    step_init.run(s, run_key=run_key, workflow_name="w", workflow_uid="u", data=data)
    evaluations = []
    for r in range(1, s.rounds + 1):
        for group in step_distribute.run(run_key=run_key, round=r):
            step_train.run(run_key=run_key, round=r, clients=group)
        step_aggregate.run(run_key=run_key, round=r)
        evaluations.append(step_evaluate.run(run_key=run_key, round=r))
    return evaluations


def global_blob(store: FileStore, run_key: str, round: int) -> bytes:
    return store.get_bytes(RunLayout(run_key).global_key(round) + ".safetensors")


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_per_client_shards_from_data_split_give_byte_identical_checkpoints(env, tmp_path, partition):
    s = settings(partition=partition, alpha=1.0)
    run_rounds(s, "data-test/partition")
    template = (tmp_path / "sites").as_uri() + "/{client}/"
    counts = split_dataset(SplitSpec.from_settings(s), template).counts
    assert sum(c[0] for c in counts.values()) == 300
    assert sum(c[1] for c in counts.values()) == len(load_dataset("fashion-mnist", "test"))
    per_client = DataOptions(source="per-client", uri=template)
    evaluations = run_rounds(s, "data-test/shards", per_client)
    for r in (1, 2):
        assert global_blob(env, "data-test/shards", r) == global_blob(env, "data-test/partition", r)
    for client in map(str, range(3)):
        assert client_example_count(s, per_client, client) == client_example_count(s, DataOptions(), client)
    # federated evaluation: every client evaluated the incoming model; no central test set
    fed = evaluations[1]
    assert fed["fed-clients"] == 3
    assert fed["fed-examples"] == 10000
    assert fed["accuracy"] == fed["fed-accuracy"]
    assert fed["fed-accuracy-min"] <= fed["fed-accuracy"] <= fed["fed-accuracy-max"]
    doc = json.loads(env.get_bytes(RunLayout("data-test/shards").eval_key(2)))
    assert doc["evaluated_on"] == "clients' test splits"
    clients = [json.loads(env.get_bytes(RunLayout("data-test/shards").client_eval_key(2, c))) for c in "012"]
    weighted = sum(c["accuracy"] * c["examples"] for c in clients) / sum(c["examples"] for c in clients)
    assert fed["fed-accuracy"] == pytest.approx(weighted)
    assert all(c["model_round"] == 1 for c in clients)
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run_id = json.loads(env.get_bytes("data-test/shards/run.json"))["mlflow_run_id"]
    history = mlflow.get_metric_history(run_id, "fed_accuracy")
    assert [(m.step, m.value) for m in history][-1] == (2, pytest.approx(fed["fed-accuracy"]))
    assert {m.step for m in mlflow.get_metric_history(run_id, "fed_accuracy_std")} == {1, 2}
    assert mlflow.get_metric_history(run_id, "test_accuracy") == []  # no central test set


def test_federated_summary_weights_by_examples_and_reports_the_spread():
    fed = step_evaluate.federated_summary(
        [{"loss": 1.0, "accuracy": 0.5, "examples": 10}, {"loss": 3.0, "accuracy": 0.9, "examples": 30}]
    )
    assert fed["loss"] == pytest.approx(2.5)
    assert fed["accuracy"] == pytest.approx(0.8)
    assert (fed["accuracy_min"], fed["accuracy_max"]) == (0.5, 0.9)
    assert fed["accuracy_std"] == pytest.approx(0.2)
    assert math.isnan(step_evaluate.federated_summary([])["accuracy"])


def test_data_split_command_writes_the_partition_of_a_config(env, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("experiment: x\nclients: 4\ndata_limit: 200\nseed: 3\npartition: dirichlet\n")
    out = (tmp_path / "out").as_uri()
    result = CliRunner().invoke(cli, ["data", "split", out, "--config", str(config), "--no-test"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 clients' shards (dirichlet, seed 3" in result.output
    s = settings(clients=4, data_limit=200, seed=3, partition="dirichlet")
    for client in "0123":
        shard = read_shard(
            shard_uri(out + "/{client}", client, "train"),
            client=client,
            input_shape=(28, 28, 1),
            num_classes=10,
        )
        assert shard is not None
        expected = step_train_part(s, client)
        assert shard.x.tobytes() == expected.x.tobytes()
        assert shard.y.tobytes() == expected.y.tobytes()
    assert not (tmp_path / "out" / "0" / "test.safetensors").exists()
    bad = CliRunner().invoke(cli, ["data", "split", out, "--dataset", "fashion-mnist"])
    assert bad.exit_code != 0
    assert "--clients" in bad.output


def test_data_split_refuses_existing_shards_and_writes_nothing_unless_overwrite(tmp_path, fmnist_dir):
    """A second split into the same place replaced the clients' shards without a word: it now refuses,
    naming the first existing shard and how many exist, before writing any; ``--overwrite`` replaces."""
    out = tmp_path / "out"
    args = ["data", "split", out.as_uri(), "--dataset", "fashion-mnist", "--clients", "3", "--limit", "90"]
    for existing in (out / "1" / "test.safetensors", out / "2" / "train.safetensors"):
        existing.parent.mkdir(parents=True, exist_ok=True)
        existing.write_bytes(b"a site's own shard")
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2, refused.output
    assert refused.output.strip() == (
        f"error: {(out / '1' / 'test.safetensors').as_uri()} already exists (2 of the 6 shards to write "
        "do); nothing was written: pass --overwrite to replace them"
    )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "1/test.safetensors",
        "2/train.safetensors",
    ]
    assert (out / "2" / "train.safetensors").read_bytes() == b"a site's own shard"
    replaced = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert len(list(out.rglob("*.safetensors"))) == 6
    assert (out / "2" / "train.safetensors").read_bytes() != b"a site's own shard"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2
    assert "(6 of the 6 shards to write do)" in again.output


def test_data_split_into_a_bucket_refuses_existing_shards(s3_env, fmnist_dir):
    from argofl.pipelines.data_commands import ExistingShardsError

    template = f"{s3_env}/sites/{{client}}/"
    spec = SplitSpec.from_settings(settings(clients=2, data_limit=100))
    split_dataset(spec, template, test=False, clients=[1])
    store, key = open_uri(shard_uri(template, "1", "train"))
    store.put_bytes(key, b"a site's own shard")
    with pytest.raises(ExistingShardsError, match=r"sites/1/train\.safetensors already exists \(1 of the 2 "):
        split_dataset(spec, template, test=False)
    assert not store.exists(shard_uri(template, "0", "train").removeprefix(f"{s3_env}/"))
    assert store.get_bytes(key) == b"a site's own shard"
    split_dataset(spec, template, test=False, overwrite=True)
    assert store.get_bytes(key) != b"a site's own shard"
    assert store.exists(shard_uri(template, "0", "train").removeprefix(f"{s3_env}/"))


def shard_files(out: Path) -> dict[str, bytes]:
    """Every shard under ``out``: path relative to it → bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}


def test_data_split_overwrite_without_test_removes_the_written_clients_old_test_shards(tmp_path, fmnist_dir):
    """``--overwrite --no-test`` over an earlier split left each client's old test shard, so the client
    evaluated on test data of another split: each client the split writes now ends with exactly this
    split's shards (its old test shard removed, and said); clients it does not write are untouched.
    Without ``--overwrite`` a test shard that ``--no-test`` would remove is refused like any other."""
    out = tmp_path / "out"
    args = ["data", "split", out.as_uri(), "--dataset", "fashion-mnist", "--clients", "3", "--limit", "90"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = shard_files(out)
    again = [*args, "--no-test", "--seed", "1", "--only-clients", "0,1"]
    refused = CliRunner().invoke(cli, again)
    assert refused.exit_code == 2, refused.output
    assert refused.output.strip() == (
        f"error: {(out / '0' / 'train.safetensors').as_uri()} already exists (2 of the 2 shards to write "
        "do, and 2 shards the split would remove); nothing was written: pass --overwrite to replace or "
        "remove them"
    )
    assert shard_files(out) == before
    replaced = CliRunner().invoke(cli, [*again, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert "removed the test shards of clients 0,1 (--no-test)" in replaced.output
    after = shard_files(out)
    assert sorted(after) == [
        "0/train.safetensors",
        "1/train.safetensors",
        "2/test.safetensors",
        "2/train.safetensors",
    ]
    assert after["0/train.safetensors"] != before["0/train.safetensors"]  # seed 1
    assert {k: after[k] for k in ("2/test.safetensors", "2/train.safetensors")} == {
        k: before[k] for k in ("2/test.safetensors", "2/train.safetensors")
    }
    per_client = DataOptions(source="per-client", uri=out.as_uri() + "/{client}/")
    s = settings(clients=3)
    assert client_data(s, per_client, "0", "test") is None  # federated evaluation skips client 0
    assert client_data(s, per_client, "2", "test") is not None

    only_test = tmp_path / "only-test"
    (only_test / "1").mkdir(parents=True)
    (only_test / "1" / "test.safetensors").write_bytes(b"a site's own test shard")
    lone = CliRunner().invoke(cli, ["data", "split", only_test.as_uri(), *args[3:], "--no-test"])
    assert lone.exit_code == 2, lone.output
    assert lone.output.strip() == (
        f"error: {(only_test / '1' / 'test.safetensors').as_uri()} already exists (1 shard the split "
        "would remove); nothing was written: pass --overwrite to replace or remove them"
    )
    assert shard_files(only_test) == {"1/test.safetensors": b"a site's own test shard"}


def test_data_split_overwrite_with_fewer_clients_removes_the_shards_of_the_clients_beyond(
    tmp_path, fmnist_dir
):
    """A split of fewer clients over an earlier one left the extra clients' shards, which a run with
    more clients read silently (data of another partition): a split of every client with
    ``--overwrite`` removes the shards of clients beyond its count, gaps and all, and says so; one of
    some clients (``--only-clients``) leaves other clients alone; without ``--overwrite`` it refuses."""
    out = tmp_path / "out"

    def split(*extra: str):
        return CliRunner().invoke(
            cli, ["data", "split", out.as_uri(), "--dataset", "fashion-mnist", "--limit", "90", *extra]
        )

    assert split("--clients", "5", "--only-clients", "1,2,4").exit_code == 0  # client 3: none
    refused = split("--clients", "2")
    assert refused.exit_code == 2, refused.output
    assert (
        f"{(out / '1' / 'train.safetensors').as_uri()} already exists (2 of the 4 shards to write do, "
        "and 4 shards the split would remove); nothing was written"
    ) in refused.output
    assert len(shard_files(out)) == 6
    some = split("--clients", "2", "--only-clients", "0", "--overwrite")
    assert some.exit_code == 0, some.output
    assert "removed" not in some.output
    assert sorted({k.split("/")[0] for k in shard_files(out)}) == ["0", "1", "2", "4"]
    every = split("--clients", "2", "--overwrite")
    assert every.exit_code == 0, every.output
    assert "removed the shards of clients 2,4 (beyond the 2 clients)" in every.output
    assert sorted(shard_files(out)) == [
        "0/test.safetensors",
        "0/train.safetensors",
        "1/test.safetensors",
        "1/train.safetensors",
    ]
    per_client = DataOptions(source="per-client", uri=out.as_uri() + "/{client}/")
    with pytest.raises(ClientDataError, match="client 2: no shard at"):
        client_data(settings(clients=3), per_client, "2", "train")


def test_data_split_overwrite_into_per_client_buckets_removes_stale_shards(s3_server, s3_env, fmnist_dir):
    """With ``{client}`` in the bucket's name (nothing to list), the clients beyond the count are found
    one bucket after another; the written clients' old test shards go too."""
    template = f"{s3_env}-{{client}}/fmnist/"
    try:
        split_dataset(SplitSpec.from_settings(settings(clients=3, data_limit=90)), template)
        spec = SplitSpec.from_settings(settings(clients=2, data_limit=90, seed=1))
        result = split_dataset(spec, template, test=False, overwrite=True)
        assert [shard_exists(shard_uri(template, c, s)) for c in "012" for s in ("train", "test")] == [
            True,
            False,
            True,
            False,
            False,
            False,
        ]
        assert (result.stale_tests, result.beyond) == ([0, 1], [2])
    finally:
        for client in "012":
            empty_bucket(s3_server, f"{s3_env.removeprefix('s3://')}-{client}")


def test_a_data_split_that_fails_on_bad_input_replaces_and_removes_nothing(tmp_path, fmnist_dir):
    """A split whose test split cannot be read wrote the train shards first: the dataset is read and
    partitioned before any shard is written or removed, so a bad input leaves the earlier split whole."""
    out = tmp_path / "out"
    args = ["data", "split", out.as_uri(), "--dataset", "fashion-mnist", "--limit", "90"]
    assert CliRunner().invoke(cli, [*args, "--clients", "3"]).exit_code == 0
    before = shard_files(out)
    bad = tmp_path / "bad-dataset"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (bad / name).symlink_to(fmnist_dir / name)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (bad / name).write_bytes(b"not gzip")
    failed = CliRunner().invoke(
        cli, [*args, "--clients", "2", "--seed", "1", "--data-dir", str(bad), "--overwrite"]
    )
    assert failed.exit_code == 2, failed.output
    lines = failed.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot read {bad / 't10k-images-idx3-ubyte.gz'}")
    assert shard_files(out) == before


@pytest.mark.parametrize("out", ["shards/{clients}/", "s3://site-{client_id}/fmnist/"])
def test_data_split_into_a_template_with_a_mistyped_placeholder_writes_nothing(tmp_path, monkeypatch, out):
    """shards/{clients}/ wrote every client's shards into a directory named {clients}."""
    monkeypatch.chdir(tmp_path)
    args = ["data", "split", out, "--dataset", "fashion-mnist", "--clients", "2", "--limit", "90"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    brace = "{" + out.split("{")[1].split("}")[0] + "}"
    assert result.output.strip() == (
        f"error: {out}: {brace} is no placeholder; the only one is {{client}} (e.g. "
        "s3://bucket/sites/{client}/); nothing was written"
    )
    assert list(tmp_path.iterdir()) == []


def test_data_split_with_alpha_but_no_dirichlet_partition_writes_nothing(tmp_path, monkeypatch):
    """--alpha 0.3 without --partition dirichlet wrote IID shards."""
    monkeypatch.chdir(tmp_path)
    args = ["data", "split", "out", "--dataset", "fashion-mnist", "--clients", "2", "--alpha", "0.3"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: Invalid value for '--alpha': 0.3 is the concentration of partition dirichlet; partition iid "
        "does not use it (add --partition dirichlet)"
    )
    assert list(tmp_path.iterdir()) == []


SITES_CONFIG = """\
experiment: sites
clients: 4
data_limit: 200
seed: 3
partition: dirichlet
placement:
  - name: site-a
    clients: [0, 2]
  - name: site-b
    clients: [1, 3]
"""


def test_data_split_of_some_clients_writes_exactly_their_shards_of_the_full_split(tmp_path, fmnist_dir):
    """A site's PVC or disk gets only its clients' shards (``--group``, ``--only-clients``): the same bytes
    a split of every client writes for them, since the partition is still of all the clients."""
    config = tmp_path / "sites.yaml"
    config.write_text(SITES_CONFIG)

    def split(out: str, *extra: str):
        return CliRunner().invoke(
            cli, ["data", "split", (tmp_path / out).as_uri(), "--config", str(config), *extra]
        )

    def written(out: str) -> dict[str, bytes]:
        return {
            p.relative_to(tmp_path / out).as_posix(): p.read_bytes() for p in (tmp_path / out).rglob("*.*")
        }

    assert split("full").exit_code == 0
    full = written("full")
    assert len(full) == 8
    site_a = split("a", "--group", "site-a")
    assert site_a.exit_code == 0, site_a.output
    assert "wrote 2 of 4 clients' shards (clients 0,2; dirichlet, seed 3" in site_a.output
    assert written("a") == {k: v for k, v in full.items() if k.split("/")[0] in ("0", "2")}
    some = split("some", "--only-clients", "1-3")
    assert some.exit_code == 0, some.output
    assert written("some") == {k: v for k, v in full.items() if k.split("/")[0] in ("1", "2", "3")}

    for extra, message in [
        (
            ("--group", "site-c"),
            f"'site-c': no placement group of that name in {config} (groups: site-a, site-b)",
        ),
        (("--only-clients", "2,4"), "client 4 is not one of the 4 clients (0-3)"),
        (("--only-clients", "two"), "'two': expected client ids such as 0,1 or 0-3"),
        (("--group", "site-a", "--only-clients", "0"), "give --group or --only-clients, not both"),
    ]:
        bad = split("bad", *extra)
        assert bad.exit_code == 2, bad.output
        errors = [line for line in bad.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1, bad.output
        assert message in errors[0]
        assert not (tmp_path / "bad").exists()
    no_config = CliRunner().invoke(
        cli,
        [
            "data",
            "split",
            str(tmp_path / "bad"),
            "--dataset",
            "fashion-mnist",
            "--clients",
            "4",
            "--group",
            "a",
        ],
    )
    assert no_config.exit_code == 2
    assert "--group names a placement group of --config" in no_config.output


def step_train_part(s: Settings, client: str):
    from argofl.steps.client_data import partition_split

    return partition_split(s, "train", client)


def init_per_client(s: Settings, run_key: str, template: str) -> None:
    """``init`` of a run whose clients read their shards at ``template``."""
    data = DataOptions(source="per-client", uri=template)
    step_init.run(s, run_key=run_key, workflow_name="w", workflow_uid="u", data=data)


def write_sites(tmp_path, sizes: dict[str, int], *, classes: int = 10) -> str:
    rng = np.random.default_rng(0)
    template = (tmp_path / "sites").as_uri() + "/{client}"
    for client, n in sizes.items():
        x = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
        y = rng.integers(0, classes, size=n).astype(np.int64)
        write_shard(shard_uri(template, client, "train"), x, y)
    return template


def _train_round_one(run_key: str) -> list[Any]:
    """Distribute round 1 of ``run_key`` and run ``argofl step train`` for each of its pods."""
    groups = step_distribute.run(run_key=run_key, round=1)
    return [
        CliRunner().invoke(step_cli, ["train", "--run-key", run_key, "--round", "1", "--clients", g])
        for g in groups
    ]


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing", "client 1: no shard at file://"),
        ("empty", "the shard is empty (0 examples)"),
        ("classes", "labels in [0, 11] exceed the model's 10 outputs"),
        ("shape", "x must be uint8 (N, 28, 28, 1) images for the model, got uint8 (4, 32, 32, 3)"),
        ("names", "holds tensors ['images', 'y'], expected exactly x and y"),
        ("garbage", "client 1:"),
    ],
)
def test_bad_shard_fails_its_client_with_one_line_and_the_round_goes_on(env, tmp_path, problem, expected):
    template = write_sites(tmp_path, {"0": 40, "2": 40})
    uri = shard_uri(template, "1", "train")
    path = tmp_path / "sites" / "1" / "train.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    if problem == "empty":
        write_shard(uri, np.zeros((0, 28, 28, 1), np.uint8), np.zeros(0, np.int64))
    elif problem == "classes":
        write_shard(uri, np.zeros((12, 28, 28, 1), np.uint8), np.arange(12, dtype=np.int64))
    elif problem == "shape":
        write_shard(uri, np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64))
    elif problem == "names":
        from argofl.steps.checkpoint import encode_arrays

        path.write_bytes(encode_arrays({"images": np.zeros((1, 28, 28, 1), np.uint8), "y": np.zeros(1)}))
    elif problem == "garbage":
        path.write_bytes(b"not a safetensors file")
    s = settings(min_clients=2, rounds=1)
    data = DataOptions(source="per-client", uri=template)
    step_init.run(s, run_key="data-test/bad", workflow_name="w", workflow_uid="u", data=data)
    outcomes = _train_round_one("data-test/bad")
    assert [o.exit_code for o in outcomes] == [0, 2, 0]
    errors = [line for line in outcomes[1].output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert expected in errors[0]
    assert "client 1" in errors[0]
    metrics = step_aggregate.run(run_key="data-test/bad", round=1)
    assert metrics["clients"] == 2
    assert metrics["rejected"] == 1
    manifest = load_manifest(env, RunLayout("data-test/bad").global_key(1))
    assert manifest.examples == 80


def test_a_bad_shard_in_a_pod_of_several_clients_gives_its_reason_in_the_rounds_report(env, tmp_path):
    """A pod summing its clients (clients_per_pod > 1) records a client whose data it cannot use with the
    data error, as it records a refused update: the round's per-client table gives that reason."""
    from argofl.steps import round_report

    template = write_sites(tmp_path, {"0": 40, "2": 40})  # client 1 has no shard
    s = settings(min_clients=2, rounds=1, clients_per_pod=3)
    init_per_client(s, "data-test/pod", template)
    [group] = step_distribute.run(run_key="data-test/pod", round=1)
    outcome = CliRunner().invoke(
        step_cli, ["train", "--run-key", "data-test/pod", "--round", "1", "--clients", group]
    )
    assert outcome.exit_code == 2
    metrics = step_aggregate.run(run_key="data-test/pod", round=1)
    assert (metrics["clients"], metrics["rejected"]) == (2, 1)
    report = round_report.load(env, RunLayout("data-test/pod"), 1)
    assert report is not None
    rows = {row[0]: row for row in report.table["data"]}
    assert rows["1"][1] == "rejected"
    assert "client 1: no shard at file://" in rows["1"][-1], rows["1"]
    assert [rows[c][1] for c in ("0", "2")] == ["aggregated", "aggregated"]


def test_bad_client_below_min_clients_fails_the_round(env, tmp_path):
    template = write_sites(tmp_path, {"0": 40})
    s = settings(clients=2, min_clients=2, rounds=1)
    init_per_client(s, "data-test/few", template)
    step_distribute.run(run_key="data-test/few", round=1)
    step_train.run(run_key="data-test/few", round=1, clients="0")
    with pytest.raises(ClientDataError, match="client 1: no shard at"):
        step_train.run(run_key="data-test/few", round=1, clients="1")
    with pytest.raises(
        AggregationError,
        match=r"1 valid updates of 2 sampled clients, need min_clients=2; global checkpoint not written "
        r"\(rejected: \['1'\]; client 1: no update \(its train step failed or did not run\)\)$",
    ):
        step_aggregate.run(run_key="data-test/few", round=1)


def test_a_client_with_more_examples_than_its_update_may_claim_is_not_trained(env, tmp_path):
    """max_client_examples caps what an update may claim; a client holding more would train for nothing
    (the aggregator rejects the update, and the round says only that), so it fails first, saying why."""
    template = write_sites(tmp_path, {"0": 40, "1": 50, "2": 40})
    s = settings(min_clients=2, rounds=1, max_client_examples=45)
    init_per_client(s, "data-test/cap", template)
    outcomes = _train_round_one("data-test/cap")
    assert [o.exit_code for o in outcomes] == [0, 2, 0]
    errors = [line for line in outcomes[1].output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: client 1: 50 training examples, above max_client_examples=45 (its update would be "
        "rejected): not trained; raise the cap or give it fewer"
    ]
    layout = RunLayout("data-test/cap")
    assert not checkpoint_exists(env, layout.update_key(1, "1"))
    metrics = step_aggregate.run(run_key="data-test/cap", round=1)
    assert (metrics["clients"], metrics["rejected"]) == (2, 1)
    assert load_manifest(env, layout.global_key(1)).examples == 80


def test_example_loader_feeds_clients_and_federated_evaluation(env):
    s = settings(rounds=1)
    data = DataOptions(source="loader", loader="examples.client_loaders:synthetic_sites")
    [evaluation] = run_rounds(s, "data-test/loader", data)
    manifest = load_manifest(env, RunLayout("data-test/loader").global_key(1))
    from examples.client_loaders import synthetic_sites

    train_sizes = [len(synthetic_sites(c, "train")[1]) for c in "012"]
    assert manifest.examples == sum(train_sizes)
    assert evaluation["fed-clients"] == 3
    assert evaluation["fed-examples"] == sum(len(synthetic_sites(c, "test")[1]) for c in "012")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("raise OSError('site 1 is offline')", "raised OSError: site 1 is offline; the client is skipped"),
        ("return 'nope'", "returned str, expected a tuple (x, y) or None"),
        ("return np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.int64)", "x must be uint8 (N, 28, 28, 1)"),
        ("return np.zeros((3, 28, 28, 1), np.uint8), np.zeros(2, np.int64)", "y must be int64 (3,) labels"),
        ("return None", "returned None: every client needs a train split"),
    ],
)
def test_loader_that_raises_or_returns_wrong_shapes_fails_its_client(
    env, tmp_path, monkeypatch, body, expected
):
    module = f"site_loader_{abs(hash(body))}"
    (tmp_path / f"{module}.py").write_text(
        "import numpy as np\n\n\ndef load(client, split):\n"
        f"    if client == '1':\n        {body}\n"
        "    return np.zeros((8, 28, 28, 1), np.uint8), np.zeros(8, np.int64)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = DataOptions(source="loader", loader=f"{module}:load")
    step_init.run(settings(rounds=1), run_key="data-test/l", workflow_name="w", workflow_uid="u", data=data)
    step_train.run(run_key="data-test/l", round=1, clients="0")
    with pytest.raises(ClientDataError) as info:
        step_train.run(run_key="data-test/l", round=1, clients="1")
    message = str(info.value)
    assert "\n" not in message
    assert f"client 1: loader {module}:load('1', 'train')" in message
    assert expected in message


def test_aggregator_reads_updates_never_data(env, tmp_path, monkeypatch):
    """A store that records every read: aggregate touches the run's plan, globals and updates only."""
    template = (tmp_path / "store").as_uri() + "/site-data/{client}/"
    s = settings(rounds=1)
    split_dataset(SplitSpec.from_settings(s), template)
    step_init.run(
        s,
        run_key="data-test/rec",
        workflow_name="w",
        workflow_uid="u",
        data=DataOptions(source="per-client", uri=template),
    )
    for group in step_distribute.run(run_key="data-test/rec", round=1):
        step_train.run(run_key="data-test/rec", round=1, clients=group)
    reads: list[str] = []
    original = FileStore.open_read

    def recording_open_read(self, key):
        reads.append(str(self._path(key)))
        return original(self, key)

    def no_dataset(*args, **kwargs):
        raise AssertionError(f"aggregate loaded a dataset: {args}")

    monkeypatch.setattr(FileStore, "open_read", recording_open_read)
    monkeypatch.setattr("argofl.steps.data.load_dataset", no_dataset)
    step_aggregate.run(run_key="data-test/rec", round=1)
    run_dir = str(tmp_path / "store" / "data-test" / "rec")
    assert reads, "the recording store saw no reads"
    assert all(r.startswith(run_dir + "/") for r in reads), reads
    assert not [r for r in reads if "site-data" in r]
    touched = {r.removeprefix(run_dir + "/").split(".")[0] for r in reads}
    # its own output too: the committed global's manifest, which the round's MLflow metrics come from
    assert touched <= {"run", "round-0001/plan", "round-0000/global", "round-0001/global"} | {
        f"round-0001/updates/client-{c}" for c in "012"
    }
    # evaluate (no central test set) reads the clients' reported metrics, not their data
    reads.clear()
    step_evaluate.run(run_key="data-test/rec", round=1)
    assert not [r for r in reads if "site-data" in r]


def test_data_section_is_validated_with_one_line_naming_the_key():
    base = {"experiment": "x"}
    with pytest.raises(
        ConfigError, match=r"data.uri: source per-client needs a URI template with \{client\}"
    ):
        config_from_mapping(
            {**base, "data": {"source": "per-client", "uri": "s3://b/sites/"}}, name="x", where="x"
        )
    with pytest.raises(ConfigError, match=r"data\.source: must be one of partition, per-client, loader"):
        config_from_mapping({**base, "data": {"source": "nfs"}}, name="x", where="x")
    with pytest.raises(ConfigError, match=r"data\.loader: source loader needs a function"):
        config_from_mapping({**base, "data": {"source": "loader", "loader": "mod"}}, name="x", where="x")
    with pytest.raises(ConfigError, match=r"unknown key data\.url"):
        config_from_mapping({**base, "data": {"url": "s3://x"}}, name="x", where="x")
    with pytest.raises(SettingsError, match=r"data\.central_eval"):
        DataOptions(central_eval="sometimes")
    assert DataOptions().central
    assert not DataOptions(source="per-client", uri="/d/{client}").central
    assert DataOptions(source="loader", loader="m:f", central_eval="dataset").central


def test_data_split_into_a_bucket_reads_back_with_the_clients_own_credentials(
    s3_env, fmnist_dir, monkeypatch
):
    template = f"{s3_env}/sites/{{client}}/"
    s = settings(clients=2, data_limit=100)
    split_dataset(SplitSpec.from_settings(s), template, test=False)
    seen: list[str | None] = []
    import argofl.steps.store

    real = argofl.steps.store.open_store

    def spy(uri):
        seen.append(os.environ.get("ARGOFL_S3_ACCESS_KEY"))
        return real(uri)

    store_key = os.environ["ARGOFL_S3_ACCESS_KEY"]
    monkeypatch.setenv("ARGOFL_DATA_S3_ACCESS_KEY", "site-1-key")
    monkeypatch.setattr(argofl.steps.store, "open_store", spy)
    shard = read_shard(shard_uri(template, "1", "train"), client="1", input_shape=(28, 28, 1), num_classes=10)
    assert shard is not None
    assert len(shard) == 50
    assert seen == ["site-1-key"]  # the shard was opened with the client's credentials...
    assert os.environ["ARGOFL_S3_ACCESS_KEY"] == store_key  # ...and the run store's are back afterwards
    assert (
        read_shard(
            shard_uri(template, "1", "test"),
            client="1",
            input_shape=(28, 28, 1),
            num_classes=10,
            required=False,
        )
        is None
    )


def test_npz_sites_example_loader_reads_a_site_directory(tmp_path, monkeypatch):
    from examples.client_loaders import npz_sites

    (tmp_path / "3").mkdir()
    x = np.zeros((5, 28, 28, 1), np.uint8)
    np.savez(tmp_path / "3" / "train.npz", x=x, y=np.arange(5, dtype=np.int32))
    monkeypatch.setenv("ARGOFL_SITE_DIR", str(tmp_path))
    loaded = npz_sites("3", "train")
    assert loaded is not None
    assert loaded[0].shape == (5, 28, 28, 1)
    assert loaded[1].dtype == np.int64
    assert npz_sites("3", "test") is None


PER_CLIENT_CONFIG = """\
experiment: rel-shards
clients: 2
min_clients: 2
rounds: 1
data_limit: 200
data:
  source: per-client
  uri: {uri}
"""


@pytest.mark.parametrize("uri", ["shards/{client}/", "file:shards/{client}"])
def test_a_relative_shard_uri_is_the_users_in_argofl_run_and_run_local(tmp_path, monkeypatch, uri):
    """Steps run in their own working directories: a relative ``data.uri`` (where ``argofl data split
    shards`` wrote, from the same directory) is made absolute against the user's, ``{client}`` kept, by
    ``argofl run`` and the Python API alike, as ``data-dir`` is."""
    from argofl import api
    from argofl.pipelines import commands
    from argofl.pipelines import local as local_executor

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(PER_CLIENT_CONFIG.format(uri=uri))
    seen: list[dict[str, str]] = []
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)

    def record(manifest: object, params: dict[str, str], *args: object, **kwargs: object) -> object:
        seen.append(dict(params))
        return SimpleNamespace(phase="Failed", stopped_by=None)  # a run_workflow result (nothing ran)

    monkeypatch.setattr(commands, "_run_locally", record)
    result = CliRunner().invoke(cli, ["run", "cfg.yaml", "--runs-dir", "r"])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(local_executor, "run_workflow", record)
    api.run_local("cfg.yaml", runs_dir="r")
    api.run_local(api.build("cfg.yaml"), runs_dir="r")  # the declared value, from the manifest
    for params in seen:
        template = params["data-uri"]
        assert "{client}" in template
        assert shard_uri(template, "1", "train").removeprefix("file://") == str(
            tmp_path / "shards" / "1" / "train.safetensors"
        )
    assert len(seen) == 3
    given = CliRunner().invoke(cli, ["run", "cfg.yaml", "--runs-dir", "r", "-p", "data-uri=s/{client}/"])
    assert given.exit_code == 0, given.output
    assert seen[-1]["data-uri"] == f"{tmp_path}/s/{{client}}/"
    kept = CliRunner().invoke(cli, ["run", "cfg.yaml", "-p", "data-uri=s3://site-{client}/fmnist/"])
    assert kept.exit_code == 0, kept.output
    assert seen[-1]["data-uri"] == "s3://site-{client}/fmnist/"


@pytest.mark.parametrize(
    ("loader", "expected"),
    [
        ("no_such_sites_xyz:load", "cannot import data loader module 'no_such_sites_xyz'"),
        ("examples.client_loaders:nope", "data loader 'examples.client_loaders:nope' is not a callable"),
    ],
)
def test_a_loader_that_cannot_be_imported_is_named_a_data_loader(env, loader, expected):
    """The loader's import errors name it a data loader (not a model factory) and say what happens."""
    data = DataOptions(source="loader", loader=loader)
    step_init.run(settings(rounds=1), run_key="data-test/imp", workflow_name="w", workflow_uid="u", data=data)
    with pytest.raises(ClientDataError) as info:
        step_train.run(run_key="data-test/imp", round=1, clients="0")
    message = str(info.value)
    assert message.startswith(f"client 0: loader {loader}('0', 'train'): {expected}")
    assert "model" not in message
    assert message.endswith("the client is skipped this round")


MY_LOADER = """
import numpy as np


def load(client, split):
    rng = np.random.default_rng([int(client), split == "test"])
    return rng.integers(0, 256, (24, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 24).astype(np.int64)
"""


@pytest.mark.parametrize("how", ["argofl run", "run_local"])
def test_a_loader_in_the_users_directory_is_found_by_the_steps_of_a_local_run(tmp_path, fmnist_dir, how):
    """Steps run in their own working directories; a local run puts the directory it starts in on their
    PYTHONPATH, so ``loader: mysites:load`` beside the config works as it would for ``python`` there."""
    import subprocess
    import sys

    import yaml

    from tests.processes import ARGOFL, argofl_env

    (tmp_path / "mysites.py").write_text(MY_LOADER)
    config = yaml.safe_load((ROOT / "configs" / "fedavg-fmnist-torch.yaml").read_text())
    config.update(experiment="mine", data={"source": "loader", "loader": "mysites:load"})
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    params = {"rounds": "1", "clients": "2", "min-clients": "2", "data-dir": str(fmnist_dir)}
    if how == "argofl run":
        command = [*ARGOFL, "run", "mine.yaml", *(f"--parameter={k}={v}" for k, v in params.items())]
    else:
        code = "import json, sys; from argofl import api; api.run_local('mine.yaml', json.loads(sys.argv[1]))"
        command = [sys.executable, "-c", code, json.dumps(params)]
    done = subprocess.run(
        command, cwd=tmp_path, env=argofl_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(next((tmp_path / "runs" / "workflows").glob("*/summary.json")).read_text())
    assert [row["round"] for row in summary["rounds"]] == [1]
    assert "No module named" not in done.stdout + done.stderr
