"""``train``: local training of one client (or a group) from the previous round's global weights."""

from __future__ import annotations

import logging
import time

from steps import attacks, labels, privacy
from steps.checkpoint import checkpoint_exists, load_checkpoint, load_manifest, save_checkpoint
from steps.data import load_dataset
from steps.frameworks import get_backend
from steps.partition import client_seed, partition
from steps.runinfo import RunError, load_secret, open_run
from steps.strategies import STRATEGIES

log = logging.getLogger(__name__)


def parse_clients(value: str, num_clients: int, *, round: int) -> list[str]:
    """``"round 3 / clients 3,7"`` (or ``"3,7"``) → ``["3", "7"]``, indices below ``num_clients``."""
    try:
        ids = labels.parse_clients(value, round=round)
    except labels.LabelError as exc:
        raise RunError(str(exc)) from None
    for client in ids:
        if int(client) >= num_clients:
            raise RunError(f"bad client {client!r} in {value!r}: expected indices 0..{num_clients - 1}")
    return ids


def run(*, run_key: str, round: int, clients: str) -> dict[str, float]:
    """Train each client of ``clients`` and write its update.

    Returns the last client's metrics plus ``seconds``, the time spent inside training for the group.
    """
    store, layout, record = open_run(run_key)
    s = record.settings
    ids = parse_clients(clients, s.clients, round=round)
    todo = [c for c in ids if not checkpoint_exists(store, layout.update_key(round, c))]
    for done in sorted(set(ids) - set(todo), key=int):
        log.info("client %s: update for round %d already committed (retried step); skipping", done, round)
    if not todo:
        return {**load_manifest(store, layout.update_key(round, ids[-1])).metrics, "seconds": 0.0}
    metrics: dict[str, float] = {}
    seconds = 0.0
    backend = get_backend(s.framework)
    backend.configure(threads=s.threads)
    data = load_dataset(s.dataset, "train", s.data_dir or None, limit=s.data_limit or None)
    parts = partition(data.y, s.clients, s.partition, alpha=s.alpha, seed=s.seed)
    start = load_checkpoint(store, layout.global_key(round - 1))
    model = backend.build_model(
        s.model, input_shape=data.input_shape, num_classes=data.num_classes, seed=s.seed
    )
    prox_mu = s.prox_mu if STRATEGIES[s.strategy].proximal else 0.0
    local_dp = STRATEGIES[s.strategy].secret and s.dp_mode == "local"
    secret = load_secret(store, layout) if local_dp else b""
    attackers = s.attackers()
    for client in todo:
        backend.set_weights(model, start.arrays)
        idx = parts[int(client)]
        attack = s.attack if client in attackers else "none"
        started = time.perf_counter()
        metrics = backend.train(
            model,
            data.x[idx],
            attacks.poison_labels(attack, data.y[idx], data.num_classes),
            epochs=s.local_epochs,
            batch_size=s.batch_size,
            lr=s.lr,
            momentum=s.momentum,
            seed=client_seed(s.seed, round, client),
            prox_mu=prox_mu,
        )
        seconds += time.perf_counter() - started
        weights = backend.get_weights(model)
        if attack != "none":  # TEST FEATURE: a malicious client sends what it likes, without DP
            log.warning("client %s: TEST FEATURE attack %r (attack_clients)", client, attack)
            seed = client_seed(s.seed, round, client)
            weights = attacks.poison_update(attack, weights, start.arrays, scale=s.attack_scale, seed=seed)
        elif local_dp:
            weights = privacy.privatize(
                weights,
                start.arrays,
                clip=s.dp_clip,
                noise=s.dp_noise,
                seed=privacy.noise_seed(secret, "round", str(round), "client", client),
            )
        uri = save_checkpoint(
            store,
            layout.update_key(round, client),
            weights,
            round=round,
            client=client,
            examples=len(idx),
            metrics=metrics,
        )
        log.info(
            "client %s: %d examples, loss %.4f, accuracy %.4f → %s",
            client,
            len(idx),
            metrics["loss"],
            metrics["accuracy"],
            uri,
        )
    return {**metrics, "seconds": seconds}
