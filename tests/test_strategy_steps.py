"""FedProx, robust and private strategies and the test-only attacks, through the real steps.

A file:// store and a local MLflow store; tiny data (Fashion-MNIST, a few hundred examples, mlp).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from argofl.steps import step_aggregate, step_distribute, step_evaluate, step_finalize, step_init, step_train
from argofl.steps.checkpoint import load_checkpoint
from argofl.steps.robust import Median
from argofl.steps.runinfo import RunLayout
from argofl.steps.settings import Settings
from argofl.steps.store import FileStore
from argofl.steps.strategies import ClientUpdate


@pytest.fixture
def env(tmp_path, monkeypatch, fmnist_dir):
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return FileStore(tmp_path / "store")


def settings(**overrides) -> Settings:
    base = {
        "experiment": "strategy-test",
        "model": "mlp",
        "data_limit": 400,
        "clients": 3,
        "min_clients": 1,
        "rounds": 1,
        "seed": 7,
    }
    return Settings.from_mapping({**base, **overrides})


def init(s: Settings, run_key: str, **resume) -> None:
    step_init.run(s, run_key=run_key, workflow_name=run_key.split("/")[-1], workflow_uid="uid", **resume)


def train(run_key: str, round: int) -> None:
    for group in step_distribute.run(run_key=run_key, round=round):
        step_train.run(run_key=run_key, round=round, clients=group)


def run_rounds(s: Settings, run_key: str, rounds: int, first: int = 1, evaluate: bool = False) -> None:
    if first == 1:
        init(s, run_key)
    for r in range(first, rounds + 1):
        train(run_key, r)
        step_aggregate.run(run_key=run_key, round=r)
        if evaluate:
            step_evaluate.run(run_key=run_key, round=r)


def blob(store: FileStore, key: str) -> bytes:
    return store.get_bytes(key + ".safetensors")


@pytest.mark.parametrize("framework", ["torch", pytest.param("tensorflow", marks=pytest.mark.tensorflow)])
def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(env, framework):
    for name, extra in (("fedavg", {}), ("fedprox", {"prox_mu": 0.0}), ("prox", {"prox_mu": 1.0})):
        strategy = "fedavg" if name == "fedavg" else "fedprox"
        run_rounds(settings(framework=framework, clients=2, strategy=strategy, **extra), f"t/{name}", 1)
    fedavg = blob(env, RunLayout("t/fedavg").global_key(1))
    assert blob(env, RunLayout("t/fedprox").global_key(1)) == fedavg
    assert blob(env, RunLayout("t/prox").global_key(1)) != fedavg  # μ reaches the clients


def test_median_round_streams_updates_and_rejects_a_corrupt_one(env, caplog):
    s = settings(strategy="median")
    init(s, "t/median")
    train("t/median", 1)
    layout = RunLayout("t/median")
    updates = [load_checkpoint(env, layout.update_key(1, c)) for c in "012"]
    blob_key = layout.update_key(1, "2") + ".safetensors"
    env.put_bytes(
        blob_key, blob(env, layout.update_key(1, "2"))[:-4] + b"\0\0\0\0"
    )  # sha256 no longer matches
    with caplog.at_level(logging.WARNING):
        metrics = step_aggregate.run(run_key="t/median", round=1)
    assert "rejected client 2: sha256 mismatch" in caplog.text
    assert metrics["rejected"] == 1.0
    expected = Median().aggregate({}, [ClientUpdate(str(i), u.arrays, 1) for i, u in enumerate(updates[:2])])
    got = load_checkpoint(env, layout.global_key(1)).arrays
    assert all(got[k].tobytes() == v.tobytes() for k, v in expected.weights.items())
    assert not list(Path(env.root).rglob("argofl-updates-*"))  # scratch is not in the store


def test_krum_leaves_out_a_sign_flipping_client(env):
    """TEST FEATURE attack: client 0 sends w_global − 10·(w − w_global); Krum picks an honest update."""
    honest = settings(clients=5, strategy="krum", krum_f=1, min_clients=5)
    attacked = settings(
        clients=5, strategy="krum", krum_f=1, min_clients=5, attack="sign-flip", attack_clients="0"
    )
    run_rounds(honest, "t/honest", 1)
    run_rounds(attacked, "t/attacked", 1)
    a, h = RunLayout("t/attacked"), RunLayout("t/honest")
    start = load_checkpoint(env, a.global_key(0)).arrays
    sent = load_checkpoint(env, a.update_key(1, "0")).arrays
    trained = load_checkpoint(env, h.update_key(1, "0")).arrays
    for name, w in trained.items():
        if np.issubdtype(w.dtype, np.floating):
            expected = (start[name].astype(np.float64) - 10 * (w.astype(np.float64) - start[name])).astype(
                w.dtype
            )
            np.testing.assert_array_equal(sent[name], expected, err_msg=name)
    for c in "1234":  # honest clients are unaffected by the attacker
        assert blob(env, a.update_key(1, c)) == blob(env, h.update_key(1, c))
    chosen = blob(env, a.global_key(1))
    assert chosen in [blob(env, a.update_key(1, c)) for c in "1234"]


def test_label_flipping_client_trains_on_flipped_labels(env):
    run_rounds(settings(clients=2), "t/clean", 1)
    run_rounds(settings(clients=2, attack="label-flip", attack_clients="1"), "t/flip", 1)
    clean, flip = RunLayout("t/clean"), RunLayout("t/flip")
    assert blob(env, flip.update_key(1, "0")) == blob(env, clean.update_key(1, "0"))
    assert blob(env, flip.update_key(1, "1")) != blob(env, clean.update_key(1, "1"))
    assert load_checkpoint(env, flip.update_key(1, "1")).manifest.metrics["accuracy"] < 0.3


def secret_leaks(root: Path, secret: bytes, skip: Path) -> list[str]:
    needles = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path != skip and any(n in path.read_bytes() for n in needles):
            found.append(str(path))
    return found


@pytest.mark.slow
def test_dp_fedavg_is_reproducible_accounted_and_keeps_its_secret(env, tmp_path, caplog):
    s = settings(strategy="dp-fedavg", rounds=2, dp_noise=0.8, dp_clip=0.5, fraction=0.67, min_clients=2)
    with caplog.at_level(logging.DEBUG):
        run_rounds(s, "t/dp", 2, evaluate=True)
        summary = step_finalize.run(run_key="t/dp")
    layout = RunLayout("t/dp")
    secret = env.get_bytes(layout.secret_key)
    assert len(secret) == 32
    # ε per round: in the global manifests, MLflow and summary.json, growing with the rounds
    eps = [load_checkpoint(env, layout.global_key(r)).manifest.metrics["dp_epsilon"] for r in (1, 2)]
    assert 0 < eps[0] < eps[1]
    assert summary["privacy"]["epsilon"] == eps[1]
    assert summary["privacy"]["epsilon_per_round"] == {"1": eps[0], "2": eps[1]}
    assert json.loads(env.get_bytes(layout.summary_key))["privacy"]["delta"] == 1e-5
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(summary["mlflow_run_id"], "dp_epsilon")
    assert [(m.step, m.value) for m in history] == [(1, eps[0]), (2, eps[1])]
    # the secret is nowhere but its own object: not in manifests, summary, MLflow, logs
    assert secret_leaks(tmp_path, secret, skip=Path(env.root) / layout.secret_key) == []
    assert secret.hex() not in caplog.text
    # rerunning the aggregation of round 2 draws the same noise: the same bytes
    before = blob(env, layout.global_key(2)), blob(env, layout.server_state_key(2))
    for key in (layout.global_key(2), layout.server_state_key(2)):
        env.delete(key + ".json")
        env.delete(key + ".safetensors")
    step_aggregate.run(run_key="t/dp", round=2)
    assert (blob(env, layout.global_key(2)), blob(env, layout.server_state_key(2))) == before
    # a resubmission from round 2 copies the secret and the clip state: the same bytes again
    part = settings(strategy="dp-fedavg", rounds=2, dp_noise=0.8, dp_clip=0.5, fraction=0.67, min_clients=2)
    init(part, "t/dp-resumed", start_round=2, resume_from="t/dp")
    run_rounds(part, "t/dp-resumed", 2, first=2)
    assert blob(env, RunLayout("t/dp-resumed").global_key(2)) == before[0]


def test_local_dp_clients_send_clipped_noised_updates_deterministically(env):
    s = settings(strategy="dp-fedavg", dp_mode="local", dp_clip=0.1, dp_noise=0.5, clients=2)
    run_rounds(s, "t/local", 1)
    layout = RunLayout("t/local")
    start = load_checkpoint(env, layout.global_key(0)).arrays
    sent = load_checkpoint(env, layout.update_key(1, "0")).arrays
    # a clipped update of norm ≤ 0.1 plus noise of std 0.05 per coordinate: norm ≈ 0.05·√size
    size = sum(v.size for v in start.values())
    norm = np.sqrt(sum(np.sum((sent[k].astype(np.float64) - start[k]) ** 2) for k in start))
    assert abs(norm - 0.05 * np.sqrt(size)) < 0.1 + 0.01 * 0.05 * np.sqrt(size)
    first = blob(env, layout.update_key(1, "0"))
    env.delete(layout.update_key(1, "0") + ".json")
    env.delete(layout.update_key(1, "0") + ".safetensors")
    step_train.run(run_key="t/local", round=1, clients="0")
    assert blob(env, layout.update_key(1, "0")) == first
