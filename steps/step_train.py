"""``train``: local training of one client (or a group) from the previous round's global weights.

Each client first evaluates the incoming global model on its local test split, when it has one
(federated evaluation, ``round-NNNN/client-eval/client-N.json``), then trains on its train split. A
client whose data is missing or invalid, or more than ``max_client_examples`` lets its update claim,
is skipped with a one-line error; the others of the pod go on, and the step fails at the end so the
round sees the client as failed (``min_clients`` decides).
"""

from __future__ import annotations

import logging
import time

from argofl.steps import attacks, labels, partials, privacy
from argofl.steps.checkpoint import checkpoint_exists, load_checkpoint, load_manifest, save_checkpoint
from argofl.steps.client_data import ClientDataError, client_data, client_train_data, model_shape
from argofl.steps.frameworks import get_backend
from argofl.steps.partition import client_seed
from argofl.steps.runinfo import RunError, load_secret, open_run, write_json
from argofl.steps.strategies import (
    DP_CLIP,
    DP_MODE,
    DP_NOISE,
    PROX_MU,
    STRATEGIES,
    ClientUpdate,
    WeightedAverage,
)

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


def _check_claimable(cap: int, client: str, examples: int) -> None:
    """ClientDataError when ``examples`` are more than ``max_client_examples`` (``cap``, 0: no cap) lets
    an update claim: the aggregator would reject the update, so the client is not trained."""
    if cap and examples > cap:
        raise ClientDataError(
            f"client {client}: {examples} training examples, above max_client_examples={cap} (its update "
            "would be rejected): not trained; raise the cap or give it fewer"
        )


def run(*, run_key: str, round: int, clients: str, only: list[str] | None = None) -> dict[str, float]:
    """Train each client of ``clients`` and write its update; ``only``: refuse clients not in it.

    Returns the last client's metrics plus ``seconds``, the time spent inside training for the group.
    """
    store, layout, record = open_run(run_key)
    s, source = record.settings, record.data
    if not 1 <= round <= s.rounds:  # distribute checks it too; a step started by hand may not have
        raise RunError(f"round must be in 1..{s.rounds}, got {round}")
    ids = parse_clients(clients, s.clients, round=round)
    strangers = [c for c in ids if only is not None and c not in only]
    if strangers:
        raise RunError(
            f"clients {strangers} of {clients!r} are not this pod's to train (its placement group has "
            f"clients {only}); nothing was read or written"
        )
    group_key = partials.partial_key(layout, round, ids[0]) if partials.pre_aggregates(s) else None
    if group_key is not None:  # one partial sum for the group: all of it is committed or none
        todo = [] if checkpoint_exists(store, group_key) else ids
        if not todo:
            log.info("group of client %s: round %d partial sum already committed; skipping", ids[0], round)
            summed, _ = partials.replies_of(load_manifest(store, group_key), store.key_uri(group_key))
            return {**(dict(summed[-1].metrics) if summed else {}), "seconds": 0.0}
    else:
        todo = [c for c in ids if not checkpoint_exists(store, layout.update_key(round, c))]
    for done in sorted(set(ids) - set(todo), key=int):
        log.info("client %s: update for round %d already committed (retried step); skipping", done, round)
    if not todo:
        return {**load_manifest(store, layout.update_key(round, ids[-1])).metrics, "seconds": 0.0}
    group_sum = WeightedAverage()
    replies: list[ClientUpdate] = []
    refused: dict[str, str] = {}
    metrics: dict[str, float] = {}
    seconds = 0.0
    failed: list[ClientDataError] = []
    backend = get_backend(s.framework)
    backend.configure(threads=s.threads)
    start = load_checkpoint(store, layout.global_key(round - 1))
    input_shape, num_classes = model_shape(s)
    model = backend.build_model(s.model, input_shape=input_shape, num_classes=num_classes, seed=s.seed)
    prox_mu = s.option(PROX_MU) if STRATEGIES[s.strategy].proximal else 0.0
    local_dp = STRATEGIES[s.strategy].secret and s.option(DP_MODE) == "local"
    secret = load_secret(store, layout) if local_dp else b""
    attackers = s.attackers()
    for client in todo:
        try:
            train = client_train_data(s, source, client)
            _check_claimable(s.max_client_examples, client, len(train))
            test = client_data(s, source, client, "test") if source.federated_eval != "off" else None
        except ClientDataError as exc:
            log.error("%s", exc)
            failed.append(exc)
            refused[client] = str(exc)  # a partial sum records why it lacks the client
            continue
        backend.set_weights(model, start.arrays)
        if test is not None:
            evaluation = backend.evaluate(model, test.x, test.y, batch_size=s.eval_batch_size)
            write_json(
                store,
                layout.client_eval_key(round, client),
                {"round": round, "client": client, "model_round": round - 1, **evaluation},
            )
            log.info(
                "client %s: incoming global model on %d local test examples: loss %.4f, accuracy %.4f",
                client,
                len(test),
                evaluation["loss"],
                evaluation["accuracy"],
            )
        attack = s.attack if client in attackers else "none"
        started = time.perf_counter()
        metrics = backend.train(
            model,
            train.x,
            attacks.poison_labels(attack, train.y, num_classes),
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
                clip=s.option(DP_CLIP),
                noise=s.option(DP_NOISE),
                seed=privacy.noise_seed(secret, "round", str(round), "client", client),
            )
        if group_key is not None:
            problem = partials.update_problem(weights, start.manifest.tensors, client) or (
                "" if len(train) > 0 else f"update from client {client} has 0 examples, expected > 0"
            )
            if problem:
                log.error("client %s: refused, not summed: %s", client, problem)
                refused[client] = problem
                continue
            group_sum.add(weights, len(train), source=f"update from client {client}")
            replies.append(ClientUpdate(client, {}, len(train), dict(metrics)))
            uri = f"the partial sum {store.key_uri(group_key)}"
        else:
            uri = save_checkpoint(
                store,
                layout.update_key(round, client),
                weights,
                round=round,
                client=client,
                examples=len(train),
                metrics=metrics,
            )
        log.info(
            "client %s: %d examples, loss %.4f, accuracy %.4f → %s",
            client,
            len(train),
            metrics["loss"],
            metrics["accuracy"],
            uri,
        )
    if group_key is not None and replies:
        sums, _, _ = group_sum.take_sums()
        uri = partials.save_partial(store, group_key, sums, round=round, replies=replies, rejected=refused)
        log.info("group of client %s: %d updates summed → %s", ids[0], len(replies), uri)
    if len(failed) == 1 and len(todo) == 1:
        raise failed[0]
    if failed:
        raise ClientDataError(
            f"{len(failed)} of {len(todo)} clients of this pod have unusable data, first: {failed[0]}"
        )
    return {**metrics, "seconds": seconds}
