"""Split-learning step bodies: ``split-init``, ``split-server``, ``split-client``, ``split-evaluate``.

Store layout (beside FedAvg's): ``<run>/split.json`` (options), ``<run>/split-token`` (the run's shared
secret), ``round-NNNN/top`` (the server's half), ``round-NNNN/updates/client-N`` (each client's
half) and ``round-NNNN/global`` (bottom ∪ top, written by ``split-evaluate``; round 0 by ``split-init``),
so ``finalize`` and the next round read the same keys as in FedAvg.

A run resumes like FedAvg (``start-round``/``resume-from``): round r needs nothing of round r-1 but its
global model (the server's top and every client's bottom start from it; no optimizer state crosses a
round), so ``split-init`` copies that checkpoint and the evaluations before it (:mod:`steps.step_init`).

The server is a daemon whose end nobody awaits: Argo counts a running daemon as a resolved dependency
(``.Daemoned``), so no ``depends`` can make ``evaluate`` wait for the server's half. Instead
``evaluate`` waits for the half while asking the server's ``/healthz`` whether it is still this run's
server of this round (serving, or ``ending``: storing its half). The server keeps answering until its
half is stored and only then stops listening, so a server that no longer answers (killed, failed, or
replaced by another run's) and left no half means the half will never come: ``evaluate`` fails at once
with one line naming the server, instead of waiting out a timeout. The server ends on SIGTERM/SIGINT and
when the process that started it dies (a killed local executor), so it never outlives its run.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
import signal
import threading
import time
from typing import Any

import numpy as np

from argofl.steps import tracking
from argofl.steps.checkpoint import checkpoint_exists, load_checkpoint, load_manifest, save_checkpoint
from argofl.steps.data import load_dataset
from argofl.steps.frameworks import FRAMEWORKS
from argofl.steps.labels import LabelError, parse_clients
from argofl.steps.partition import client_seed, partition
from argofl.steps.runinfo import RunError, open_run, store_from_env, write_json
from argofl.steps.settings import Settings
from argofl.steps.split.settings import (
    SPLIT_STRATEGY_NOTE,
    SplitOptions,
    bottom_key,
    options_key,
    split_settings_params,
    token_key,
    top_key,
)
from argofl.steps.store import ObjectNotFound, Store

log = logging.getLogger(__name__)

TOKEN_ENV = "ARGOFL_SPLIT_TOKEN"


def _check_framework(s: Settings) -> None:
    supported = [name for name, info in FRAMEWORKS.items() if info.split]
    if s.framework not in supported:
        raise RunError(f"split learning supports frameworks {', '.join(supported)}, got {s.framework!r}")
    if s.strategy != "fedavg":
        raise RunError(f"strategy: {SPLIT_STRATEGY_NOTE}, got {s.strategy!r}")
    if s.attack != "none":
        raise RunError(f"attack: split learning simulates no attacks, got {s.attack!r}")


def halves(framework: str) -> Any:
    """The module with the framework's halves: ``build_halves``, ``Top``, ``Bottom``, ``clone``, ...

    ``framework`` is one that :func:`_check_framework` accepted (its :data:`FRAMEWORKS` entry has ``split``).
    """
    module = FRAMEWORKS[framework].split
    if module is None:
        raise RunError(f"split learning does not support framework {framework!r}")
    return importlib.import_module(module)


def load_options(store: Store, run_key: str) -> SplitOptions:
    try:
        doc = json.loads(store.get_bytes(options_key(run_key)))
    except ObjectNotFound:
        raise RunError(
            f"no split options at {store.key_uri(options_key(run_key))}: split-init has not run"
        ) from None
    return SplitOptions.from_mapping(doc, where=store.key_uri(options_key(run_key)))


def load_token(store: Store, run_key: str) -> str:
    """The run's token: ``$ARGOFL_SPLIT_TOKEN`` when set, else the secret ``split-init`` stored."""
    token = os.environ.get(TOKEN_ENV, "")
    if token:
        return token
    try:
        return store.get_bytes(token_key(run_key)).decode().strip()
    except ObjectNotFound:
        raise RunError(f"no split token for run {run_key}: split-init has not run") from None


