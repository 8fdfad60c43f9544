"""The split-learning server: the top half, the labels and the top optimizer behind an HTTP API.

Endpoints (all but ``/healthz`` need ``Authorization: Bearer <run token>``: missing → 401, wrong → 403):

* ``GET /healthz`` → ``{"status": "serving" | "ending", "run": RUN_KEY, "round": R, "token": FINGERPRINT}``
  (the readinessProbe; clients and ``split-evaluate`` check that the server is their run's, see
  :func:`steps.split.client.probe`). ``ending``: the round is over and the server is storing its half
  (or failing); it stops listening once that is done, so a server that does not answer is gone;
* ``POST /v1/forward?client=C&epoch=E`` — body: safetensors with ``activations`` (float32, ``(N, *cut)``)
  and ``indices`` (int64, ``(N,)``: the batch's indices in the training set, all in client C's
  partition). The server looks up the labels itself, runs the top half, steps its optimizer and
  answers safetensors with ``gradients`` (float32, like ``activations``);
* ``POST /v1/epoch?client=C&epoch=E`` → ``{"loss", "accuracy", "examples"}`` of that epoch (logged to MLflow);
* ``POST /v1/done?client=C`` → the client finished (its bottom half is in the store). When every
  expected client is done (vanilla: also when the last client in turn is done) the server writes its
  half and stops.

Bad input is a 4xx with ``{"error": "..."}``; round requests after the round ended get 410. The server
ends on its own after ``idle_timeout`` seconds without a request: the round completes if at least
``min_clients`` clients are done, otherwise the step fails with a one-line error.
:meth:`SplitServer.stop` (the step's SIGTERM/SIGINT handler) and the death of the process that started
the server end it at once, without a result. Modes: ``vanilla`` keeps one top half for all clients (they
take turns); ``splitfed`` (SplitFed v1) keeps one copy of the top half per client and averages the
copies of the finished clients, weighted by examples.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from argofl.steps.errors import ArgoflError
from argofl.steps.split.wire import CONTENT_TYPE, WireError, decode, encode, expect, token_fingerprint

log = logging.getLogger(__name__)

__all__ = ["ENDING", "SERVING", "ServerResult", "SplitServer", "SplitServerError"]

MAX_BODY = 256 * 1024 * 1024
SERVING = "serving"
ENDING = "ending"


class SplitServerError(ArgoflError, RuntimeError):
    """The round could not be completed (too few clients finished before the timeout, ...)."""


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Client:
    top: Any = None
    examples: int = 0  # examples of the last completed epoch
    epoch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    done: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerResult:
    """What the round left behind: the top weights and the clients that finished."""

    weights: dict[str, np.ndarray]
    clients: list[str]
    examples: int
    metrics: dict[str, float]


class SplitServer:
    """Serve one round. ``make_top()`` returns a fresh ``TorchTop``-like half at the round's start weights.

    ``labels_of(client, indices)`` returns the labels of ``indices`` or raises ``ValueError`` when an
    index is not in that client's partition.
    """

    def __init__(
        self,
        *,
        make_top: Callable[[], Any],
        labels_of: Callable[[str, np.ndarray], np.ndarray],
        token: str,
        clients: list[str],
        mode: str,
        activation_shape: tuple[int, ...],
        min_clients: int = 1,
        idle_timeout: float = 120.0,
        max_batch: int = 4096,
        on_epoch: Callable[[str, int, Mapping[str, float]], None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        run: str = "",
        round: int = 0,
    ) -> None:
        if not token:
            raise SplitServerError("the run token is empty: refusing to serve without authentication")
        self.make_top = make_top
        self.labels_of = labels_of
        self._token = token.encode()
        self.identity = {"run": run, "round": round, "token": token_fingerprint(token)}
        self.state = SERVING
        self.order = list(clients)
        self.mode = mode
        self.shape = tuple(activation_shape)
        self.min_clients = min_clients
        self.idle_timeout = idle_timeout
        self.max_batch = max_batch
        self.on_epoch = on_epoch
        self.clients: dict[str, _Client] = {c: _Client() for c in clients}
        self.shared_top = make_top() if mode == "vanilla" else None
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.last_activity = time.monotonic()
        self.result: ServerResult | None = None
        self.error: str | None = None
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise SplitServerError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (another process holds this "
                "address, e.g. the split server of another run): this round's server does not start"
            ) from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> SplitServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="split-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening (idempotent)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread = None
        self.httpd.server_close()

    def stop(self, reason: str) -> None:
        """End the round now, without a result (safe from a signal handler: :meth:`wait` does the rest)."""
        self.error = self.error or reason
        self.finished.set()

    def wait(self, *, poll: float = 0.5, close: bool = True, parent: int | None = None) -> ServerResult:
        """Block until the round is finished or idle for ``idle_timeout``, or the process ``parent`` is gone.

        Then round requests get 410 and ``/healthz`` says ``ending``; with ``close`` the server also stops
        listening (else the caller closes it once the half is stored)."""
        try:
            while not self.finished.wait(poll):
                if parent is not None and os.getppid() != parent:
                    self.stop(f"the process that started the server (pid {parent}) has exited")
                    break
                idle = time.monotonic() - self.last_activity
                if idle >= self.idle_timeout:
                    with self.lock:
                        done = [c for c in self.order if self.clients[c].done]
                        waiting = [c for c in self.order if not self.clients[c].done]
                        if len(done) >= self.min_clients and done:
                            log.warning(
                                "no request for %.0fs; completing the round with clients %s "
                                "(never finished: %s)",
                                idle,
                                done,
                                waiting,
                            )
                            self._finalize()
                        else:
                            self.error = (
                                f"no request for {idle:.0f}s (idle_timeout={self.idle_timeout:g}s) and only "
                                f"{len(done)} of {len(self.order)} clients finished (done: {done}, never "
                                f"finished: {waiting}); need min_clients={self.min_clients}: the server's "
                                "half of this round is not written"
                            )
                            self.finished.set()
        finally:
            self.state = ENDING
            if close:
                self.close()
        if self.result is None:
            raise SplitServerError(self.error or "the server stopped without a result")
        return self.result

    # -- request handling ------------------------------------------------------------------------------
    def authorize(self, header: str | None) -> None:
        if not header:
            raise _HTTPError(HTTPStatus.UNAUTHORIZED, "missing Authorization: Bearer <token> header")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
            raise _HTTPError(HTTPStatus.FORBIDDEN, "wrong token for this round")

    def _client(self, query: Mapping[str, list[str]]) -> _Client:
        name = (query.get("client") or [""])[0]
        state = self.clients.get(name)
        if state is None:
            raise _HTTPError(
                HTTPStatus.NOT_FOUND, f"unknown client {name!r}: this round expects clients {self.order}"
            )
        if state.done:
            raise _HTTPError(HTTPStatus.CONFLICT, f"client {name} already said done this round")
        return state

    def _epoch(self, query: Mapping[str, list[str]]) -> int:
        raw = (query.get("epoch") or [""])[0]
        if not raw.isdigit() or int(raw) < 1:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"epoch must be a positive integer, got {raw!r}")
        return int(raw)

    def forward(self, query: Mapping[str, list[str]], body: bytes) -> bytes:
        name = (query.get("client") or [""])[0]
        epoch = self._epoch(query)
        try:
            arrays = decode(body, where="forward request")
            expect(
                arrays,
                {"activations": ("float32", (None, *self.shape)), "indices": ("int64", (None,))},
                where="forward request",
            )
        except WireError as exc:
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from None
        acts, indices = arrays["activations"], arrays["indices"]
        n = int(acts.shape[0])
        if not 1 <= n <= self.max_batch or indices.shape[0] != n:
            raise _HTTPError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                f"forward request: expected 1..{self.max_batch} activations and as many indices, "
                f"got {n} activations and {indices.shape[0]} indices",
            )
        if not np.isfinite(acts).all():
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, "forward request: activations are not finite")
        try:
            labels = self.labels_of(name, indices)
        except ValueError as exc:
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, f"forward request: {exc}") from None
        with self.lock:
            state = self._client(query)
            if epoch < state.epoch:
                raise _HTTPError(
                    HTTPStatus.CONFLICT, f"epoch {epoch} is over for client {name} (now {state.epoch})"
                )
            if epoch > state.epoch:
                state.epoch, state.loss_sum, state.correct, state.seen = epoch, 0.0, 0, 0
            if self.shared_top is not None:
                top = self.shared_top
            else:
                if state.top is None:
                    state.top = self.make_top()
                top = state.top
            grad, loss, correct = top.step(acts, labels)
            state.loss_sum += loss * n
            state.correct += correct
            state.seen += n
        return encode({"gradients": grad})

    def end_epoch(self, query: Mapping[str, list[str]]) -> dict[str, float]:
        name = (query.get("client") or [""])[0]
        epoch = self._epoch(query)
        with self.lock:
            state = self._client(query)
            if epoch != state.epoch or state.seen == 0:
                raise _HTTPError(
                    HTTPStatus.CONFLICT,
                    f"client {name} sent no batch for epoch {epoch} (current {state.epoch})",
                )
            metrics = {
                "loss": state.loss_sum / state.seen,
                "accuracy": state.correct / state.seen,
                "examples": float(state.seen),
            }
            state.metrics, state.examples = metrics, state.seen
        log.info(
            "client %s epoch %d: loss %.4f, accuracy %.4f (%d examples)",
            name,
            epoch,
            metrics["loss"],
            metrics["accuracy"],
            state.seen,
        )
        if self.on_epoch is not None:
            self.on_epoch(name, epoch, metrics)
        return metrics

    def done(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        name = (query.get("client") or [""])[0]
        with self.lock:
            if name in self.clients and self.clients[name].done:  # a retried client says it again
                return {"ok": True, "round_complete": self.finished.is_set()}
            if self.finished.is_set():
                raise _HTTPError(HTTPStatus.GONE, f"round {self.identity['round']} is over on this server")
            state = self._client(query)
            if state.examples == 0:
                raise _HTTPError(HTTPStatus.CONFLICT, f"client {name} finished no epoch; nothing to accept")
            state.done = True
            finished = all(self.clients[c].done for c in self.order) or (
                self.mode == "vanilla" and name == self.order[-1]
            )
            if finished:
                self._finalize()
        log.info("client %s done%s", name, "; round complete" if finished else "")
        return {"ok": True, "round_complete": finished}

    def _finalize(self) -> None:
        """Build the result from the finished clients (caller holds the lock) and signal the end."""
        done = [c for c in self.order if self.clients[c].done]
        if len(done) < self.min_clients:
            self.error = (
                f"only {len(done)} of {len(self.order)} clients finished ({done}); "
                f"need min_clients={self.min_clients}"
            )
            self.finished.set()
            return
        total = sum(self.clients[c].examples for c in done)
        if self.shared_top is not None:
            weights = self.shared_top.weights()
        else:
            from argofl.steps.strategies import fedavg

            weights = fedavg(
                (self.clients[c].top.weights(), self.clients[c].examples)
                for c in done
                if self.clients[c].top is not None
            )
        metrics = {
            key: sum(self.clients[c].metrics[key] * self.clients[c].examples for c in done) / total
            for key in ("loss", "accuracy")
        }
        metrics.update(examples=float(total), clients=float(len(done)))
        self.result = ServerResult(weights=weights, clients=done, examples=total, metrics=metrics)
        self.finished.set()


def _handler(server: SplitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60  # seconds a socket may stall mid-request
        server_version = "argofl-split/1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(
            self, status: HTTPStatus, body: bytes, content_type: str, headers: Mapping[str, str] = {}
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, doc: Mapping[str, Any]) -> None:
            extra = (
                {"WWW-Authenticate": 'Bearer realm="argofl-split"'}
                if status == HTTPStatus.UNAUTHORIZED
                else {}
            )
            if status >= 400:
                extra["Connection"] = "close"
            self._send(status, json.dumps(doc).encode(), "application/json", extra)

        def _body(self) -> bytes:
            raw = self.headers.get("Content-Length")
            if raw is None or not raw.isdigit():
                raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            length = int(raw)
            if length > MAX_BODY:
                self.close_connection = True
                raise _HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {MAX_BODY}"
                )
            data = self.rfile.read(length)
            if len(data) != length:
                self.close_connection = True
                raise _HTTPError(HTTPStatus.BAD_REQUEST, f"body ended after {len(data)} of {length} bytes")
            return data

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/healthz":
                self._json(HTTPStatus.OK, {"status": server.state, **server.identity})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: GET {url.path}"})

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            try:
                server.authorize(self.headers.get("Authorization"))
                body = self._body()
                if server.finished.is_set() and url.path != "/v1/done":
                    raise _HTTPError(HTTPStatus.GONE, f"round {server.identity['round']} is over here")
                server.last_activity = time.monotonic()
                if url.path == "/v1/forward":
                    if self.headers.get("Content-Type", "") != CONTENT_TYPE:
                        raise _HTTPError(
                            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"forward requests must be {CONTENT_TYPE}"
                        )
                    self._send(HTTPStatus.OK, server.forward(query, body), CONTENT_TYPE)
                elif url.path == "/v1/epoch":
                    self._json(HTTPStatus.OK, server.end_epoch(query))
                elif url.path == "/v1/done":
                    self._json(HTTPStatus.OK, server.done(query))
                else:
                    raise _HTTPError(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {url.path}")
                server.last_activity = time.monotonic()
            except _HTTPError as exc:
                # the body may be unread (refused before reading it): never reuse this connection
                self.close_connection = True
                self._json(exc.status, {"error": str(exc)})
            except Exception as exc:  # a bug or a diverged loss: answer, and log it
                log.exception("request %s failed", url.path)
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    return Handler
