"""The FedAvg steps as plain functions over a file:// store and a local MLflow store.

FedAvg with one client equals centralized training; the same seed gives byte-identical checkpoints;
bad updates are rejected with reasons, too few valid updates fail the round, nothing is overwritten.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from argofl.steps import step_aggregate, step_distribute, step_evaluate, step_init, step_train, tracking
from argofl.steps.checkpoint import CheckpointExists, checkpoint_keys, load_checkpoint, save_checkpoint
from argofl.steps.cli import step as step_cli
from argofl.steps.data import DatasetError, load_dataset
from argofl.steps.frameworks import get_backend
from argofl.steps.partition import client_seed
from argofl.steps.runinfo import RunError, RunLayout, RunRecord
from argofl.steps.settings import Settings, SettingsError
from argofl.steps.store import FileStore


@pytest.fixture
def env(tmp_path, monkeypatch, fmnist_dir):
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return FileStore(tmp_path / "store")


def settings(**overrides) -> Settings:
    base = {
        "experiment": "steps-test",
        "data_limit": 600,
        "clients": 3,
        "min_clients": 1,
        "rounds": 2,
        "local_epochs": 1,
        "batch_size": 32,
        "lr": 0.05,
        "seed": 7,
    }
    return Settings.from_mapping({**base, **overrides})


def run_rounds(s: Settings, run_key: str, rounds: int) -> None:
    step_init.run(s, run_key=run_key, workflow_name=run_key.split("/")[-1], workflow_uid="uid")
    for r in range(1, rounds + 1):
        for group in step_distribute.run(run_key=run_key, round=r):
            step_train.run(run_key=run_key, round=r, clients=group)
        step_aggregate.run(run_key=run_key, round=r)


def resume_init(s: Settings, run_key: str, start_round: int, resume_from: str) -> dict[str, str]:
    """``init`` of a run continuing ``resume_from`` at ``start_round``."""
    return step_init.run(
        s,
        run_key=run_key,
        workflow_name=run_key.split("/")[-1],
        workflow_uid="u",
        start_round=start_round,
        resume_from=resume_from,
    )


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_fedavg_with_one_client_equals_centralized_training(env, framework):
    """Same seed, same data, E=2 local epochs: FedAvg over one client is centralized training."""
    s = settings(clients=1, rounds=1, local_epochs=2, framework=framework, data_limit=400)
    run_rounds(s, f"steps-test/one-client-{framework}", 1)
    federated = load_checkpoint(env, RunLayout(f"steps-test/one-client-{framework}").global_key(1)).arrays

    backend = get_backend(framework)
    backend.configure(threads=s.threads)
    data = load_dataset("fashion-mnist", "train", limit=s.data_limit)
    model = backend.build_model("cnn", input_shape=data.input_shape, num_classes=10, seed=s.seed)
    backend.train(
        model,
        data.x,
        data.y,
        epochs=2,
        batch_size=s.batch_size,
        lr=s.lr,
        momentum=s.momentum,
        seed=client_seed(s.seed, 1, "0"),
    )
    centralized = backend.get_weights(model)
    assert sorted(federated) == sorted(centralized)
    for name, value in centralized.items():
        assert federated[name].tobytes() == value.tobytes(), name


def test_same_seed_twice_gives_byte_identical_final_checkpoint(env):
    s = settings(clients=2, rounds=2)
    for run in ("a", "b"):
        run_rounds(s, f"steps-test/{run}", 2)
    blobs = [
        env.get_bytes(RunLayout(f"steps-test/{run}").global_key(2) + ".safetensors") for run in ("a", "b")
    ]
    assert hashlib.sha256(blobs[0]).digest() == hashlib.sha256(blobs[1]).digest()
    other = settings(clients=2, rounds=2, seed=8)
    run_rounds(other, "steps-test/c", 1)
    first_round = [
        env.get_bytes(RunLayout(f"steps-test/{r}").global_key(1) + ".safetensors") for r in ("a", "c")
    ]
    assert first_round[0] != first_round[1]


def test_distribute_samples_fraction_with_min_clients_and_seed(env):
    s = settings(clients=10, fraction=0.3, min_clients=2, clients_per_pod=2)
    assert step_distribute.sample_clients(s, 1) == step_distribute.sample_clients(s, 1)
    assert len(step_distribute.sample_clients(s, 1)) == 3
    assert step_distribute.sample_clients(s, 1) != step_distribute.sample_clients(s, 2)
    assert len(step_distribute.sample_clients(settings(clients=10, fraction=0.1, min_clients=4), 1)) == 4
    assert step_distribute.group_clients(3, [1, 4, 6], 2) == ["round 3 / clients 1,4", "round 3 / client 6"]


def corrupt_round(env: FileStore, layout: RunLayout) -> None:
    """Client 0: wrong shape; client 1: NaN; client 2 stays valid."""
    update0 = load_checkpoint(env, layout.update_key(1, "0")).arrays
    name = sorted(update0)[0]
    update0[name] = np.zeros((3, 3), dtype=np.float32)
    save_checkpoint(
        env, layout.update_key(1, "0"), update0, round=1, client="0", examples=200, overwrite=True
    )
    update1 = load_checkpoint(env, layout.update_key(1, "1")).arrays
    update1[name] = update1[name].copy()
    update1[name].flat[0] = np.nan
    save_checkpoint(
        env, layout.update_key(1, "1"), update1, round=1, client="1", examples=200, overwrite=True
    )


def train_round_one(s: Settings, run_key: str) -> RunLayout:
    step_init.run(s, run_key=run_key, workflow_name="w", workflow_uid="u")
    for group in step_distribute.run(run_key=run_key, round=1):
        step_train.run(run_key=run_key, round=1, clients=group)
    return RunLayout(run_key)


def test_bad_updates_are_rejected_and_the_round_goes_on(env, caplog):
    layout = train_round_one(settings(), "steps-test/bad")
    corrupt_round(env, layout)
    metrics = step_aggregate.run(run_key="steps-test/bad", round=1)
    assert metrics["clients"] == 1
    assert metrics["rejected"] == 2
    text = caplog.text
    assert "rejected client 0" in text
    assert "shape (3, 3)" in text
    assert "rejected client 1" in text
    assert "NaN" in text.split("rejected client 1")[1].splitlines()[0]
    good = load_checkpoint(env, layout.update_key(1, "2")).arrays
    new_global = load_checkpoint(env, layout.global_key(1)).arrays
    for name, value in good.items():
        assert new_global[name].tobytes() == value.tobytes()


def test_too_few_valid_updates_fail_clearly_and_write_nothing(env):
    layout = train_round_one(settings(min_clients=2), "steps-test/few")
    corrupt_round(env, layout)
    # a flipped byte in the valid update too → sha256 mismatch
    blob_key = layout.update_key(1, "2") + ".safetensors"
    blob = bytearray(env.get_bytes(blob_key))
    blob[-1] ^= 0xFF
    env.put_bytes(blob_key, bytes(blob))
    before = env.get_bytes(layout.global_key(0) + ".safetensors")
    result = CliRunner().invoke(step_cli, ["aggregate", "--run-key", "steps-test/few", "--round", "1"])
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error == [error[0]]
    assert "round 1: 0 valid updates of 3 sampled clients, need min_clients=2" in error[0]
    assert not env.exists(layout.global_key(1) + ".json")
    assert env.get_bytes(layout.global_key(0) + ".safetensors") == before


def test_init_refuses_to_overwrite_a_run(env):
    s = settings()
    first = step_init.run(s, run_key="steps-test/once", workflow_name="w", workflow_uid="u")
    record = env.get_bytes("steps-test/once/run.json")
    with pytest.raises(RunError, match=r"already initialised by workflow w .*nothing was overwritten"):
        step_init.run(s, run_key="steps-test/once", workflow_name="other", workflow_uid="u2")
    with pytest.raises(RunError, match="already initialised"):
        step_init.run(settings(seed=8), run_key="steps-test/once", workflow_name="w", workflow_uid="u")
    # a retry of the same workflow's init is no error: it returns what the first attempt recorded
    assert step_init.run(s, run_key="steps-test/once", workflow_name="w", workflow_uid="u") == first
    assert env.get_bytes("steps-test/once/run.json") == record
    with pytest.raises(CheckpointExists):
        save_checkpoint(env, RunLayout("steps-test/once").global_key(0), {"x": np.zeros(1)}, round=0)


def test_missing_dataset_is_one_line_and_nothing_is_written(env, tmp_path):
    s = settings(data_dir=str(tmp_path / "no-data"))
    with pytest.raises(DatasetError):
        step_init.run(s, run_key="steps-test/nodata", workflow_name="w", workflow_uid="u")
    params = [a for k, v in s.to_params().items() for a in ("--param", f"{k}={v}")]
    result = CliRunner().invoke(
        step_cli, ["init", "--run-key", "steps-test/nodata2", "--workflow-name", "w", *params]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert "fashion-mnist" in lines[0]
    assert "no-data" in lines[0]
    assert env.list("steps-test/") == []


def test_bad_workflow_parameter_fails_init_naming_it(env):
    params = {**settings().to_params(), "rounds": "-3"}
    args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
    result = CliRunner().invoke(
        step_cli, ["init", "--run-key", "steps-test/neg", "--workflow-name", "w", *args]
    )
    assert result.exit_code == 2
    assert "rounds: must be ≥ 1, got -3" in result.output


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--start-round", "0"], "error: Invalid value for '--start-round': 0 is not in the range x>=1."),
        (
            ["--start-round", "x"],
            "error: Invalid value for '--start-round': 'x' is not a valid integer range.",
        ),
        (["--no-such-option"], "error: No such option '--no-such-option'."),
    ],
)
def test_an_option_value_a_step_refuses_is_its_one_error_line(env, args, line):
    """Click's usage text had no ``error: …`` line, so the node's message was only 'Error (exit code 2)'
    (argo submit -p start-round=0, or argofl run's before it was checked there)."""
    given = [a for k, v in settings().to_params().items() for a in ("--param", f"{k}={v}")]
    result = CliRunner().invoke(
        step_cli, ["init", "--run-key", "steps-test/opt", "--workflow-name", "w", *given, *args]
    )
    assert result.exit_code == 2, result.output
    assert [x for x in result.output.splitlines() if x.lower().startswith("error")] == [line]
    assert env.list("steps-test/") == []


def test_init_refuses_more_clients_than_allowed(env):
    params = {**settings().to_params(), "clients": "100000000000"}
    given = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
    args = ["init", "--run-key", "steps-test/many", "--workflow-name", "w", *given]
    result = CliRunner().invoke(step_cli, args)
    assert result.exit_code == 2
    assert "clients: must be ≤ 1000000 (distribute samples each round from every client)" in result.output
    assert env.list("steps-test/") == []


def test_distribute_refuses_a_run_record_of_more_clients_than_allowed(tmp_path, monkeypatch):
    """10**11 clients frozen in run.json (by an older init, or by hand): sampling them was a MemoryError."""
    store = FileStore(tmp_path / "store")
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    layout = RunLayout("steps-test/many")
    record = json.loads(RunRecord(settings(), "mlflow-run", "w", "uid", 0.0).to_json())
    record["settings"]["clients"] = 10**11
    store.put_bytes(layout.record_key, json.dumps(record).encode())
    store.put_bytes(checkpoint_keys(layout.global_key(0))[1], b"{}")  # round 1 may start: it samples
    result = CliRunner().invoke(step_cli, ["distribute", "--run-key", "steps-test/many", "--round", "1"])
    assert result.exit_code == 2, result.output
    assert "clients: must be ≤ 1000000" in result.output
    assert "MemoryError" not in result.output


def test_distribute_needs_previous_global(env):
    train_round_one(settings(), "steps-test/gap")
    with pytest.raises(RunError, match="round 2 needs the global checkpoint of round 1"):
        step_distribute.run(run_key="steps-test/gap", round=2)


def test_train_retry_skips_committed_updates(env, caplog):
    caplog.set_level("INFO")
    layout = train_round_one(settings(), "steps-test/retry")
    before = env.get_bytes(layout.update_key(1, "0") + ".safetensors")
    step_train.run(run_key="steps-test/retry", round=1, clients="0")
    assert "already committed" in caplog.text
    assert env.get_bytes(layout.update_key(1, "0") + ".safetensors") == before


def test_store_env_missing_is_clear(monkeypatch):
    monkeypatch.delenv("ARGOFL_STORE", raising=False)
    with pytest.raises(RunError, match="ARGOFL_STORE is not set"):
        step_distribute.run(run_key="x/y", round=1)


def test_resubmission_from_a_round_equals_an_uninterrupted_run(env):
    s = settings(clients=2, rounds=3)
    run_rounds(s, "steps-test/full", 3)
    run_rounds(s, "steps-test/part", 2)
    resume_init(s, "steps-test/resumed", 3, "steps-test/part")
    assert not env.exists(RunLayout("steps-test/resumed").global_key(0) + ".json")
    for group in step_distribute.run(run_key="steps-test/resumed", round=3):
        step_train.run(run_key="steps-test/resumed", round=3, clients=group)
    step_aggregate.run(run_key="steps-test/resumed", round=3)
    full, resumed = (
        env.get_bytes(RunLayout(f"steps-test/{r}").global_key(3) + ".safetensors")
        for r in ("full", "resumed")
    )
    assert full == resumed


def test_train_refuses_a_round_beyond_the_runs_last_and_writes_nothing(env):
    """`argofl step train --round 2` by hand on a finished 1-round run wrote round-0002 into it."""
    run_rounds(settings(clients=1, rounds=1, data_limit=200), "steps-test/done", 1)
    with pytest.raises(RunError, match=r"^round must be in 1\.\.1, got 2$"):
        step_train.run(run_key="steps-test/done", round=2, clients="0")
    assert not env.list(RunLayout("steps-test/done").round_prefix(2))


@pytest.mark.parametrize("run_key", ["", "steps-test", "steps-test/", "/steps-test/r", "a/../b", "a/b/c"])
def test_init_refuses_a_run_key_that_is_not_experiment_slash_run_and_writes_nothing(env, run_key):
    """`argofl step init --run-key ''` wrote round-0000 at the store's root before refusing the key."""
    with pytest.raises(RunError, match=r"expected <experiment>/<run>"):
        step_init.run(settings(), run_key=run_key, workflow_name="w", workflow_uid="u")
    assert env.list() == []


def test_resubmission_errors_are_clear(env):
    s = settings(clients=2, rounds=3)
    with pytest.raises(RunError, match="start-round 2 needs resume-from"):
        step_init.run(s, run_key="steps-test/r1", workflow_name="w", workflow_uid="u", start_round=2)
    with pytest.raises(RunError, match=r"start-round must be in 1\.\.3"):
        step_init.run(
            s, run_key="steps-test/r2", workflow_name="w", workflow_uid="u", start_round=4, resume_from="x/y"
        )
    with pytest.raises(
        RunError, match="cannot resume from steps-test/none: no global checkpoint for round 2"
    ):
        step_init.run(
            s,
            run_key="steps-test/r3",
            workflow_name="w",
            workflow_uid="u",
            start_round=3,
            resume_from="steps-test/none",
        )


def test_train_refuses_clients_of_another_round_or_out_of_range(env):
    step_init.run(settings(), run_key="steps-test/labels", workflow_name="w", workflow_uid="u")
    with pytest.raises(RunError, match=r"'round 2 / client 0' belong to round 2, but this step runs round 1"):
        step_train.run(run_key="steps-test/labels", round=1, clients="round 2 / client 0")
    with pytest.raises(RunError, match=r"bad client '3' in 'round 1 / clients 0,3': expected indices 0..2"):
        step_train.run(run_key="steps-test/labels", round=1, clients="round 1 / clients 0,3")
    assert not env.exists(RunLayout("steps-test/labels").update_key(1, "0") + ".json")


# ------------------------------------------------------------------------- server optimizers (FedOpt)


@pytest.mark.parametrize(
    ("strategy", "options"),
    [("fedavgm", {"server_lr": 1.0, "server_momentum": 0.5}), ("fedadam", {"server_lr": 0.01})],
)
def test_server_optimizer_learns_keeps_state_and_resumes_byte_identically(env, strategy, options):
    s = settings(clients=3, rounds=3, data_limit=1500, strategy=strategy, **options)
    run_rounds(s, f"steps-test/{strategy}-full", 3)
    full = RunLayout(f"steps-test/{strategy}-full")
    # each round's optimizer state is a checked checkpoint: m/<tensor> (and v/ for Adam) per tensor
    state = load_checkpoint(env, full.server_state_key(3)).arrays
    weights = load_checkpoint(env, full.global_key(3)).arrays
    slots = ("m", "v") if strategy == "fedadam" else ("m",)
    assert sorted(state) == sorted(f"{slot}/{name}" for slot in slots for name in weights)
    assert all(np.isfinite(a).all() for a in state.values())
    # learning happened: the round-3 model beats chance (0.1) on held-out data by far
    assert step_evaluate.run(run_key=f"steps-test/{strategy}-full", round=3)["accuracy"] > 0.5

    # resuming at round 3 from a run that stopped after round 2 copies the state: same bytes
    run_rounds(s, f"steps-test/{strategy}-part", 2)
    resumed = f"steps-test/{strategy}-resumed"
    step_init.run(
        s, run_key=resumed, workflow_name="r", workflow_uid="u", start_round=3,
        resume_from=f"steps-test/{strategy}-part",
    )  # fmt: skip
    for group in step_distribute.run(run_key=resumed, round=3):
        step_train.run(run_key=resumed, round=3, clients=group)
    step_aggregate.run(run_key=resumed, round=3)
    assert env.get_bytes(RunLayout(resumed).global_key(3) + ".safetensors") == env.get_bytes(
        full.global_key(3) + ".safetensors"
    )


def test_server_state_problems_are_clear(env):
    s = settings(clients=2, rounds=3, strategy="fedavgm")
    run_rounds(s, "steps-test/mom", 1)
    layout = RunLayout("steps-test/mom")
    for group in step_distribute.run(run_key="steps-test/mom", round=2):
        step_train.run(run_key="steps-test/mom", round=2, clients=group)
    env.delete(layout.server_state_key(1) + ".json")
    with pytest.raises(
        RunError, match=r"round 2 \(fedavgm\) needs the server state of round 1 at .*server-state"
    ):
        step_aggregate.run(run_key="steps-test/mom", round=2)
    assert not env.exists(layout.global_key(2) + ".json")
    # a stateful run cannot continue a run that kept no state
    run_rounds(settings(clients=2, rounds=3), "steps-test/plain", 1)
    with pytest.raises(
        RunError, match="cannot resume a fedavgm run from steps-test/plain: it has no server state"
    ):
        step_init.run(
            s, run_key="steps-test/mom2", workflow_name="w", workflow_uid="u", start_round=2,
            resume_from="steps-test/plain",
        )  # fmt: skip
    with pytest.raises(SettingsError, match=r"server_lr: fedadam moves every weight by about server_lr"):
        settings(strategy="fedadam")  # server_lr defaults to 1.0, far too large for Adam


def test_local_mlflow_artifacts_live_beside_the_database_not_in_the_step_cwd(env, tmp_path, monkeypatch):
    """With a sqlite tracking store, MLflow's default artifact root is ./mlruns of whichever process
    created the experiment (a step's scratch directory); argofl puts it beside the database."""
    from mlflow.tracking import MlflowClient

    scratch = tmp_path / "step-cwd"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    step_init.run(settings(), run_key="steps-test/art", workflow_name="w", workflow_uid="u")
    experiment = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("steps-test")
    assert experiment is not None
    assert experiment.artifact_location == (tmp_path / "mlartifacts" / "steps-test").as_uri()
    assert not (scratch / "mlruns").exists()


def test_mlflow_gets_client_distributions_and_a_table_not_metrics_per_client(env, tmp_path):
    """A round logs a fixed set of metric keys whatever the number of clients; each client's values
    are in the round's table artifact."""
    import json

    from mlflow.tracking import MlflowClient

    s = settings(clients=4, min_clients=4, rounds=1, clients_per_pod=3)
    run_rounds(s, "steps-test/dist", 1)
    step_evaluate.run(run_key="steps-test/dist", round=1)  # it logs the aggregate step's report
    run_id = json.loads(env.get_bytes(RunLayout("steps-test/dist").record_key))["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics = client.get_run(run_id).data.metrics
    assert not [k for k in metrics if k.startswith("client_") and k.split("_")[1].isdigit()]
    assert metrics["client_train_loss_count"] == 4
    assert metrics["client_train_accuracy_min"] <= metrics["client_train_accuracy_median"]
    assert metrics["client_train_accuracy_median"] <= metrics["client_train_accuracy_max"]
    table_path = client.download_artifacts(run_id, "clients/round-0001.json", str(tmp_path / "dl"))
    table = json.loads(Path(table_path).read_text())
    assert [row[0] for row in table["data"]] == ["0", "1", "2", "3"]
    losses = [row[table["columns"].index("train_loss")] for row in table["data"]]
    assert metrics["client_train_loss_mean"] == pytest.approx(float(np.mean(losses)))
    assert metrics["client_train_loss_std"] == pytest.approx(float(np.std(losses)))


def test_a_rounds_evaluation_tells_trained_from_evaluated_examples(env):
    """``examples``: the central test set the global model was evaluated on; ``train_examples``: what the
    aggregated clients trained on (the summary lists each round's evaluation)."""
    s = settings(clients=3, rounds=1, data_limit=600)
    run_rounds(s, "steps-test/examples", 1)
    step_evaluate.run(run_key="steps-test/examples", round=1)
    doc = json.loads(env.get_bytes(RunLayout("steps-test/examples").eval_key(1)))
    assert doc["train_examples"] == 600
    assert doc["examples"] == len(load_dataset("fashion-mnist", "test").y)


def test_a_resumed_run_carries_the_earlier_rounds_mlflow_history(env, tmp_path):
    """A resumed run's MLflow run had the rounds it ran only: its charts started at ``start-round``. It now
    gets the earlier rounds' metrics (their own steps and times) and client tables; what the stopped run
    logged of a later round is not carried."""
    from mlflow.tracking import MlflowClient

    s = settings(clients=2, rounds=3)
    run_rounds(s, "steps-test/stopped", 2)
    for r in (1, 2):
        step_evaluate.run(run_key="steps-test/stopped", round=r)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def run_id(run: str) -> str:
        return json.loads(env.get_bytes(RunLayout(f"steps-test/{run}").record_key))["mlflow_run_id"]

    client.log_metric(run_id("stopped"), "test_accuracy", 0.5, step=3)  # round 3 was under way
    resume_init(s, "steps-test/resumed", 3, "steps-test/stopped")

    def history(run: str, key: str) -> list[tuple[int, float, int]]:
        return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id(run), key))

    old = history("stopped", "test_accuracy")
    assert [m[0] for m in old] == [1, 2, 3]
    assert history("resumed", "test_accuracy") == old[:2]
    assert history("resumed", "clients_aggregated") == history("stopped", "clients_aggregated")
    tables = {a.path for a in client.list_artifacts(run_id("resumed"), "clients")}
    assert tables == {"clients/round-0001.json", "clients/round-0002.json"}
    for group in step_distribute.run(run_key="steps-test/resumed", round=3):
        step_train.run(run_key="steps-test/resumed", round=3, clients=group)
    step_aggregate.run(run_key="steps-test/resumed", round=3)
    step_evaluate.run(run_key="steps-test/resumed", round=3)  # round 3 is logged as usual
    assert [m[0] for m in history("resumed", "test_accuracy")] == [1, 2, 3]
    assert [m[0] for m in history("resumed", "clients_aggregated")] == [1, 2, 3]