def init(
    settings: Settings,
    options: SplitOptions,
    *,
    run_key: str,
    workflow_name: str,
    workflow_uid: str,
    start_round: int = 1,
    resume_from: str = "",
) -> dict[str, str]:
    """FedAvg's init (round-0 checkpoint or a resumed run's, MLflow run, run.json), then the split options
    and token."""
    from argofl.steps import step_init

    _check_framework(settings)
    store = store_from_env()
    test = load_dataset(settings.dataset, "test", settings.data_dir or None)
    _halves(settings, options, test.input_shape, test.num_classes)  # fail early on a bad cut
    out = step_init.run(
        settings,
        run_key=run_key,
        workflow_name=workflow_name,
        workflow_uid=workflow_uid,
        start_round=start_round,
        resume_from=resume_from,
        params={**split_settings_params(settings), **options.to_params()},
    )
    store.put_bytes(options_key(run_key), options.to_json())
    store.put_bytes(token_key(run_key), secrets.token_urlsafe(32).encode())
    log.info("split learning (%s, cut after %s): options and run token written", options.mode, options.cut)
    return out


def _halves(s: Settings, o: SplitOptions, input_shape: tuple[int, int, int], num_classes: int) -> Any:
    return halves(s.framework).build_halves(
        s.model, o.cut, input_shape=input_shape, num_classes=num_classes, seed=s.seed, threads=s.threads
    )


def _owners(labels: np.ndarray, s: Settings) -> np.ndarray:
    parts = partition(labels, s.clients, s.partition, alpha=s.alpha, seed=s.seed)
    owner = np.full(len(labels), -1, dtype=np.int64)
    for client, idx in enumerate(parts):
        owner[idx] = client
    return owner


def server(*, run_key: str, round: int, host: str | None = None) -> dict[str, float]:
    """Serve the round until every client is done (or the idle timeout); write the top half."""
    from argofl.steps.split.server import SplitServer

    store, layout, record = open_run(run_key)
    s = record.settings
    o = load_options(store, run_key)
    _check_framework(s)
    token = load_token(store, run_key)
    if checkpoint_exists(store, top_key(run_key, round)):
        log.warning("round %d: the server's half is already written; nothing to serve", round)
        return dict(load_manifest(store, top_key(run_key, round)).metrics)
    data = load_dataset(s.dataset, "train", s.data_dir or None, limit=s.data_limit or None)
    owner = _owners(data.y, s)
    labels = np.asarray(data.y)
    start = load_checkpoint(store, layout.global_key(round - 1)).arrays
    fw = halves(s.framework)
    _, bottom, top = _halves(s, o, data.input_shape, data.num_classes)
    fw.load_weights(top, start)
    shape = fw.activation_shape(bottom, data.input_shape)

    def make_top() -> Any:
        return fw.Top(fw.clone(top), lr=s.lr, momentum=s.momentum)

    def labels_of(client: str, indices: np.ndarray) -> np.ndarray:
        if indices.size and (indices.min() < 0 or indices.max() >= len(labels)):
            raise ValueError(f"indices must be in [0, {len(labels)}), got [{indices.min()}, {indices.max()}]")
        if not np.all(owner[indices] == int(client)):
            raise ValueError(f"some indices are not in client {client}'s partition")
        return labels[indices]

    def on_epoch(client: str, epoch: int, metrics: Any) -> None:
        step = (round - 1) * s.local_epochs + epoch
        try:
            tracking.log_metrics(
                record.mlflow_run_id,
                {
                    tracking.epoch_metric(client, "loss"): metrics["loss"],
                    tracking.epoch_metric(client, "accuracy"): metrics["accuracy"],
                },
                step=step,
            )
        except tracking.TrackingError as exc:
            log.warning("%s", exc)

    bind = host or os.environ.get("ARGOFL_SPLIT_BIND") or os.environ.get("POD_IP") or "0.0.0.0"
    srv = SplitServer(
        make_top=make_top,
        labels_of=labels_of,
        token=token,
        clients=[str(c) for c in range(s.clients)],
        mode=o.mode,
        activation_shape=shape,
        min_clients=s.min_clients,
        idle_timeout=o.idle_timeout,
        max_batch=max(s.batch_size, 1),
        on_epoch=on_epoch,
        host=bind,
        port=o.port,
        run=run_key,
        round=round,
    ).start()
    log.info(
        "round %d: split server (%s) on %s for %d clients, activations %s",
        round,
        o.mode,
        srv.url,
        s.clients,
        shape,
    )
    try:
        result = _serve(srv, round)
        # still answering /healthz ("ending") while the half is stored: evaluate knows it is coming
        uri = save_checkpoint(
            store,
            top_key(run_key, round),
            result.weights,
            round=round,
            examples=result.examples,
            metrics=result.metrics,
            extra={"clients": ",".join(result.clients), "mode": o.mode},
        )
    finally:
        srv.close()
    tracking.log_metrics(
        record.mlflow_run_id,
        {
            "train_loss": result.metrics["loss"],
            "train_accuracy": result.metrics["accuracy"],
            "clients_done": float(len(result.clients)),
        },
        step=round,
    )
    log.info("round %d: server half written to %s (clients %s)", round, uri, result.clients)
    return result.metrics


