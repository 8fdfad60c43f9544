"""The split-learning client: its data and the bottom half; the server holds the top half and the labels.

Per batch: forward the bottom half, send the activations and the batch's training-set indices to the
server, receive the gradient w.r.t. the activations, backpropagate it and step the bottom optimizer.
The sample order is the one FedAvg's local training uses (:func:`steps.frameworks.base.epoch_orders`).

Before training, a client checks with :func:`probe` that the server at its address is its own run's
(run key, round and token fingerprint on ``/healthz``) and still serving: a server left behind by
another run, or no server at all, fails the client at once with one line naming the server.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.parse
from typing import Any

import numpy as np

from argofl.steps.errors import ArgoflError
from argofl.steps.frameworks.base import epoch_orders
from argofl.steps.split.wire import CONTENT_TYPE, WireError, decode, encode, expect, token_fingerprint

log = logging.getLogger(__name__)

__all__ = ["ServerGone", "SplitClient", "SplitClientError", "probe", "train_split"]


class SplitClientError(ArgoflError, RuntimeError):
    """The server refused a request, could not be reached, or answered something malformed."""


class ServerGone(SplitClientError):
    """Nothing answers at the server's address."""


def probe(url: str, *, run: str, round: int, token: str, timeout: float = 5.0) -> str:
    """The state (``serving``, ``ending``) of run ``run``'s split server of ``round`` at ``url``.

    :class:`SplitClientError` (one line naming the server) when nothing answers there, or a server of
    another run or round does."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SplitClientError(f"server URL {url!r} must be http://HOST:PORT")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ServerGone(
            f"split server {url} is not running ({type(exc).__name__}: {exc}): the split-server step of "
            f"round {round} failed or ended; see its log"
        ) from None
    finally:
        conn.close()
    try:
        doc = json.loads(data) if response.status == 200 else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    theirs = (doc.get("run"), doc.get("round"), doc.get("token"))
    if theirs != (run, round, token_fingerprint(token)):
        seen = f"run {theirs[0]!r} round {theirs[1]!r}" if theirs[0] else f"HTTP {response.status}"
        if theirs[:2] == (run, round):
            seen += " with another token"
        raise SplitClientError(
            f"split server {url} is not run {run}'s server of round {round} (it answers as {seen}): "
            "a server of another run holds this address; this step stops"
        )
    return str(doc.get("status", ""))


class SplitClient:
    """A keep-alive HTTP connection to the split server, authenticated with the run's token."""

    def __init__(self, url: str, token: str, *, client: str, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise SplitClientError(f"server URL {url!r} must be http://HOST:PORT")
        self.host, self.port = parts.hostname, parts.port or 80
        self.url = url
        self.client = client
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"}
        self._conn: http.client.HTTPConnection | None = None

    def check_server(self, *, run: str, round: int) -> None:
        """Fail fast unless the server at :attr:`url` is run ``run``'s, serving ``round``."""
        token = self._headers["Authorization"].removeprefix("Bearer ")
        for attempt in range(1, 4):
            try:
                state = probe(self.url, run=run, round=round, token=token, timeout=self.timeout)
                break
            except ServerGone:
                if attempt == 3:
                    raise
                time.sleep(0.5 * attempt)
        if state != "serving":
            raise SplitClientError(
                f"split server {self.url} has already ended round {round} ({state}); client {self.client} "
                "came too late"
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, path: str, body: bytes, content_type: str, *, attempts: int = 1) -> tuple[bytes, str]:
        for attempt in range(1, attempts + 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(
                    "POST", path, body=body, headers={**self._headers, "Content-Type": content_type}
                )
                response = self._conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt < attempts and isinstance(exc, ConnectionRefusedError):
                    time.sleep(0.5 * attempt)
                    continue
                raise SplitClientError(
                    f"split server {self.url} failed on {path.split('?')[0]}: {type(exc).__name__}: {exc} "
                    "(is its split-server step still running? see its log)"
                ) from None
            if response.status != 200:
                try:
                    message = json.loads(data)["error"]
                except (ValueError, KeyError, TypeError):
                    message = data[:200].decode("utf-8", "replace")
                raise SplitClientError(
                    f"split server {self.url} refused {path.split('?')[0]} with {response.status}: {message}"
                )
            return data, response.getheader("Content-Type", "")
        raise SplitClientError(f"split server {self.url} unreachable")  # pragma: no cover

    def _q(self, **extra: Any) -> str:
        return urllib.parse.urlencode({"client": self.client, **extra})

    def forward(self, activations: np.ndarray, indices: np.ndarray, *, epoch: int) -> np.ndarray:
        data, ctype = self._request(
            f"/v1/forward?{self._q(epoch=epoch)}",
            encode({"activations": activations, "indices": indices.astype(np.int64, copy=False)}),
            CONTENT_TYPE,
            attempts=3,
        )
        if ctype != CONTENT_TYPE:
            raise SplitClientError(f"split server answered {ctype!r}, expected {CONTENT_TYPE}")
        try:
            arrays = decode(data, where="server response")
            expect(arrays, {"gradients": ("float32", tuple(activations.shape))}, where="server response")
        except WireError as exc:
            raise SplitClientError(str(exc)) from None
        return arrays["gradients"]

    def end_epoch(self, epoch: int) -> dict[str, float]:
        data, _ = self._request(f"/v1/epoch?{self._q(epoch=epoch)}", b"", "application/json")
        return {k: float(v) for k, v in json.loads(data).items()}

    def done(self) -> dict[str, Any]:
        data, _ = self._request(f"/v1/done?{self._q()}", b"{}", "application/json")
        result: dict[str, Any] = json.loads(data)
        return result


def train_split(
    bottom: Any,
    channel: SplitClient,
    x: np.ndarray,
    indices: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """Train ``bottom`` (a ``TorchBottom``-like half) on ``x``, the training-set rows at ``indices``."""
    metrics: dict[str, float] = {}
    for epoch, order in enumerate(epoch_orders(len(x), epochs, seed), start=1):
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            activations = bottom.forward(x[batch])
            gradients = channel.forward(activations, indices[batch], epoch=epoch)
            bottom.backward(gradients)
        metrics = channel.end_epoch(epoch)
        log.info(
            "client %s epoch %d/%d: loss %.4f, accuracy %.4f",
            channel.client,
            epoch,
            epochs,
            metrics["loss"],
            metrics["accuracy"],
        )
    return metrics