def test_a_resumed_run_goes_on_when_the_earlier_mlflow_run_is_not_found(env, tmp_path, caplog):
    """Resuming into another tracking server (the stopped run's MLflow run is not there) loses only the
    earlier rounds' history, with a warning saying so."""
    s = settings(clients=2, rounds=2)
    run_rounds(s, "steps-test/elsewhere", 1)
    env.put_bytes(
        RunLayout("steps-test/elsewhere").record_key,
        env.get_bytes(RunLayout("steps-test/elsewhere").record_key).replace(
            b'"mlflow_run_id": "', b'"mlflow_run_id": "0'
        ),
    )
    with caplog.at_level("WARNING"):
        out = resume_init(s, "steps-test/resumed2", 2, "steps-test/elsewhere")
    assert out["mlflow-run-id"]
    assert "earlier rounds' MLflow history was not copied" in caplog.text


@pytest.mark.parametrize(
    ("key", "step", "epochs", "round"),
    [
        ("test_accuracy", 3, 2, 3),
        ("client_train_loss_mean", 3, 2, 3),  # a distribution across clients: steps are rounds
        ("client_7_epoch_loss", 1, 2, 1),
        ("client_7_epoch_loss", 2, 2, 1),
        ("client_7_epoch_accuracy", 3, 2, 2),
        ("client_7_epoch_accuracy", 3, 1, 3),
    ],
)
def test_a_metric_steps_round(key, step, epochs, round):
    assert tracking.metric_round(key, step, epochs) == round