def _serve(srv: Any, round: int) -> Any:
    """Wait for the round's result; SIGTERM, SIGINT or the death of our parent end it at once."""

    def on_signal(signum: int, _frame: Any) -> None:
        srv.stop(f"round {round}: the split server was stopped by {signal.Signals(signum).name}")

    main = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    parent = os.getppid()
    try:
        return srv.wait(close=False, parent=parent if parent > 1 else None)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _start_bottom(
    store: Store, run_key: str, round: int, client: int, mode: str
) -> tuple[dict[str, np.ndarray], str]:
    if mode == "vanilla":
        for previous in range(client - 1, -1, -1):
            key = bottom_key(run_key, round, str(previous))
            if checkpoint_exists(store, key):
                return load_checkpoint(store, key).arrays, f"client {previous}'s bottom of round {round}"
    from argofl.steps.runinfo import RunLayout

    key = RunLayout(run_key).global_key(round - 1)
    return load_checkpoint(store, key).arrays, f"the global model of round {round - 1}"


def _one_client(value: str, num_clients: int, round: int) -> str:
    """``"round 3 / client 7"`` (or ``"7"``) → ``"7"``, an index below ``num_clients``."""
    try:
        ids = parse_clients(value, round=round)
    except LabelError as exc:
        raise RunError(str(exc)) from None
    if len(ids) != 1 or int(ids[0]) >= num_clients:
        raise RunError(f"bad client {value!r}: expected one index 0..{num_clients - 1}")
    return ids[0]


def client(*, run_key: str, round: int, client: str, server_url: str) -> dict[str, float]:
    """Train one client's bottom half against the server; write it; tell the server it is done."""
    from argofl.steps.split.client import SplitClient, train_split

    store, _, record = open_run(run_key)
    s = record.settings
    o = load_options(store, run_key)
    _check_framework(s)
    client = _one_client(client, s.clients, round)
    token = load_token(store, run_key)
    key = bottom_key(run_key, round, client)
    channel = SplitClient(server_url, token, client=client, timeout=o.request_timeout)
    if checkpoint_exists(store, key):
        log.warning("client %s: bottom half of round %d already written (retried step)", client, round)
        metrics = dict(load_manifest(store, key).metrics)
    else:
        data = load_dataset(s.dataset, "train", s.data_dir or None, limit=s.data_limit or None)
        idx = partition(data.y, s.clients, s.partition, alpha=s.alpha, seed=s.seed)[int(client)]
        fw = halves(s.framework)
        _, bottom, _ = _halves(s, o, data.input_shape, data.num_classes)
        start, origin = _start_bottom(store, run_key, round, int(client), o.mode)
        fw.load_weights(bottom, start)
        log.info("client %s: %d examples, starting from %s, server %s", client, len(idx), origin, server_url)
        half = fw.Bottom(bottom, lr=s.lr, momentum=s.momentum)
        channel.check_server(run=run_key, round=round)
        started = time.perf_counter()
        metrics = train_split(
            half,
            channel,
            data.x[idx],
            idx,
            epochs=s.local_epochs,
            batch_size=s.batch_size,
            seed=client_seed(s.seed, round, client),
        )
        metrics["seconds"] = time.perf_counter() - started
        save_checkpoint(
            store, key, fw.weights_of(bottom), round=round, client=client, examples=len(idx), metrics=metrics
        )
    try:
        channel.done()
    finally:
        channel.close()
    return metrics


GONE_CHECKS = 3
"""Consecutive failed ``/healthz`` checks (one a second) after which evaluate deems the server gone."""


def _await_top(
    store: Store, run_key: str, round: int, o: SplitOptions, server_url: str | None, wait: float | None
) -> None:
    """Return once the server's half of ``round`` is stored; fail fast when its server is gone."""
    from argofl.steps.split.client import SplitClientError, probe

    tkey = top_key(run_key, round)
    token = load_token(store, run_key) if server_url else ""
    deadline = time.monotonic() + (wait if wait is not None else o.idle_timeout + 60)
    misses = 0
    while not checkpoint_exists(store, tkey):
        if server_url:
            try:
                probe(server_url, run=run_key, round=round, token=token, timeout=o.request_timeout)
                misses = 0
            except SplitClientError as exc:
                misses += 1
                if misses >= GONE_CHECKS and not checkpoint_exists(store, tkey):
                    raise RunError(
                        f"round {round}: the server's half will never appear at {store.key_uri(tkey)}: {exc}"
                    ) from None
        if time.monotonic() > deadline:
            raise RunError(
                f"round {round}: the server's half never appeared at {store.key_uri(tkey)} "
                "(the server step failed or timed out; see its log)"
            )
        time.sleep(1.0)


def evaluate(
    *, run_key: str, round: int, server_url: str | None = None, wait: float | None = None
) -> dict[str, float]:
    """Reassemble bottom + top of ``round`` into the global model, evaluate it on the test set.

    With ``server_url`` (the round's server) a server that is gone without storing its half fails
    evaluate at once; without it, evaluate waits up to ``wait`` (default ``idle_timeout`` + 60 s)."""
    from argofl.steps.frameworks import get_backend
    from argofl.steps.strategies import fedavg

    store, layout, record = open_run(run_key)
    s = record.settings
    o = load_options(store, run_key)
    tkey = top_key(run_key, round)
    _await_top(store, run_key, round, o, server_url, wait)
    top = load_checkpoint(store, tkey)
    done = [c for c in top.manifest.extra.get("clients", "").split(",") if c]
    if not done:
        raise RunError(f"round {round}: the server's half at {store.key_uri(tkey)} names no finished client")
    if o.mode == "vanilla":
        bottom = load_checkpoint(store, bottom_key(run_key, round, done[-1])).arrays
    else:
        bottom = fedavg(
            (ckpt.arrays, ckpt.manifest.examples)
            for ckpt in (load_checkpoint(store, bottom_key(run_key, round, c)) for c in done)
        )
    weights = {**bottom, **top.arrays}
    metrics_train = dict(top.manifest.metrics)
    if not checkpoint_exists(store, layout.global_key(round)):
        save_checkpoint(
            store,
            layout.global_key(round),
            weights,
            round=round,
            examples=top.manifest.examples,
            metrics=metrics_train,
            extra={"clients": ",".join(done), "mode": o.mode},
        )
    backend = get_backend(s.framework)
    backend.configure(threads=s.threads)
    test = load_dataset(s.dataset, "test", s.data_dir or None)
    model = backend.build_model(
        s.model, input_shape=test.input_shape, num_classes=test.num_classes, seed=s.seed
    )
    backend.set_weights(model, weights)
    metrics = backend.evaluate(model, test.x, test.y, batch_size=s.eval_batch_size)
    write_json(
        store,
        layout.eval_key(round),
        {
            "round": round,
            **metrics,
            "train_loss": metrics_train.get("loss"),
            "train_accuracy": metrics_train.get("accuracy"),
            "train_examples": top.manifest.examples,  # the finished clients' partitions
            "clients": float(len(done)),
            "mode": o.mode,
            "global": store.key_uri(layout.global_key(round) + ".safetensors"),
        },
    )
    tracking.log_metrics(
        record.mlflow_run_id, {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"]}, step=round
    )
    log.info(
        "round %d (%s): test loss %.4f, accuracy %.4f", round, o.mode, metrics["loss"], metrics["accuracy"]
    )
    return metrics
