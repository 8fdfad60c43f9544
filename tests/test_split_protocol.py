"""Split learning in process: a real HTTP server on loopback, the torch halves, synthetic data.

Covers: equivalence with centralized training, authentication, tensor validation, client disconnects.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.require import require_module

torch = require_module("torch")

from argofl.steps.frameworks import get_backend  # noqa: E402
from argofl.steps.split.client import ServerGone, SplitClient, SplitClientError, probe, train_split  # noqa: E402
from argofl.steps.split.server import SplitServer, SplitServerError  # noqa: E402
from argofl.steps.split.torch_split import TorchBottom, TorchTop, activation_shape, split_model  # noqa: E402
from argofl.steps.split.wire import decode, encode, token_fingerprint  # noqa: E402

TOKEN = "test-token-1234"
SHAPE = (28, 28, 1)
LR, MOMENTUM = 0.05, 0.9


def _data(n: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def _model(model: str = "cnn") -> Any:
    backend = get_backend("torch")
    backend.configure(threads=1)
    return backend.build_model(model, input_shape=SHAPE, num_classes=10, seed=0)


def _server(
    y: np.ndarray, owner: np.ndarray, *, clients: list[str], mode: str, cut: str = "pool2", **kw: Any
) -> tuple[SplitServer, Any]:
    full = _model()
    bottom, top = split_model(full, cut)

    def labels_of(client: str, idx: np.ndarray) -> np.ndarray:
        if idx.size and (idx.min() < 0 or idx.max() >= len(y)):
            raise ValueError("indices out of range")
        if not np.all(owner[idx] == int(client)):
            raise ValueError(f"some indices are not in client {client}'s partition")
        return y[idx]

    server = SplitServer(
        make_top=lambda: TorchTop(copy.deepcopy(top), lr=LR, momentum=MOMENTUM),
        labels_of=labels_of,
        token=TOKEN,
        clients=clients,
        mode=mode,
        activation_shape=activation_shape(bottom, SHAPE),
        **kw,
    ).start()
    return server, full


@pytest.fixture
def one_client() -> Iterator[tuple[SplitServer, Any, np.ndarray, np.ndarray]]:
    x, y = _data()
    server, full = _server(y, np.zeros(len(y), dtype=np.int64), clients=["0"], mode="vanilla")
    yield server, full, x, y
    server.close()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_one_client_split_equals_centralized_training(one_client):
    server, full, x, y = one_client
    central = copy.deepcopy(full)
    bottom, _ = split_model(full, "pool2")
    channel = SplitClient(server.url, TOKEN, client="0", timeout=30)
    train_split(
        TorchBottom(bottom, lr=LR, momentum=MOMENTUM),
        channel,
        x,
        np.arange(len(x), dtype=np.int64),
        epochs=1,
        batch_size=32,
        seed=7,
    )
    assert channel.done()["round_complete"] is True
    channel.close()
    result = server.wait(poll=0.05)

    backend = get_backend("torch")
    expected = backend.train(central, x, y, epochs=1, batch_size=32, lr=LR, momentum=MOMENTUM, seed=7)
    want = backend.get_weights(central)
    got = {**{k: v.detach().numpy() for k, v in bottom.state_dict().items()}, **result.weights}
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # the server measured the same training loss as centralized training
    assert result.metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert result.clients == ["0"]


def test_healthz_needs_no_token_and_tells_whose_server_it_is_without_the_token():
    _x, y = _data(32)
    server, _ = _server(y, np.zeros(len(y), np.int64), clients=["0"], mode="vanilla", run="e/run-a", round=2)
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
            assert response.status == 200
            raw = response.read()
        assert json.loads(raw) == {
            "status": "serving",
            "run": "e/run-a",
            "round": 2,
            "token": token_fingerprint(TOKEN),
        }
        assert TOKEN.encode() not in raw
    finally:
        server.close()


def test_a_client_meeting_a_server_of_another_run_fails_fast_naming_it():
    _x, y = _data(32)
    server, _ = _server(y, np.zeros(len(y), np.int64), clients=["0"], mode="vanilla", run="e/run-a", round=1)
    try:
        assert probe(server.url, run="e/run-a", round=1, token=TOKEN) == "serving"
        mine = SplitClient(server.url, TOKEN, client="0", timeout=5)
        mine.check_server(run="e/run-a", round=1)
        with pytest.raises(SplitClientError, match=r"is not run e/run-b's server .*'e/run-a'") as info:
            mine.check_server(run="e/run-b", round=1)
        assert server.url in str(info.value)
        assert "\n" not in str(info.value)
        with pytest.raises(SplitClientError, match="another token"):
            SplitClient(server.url, "a-token-of-a-rerun", client="0").check_server(run="e/run-a", round=1)
        with pytest.raises(SplitClientError, match="round 2"):
            mine.check_server(run="e/run-a", round=2)
        assert all(c.seen == 0 for c in server.clients.values())
    finally:
        server.close()
    with pytest.raises(ServerGone, match=f"split server {server.url} is not running"):
        SplitClient(server.url, TOKEN, client="0", timeout=2).check_server(run="e/run-a", round=1)


def test_after_the_round_the_server_says_ending_and_refuses_round_requests_until_closed(one_client):
    server = one_client[0]
    server.idle_timeout = 0.1
    with pytest.raises(SplitServerError, match="0 of 1 clients finished"):
        server.wait(poll=0.05, close=False)
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
        assert json.loads(response.read())["status"] == "ending"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    body = encode({"activations": np.zeros((1, 32, 7, 7), np.float32), "indices": np.arange(1)})
    code, doc = _post(f"{server.url}/v1/forward?client=0&epoch=1", body, auth)
    assert code == 410
    assert "over" in doc["error"]
    code, _ = _post(f"{server.url}/v1/done?client=0", b"{}", {**auth, "Content-Type": "application/json"})
    assert code == 410
    assert server.clients["0"].seen == 0


def test_stop_ends_the_round_without_a_result(one_client):
    server = one_client[0]
    server.idle_timeout = 3600
    threading.Timer(0.2, server.stop, args=("stopped by SIGTERM",)).start()
    with pytest.raises(SplitServerError, match="stopped by SIGTERM"):
        server.wait(poll=0.05)


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 403), ({"Authorization": f"Basic {TOKEN}"}, 403)],
)
def test_requests_without_the_round_token_are_refused(one_client, headers, status):
    server, _, _x, _ = one_client
    body = encode({"activations": np.zeros((2, 32, 7, 7), np.float32), "indices": np.arange(2)})
    code, doc = _post(
        f"{server.url}/v1/forward?client=0&epoch=1",
        body,
        {**headers, "Content-Type": "application/octet-stream"},
    )
    assert code == status
    assert "token" in doc["error"].lower() or "authorization" in doc["error"].lower()
    assert all(s.seen == 0 for s in server.clients.values())


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"activations": np.zeros((2, 32, 7, 8), np.float32), "indices": np.arange(2)}, "shape"),
        ({"activations": np.zeros((2, 32, 7, 7), np.float64), "indices": np.arange(2)}, "float32"),
        (
            {"activations": np.zeros((2, 32, 7, 7), np.float32), "indices": np.arange(2, dtype=np.int32)},
            "int64",
        ),
        ({"activations": np.zeros((2, 32, 7, 7), np.float32)}, "expected tensors"),
        ({"activations": np.zeros((2, 32, 7, 7), np.float32), "indices": np.arange(3)}, "indices"),
        ({"activations": np.zeros((2, 32, 7, 7), np.float32), "indices": np.array([0, 10_000])}, "indices"),
    ],
)
def test_wrong_tensors_get_a_4xx_with_a_message(one_client, arrays, fragment):
    server = one_client[0]
    code, doc = _post(
        f"{server.url}/v1/forward?client=0&epoch=1",
        encode(arrays),
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"},
    )
    assert 400 <= code < 500
    assert fragment in doc["error"]


def test_not_safetensors_and_unknown_client_are_refused(one_client):
    server = one_client[0]
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    code, doc = _post(f"{server.url}/v1/forward?client=0&epoch=1", b"\x80\x04pickle", auth)
    assert code == 422
    assert "safetensors" in doc["error"]
    body = encode({"activations": np.zeros((1, 32, 7, 7), np.float32), "indices": np.arange(1)})
    code, doc = _post(f"{server.url}/v1/forward?client=9&epoch=1", body, auth)
    assert code in (404, 422)
    assert "client" in doc["error"]


def test_wire_format_round_trips_without_pickle():
    grad = np.random.default_rng(0).standard_normal((4, 32, 7, 7)).astype(np.float32)
    data = encode({"gradients": grad})
    assert b"pickle" not in data
    np.testing.assert_array_equal(decode(data, where="t")["gradients"], grad)


def _run_client(
    server: SplitServer, x: np.ndarray, idx: np.ndarray, client: str, *, batches: int | None
) -> None:
    """Train a client; with ``batches`` send that many and vanish without saying done."""
    full = _model()
    bottom, _ = split_model(full, "pool2")
    half = TorchBottom(bottom, lr=LR, momentum=MOMENTUM)
    channel = SplitClient(server.url, TOKEN, client=client, timeout=10)
    if batches is None:
        train_split(half, channel, x[idx], idx, epochs=1, batch_size=32, seed=1)
        channel.done()
    else:
        for b in range(batches):
            batch = idx[b * 16 : (b + 1) * 16]
            half.backward(channel.forward(half.forward(x[batch]), batch, epoch=1))
    channel.close()


def _two_clients(mode: str, min_clients: int) -> tuple[SplitServer, np.ndarray, np.ndarray, np.ndarray]:
    x, y = _data(128)
    owner = np.arange(len(y)) % 2
    server, _ = _server(y, owner, clients=["0", "1"], mode=mode, min_clients=min_clients, idle_timeout=1.0)
    return server, x, y, owner


def test_splitfed_client_that_disconnects_round_completes_with_the_others():
    server, x, _, owner = _two_clients("splitfed", min_clients=1)
    _run_client(server, x, np.flatnonzero(owner == 1), "1", batches=2)  # vanishes mid-epoch
    _run_client(server, x, np.flatnonzero(owner == 0), "0", batches=None)
    started = time.monotonic()
    result = server.wait(poll=0.05)
    assert time.monotonic() - started < 60  # no hang (a bound a loaded machine meets)
    assert result.clients == ["0"]
    assert result.examples == 64


def test_splitfed_top_is_the_example_weighted_mean_of_the_clients_copies():
    # SplitFed v1 (Thapa et al. 2022): the server's per-client copies are averaged as FedAvg does,
    # Σ n_k·w_k / Σ n_k, here with 96 and 32 examples
    x, y = _data(128)
    owner = (np.arange(len(y)) % 4 == 0).astype(np.int64)
    server, _ = _server(y, owner, clients=["0", "1"], mode="splitfed", min_clients=2, idle_timeout=5.0)
    try:
        for client in ("0", "1"):
            _run_client(server, x, np.flatnonzero(owner == int(client)), client, batches=None)
        result = server.wait(poll=0.05)
        copies = {c: server.clients[c].top.weights() for c in ("0", "1")}
    finally:
        server.close()
    assert result.examples == 128
    assert copies["0"]["logits.weight"].tobytes() != copies["1"]["logits.weight"].tobytes()
    for name, value in result.weights.items():
        want = (copies["0"][name].astype(np.float64) * 96 + copies["1"][name].astype(np.float64) * 32) / 128
        np.testing.assert_array_equal(value, want.astype(value.dtype), err_msg=name)


def test_client_that_disconnects_below_min_clients_fails_the_round_with_a_clear_error():
    server, x, _, owner = _two_clients("splitfed", min_clients=2)
    _run_client(server, x, np.flatnonzero(owner == 0), "0", batches=None)
    # a client that dies in the middle of sending a body: the server must not hang on it
    host, port = server.address
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            f"POST /v1/forward?client=1&epoch=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"\0" * 100
        )
    started = time.monotonic()
    with pytest.raises(SplitServerError, match=r"1 of 2 clients finished .*min_clients=2"):
        server.wait(poll=0.05)
    assert time.monotonic() - started < 60  # no hang (a bound a loaded machine meets)


def test_vanilla_round_ends_when_the_last_client_in_turn_is_done():
    server, x, _, owner = _two_clients("vanilla", min_clients=1)
    server.idle_timeout = 60  # must not be needed
    _run_client(server, x, np.flatnonzero(owner == 0), "0", batches=2)  # crashed mid-turn
    _run_client(server, x, np.flatnonzero(owner == 1), "1", batches=None)
    started = time.monotonic()
    result = server.wait(poll=0.05)
    assert time.monotonic() - started < 30  # well before the 60 s idle timeout
    assert result.clients == ["1"]


def test_client_reports_server_errors_in_one_line():
    _x, y = _data(32)
    server, _ = _server(y, np.zeros(len(y), dtype=np.int64), clients=["0"], mode="vanilla")
    try:
        channel = SplitClient(server.url, "not-the-token", client="0", timeout=5)
        with pytest.raises(SplitClientError, match="403: wrong token"):
            channel.forward(np.zeros((1, 32, 7, 7), np.float32), np.arange(1), epoch=1)
    finally:
        server.close()
    dead = SplitClient(server.url, TOKEN, client="0", timeout=2)
    with pytest.raises(SplitClientError, match="failed on /v1/forward"):
        dead.forward(np.zeros((1, 32, 7, 7), np.float32), np.arange(1), epoch=1)


def test_bad_cut_is_refused_with_the_layer_names():
    from argofl.steps.frameworks.base import FrameworkError

    with pytest.raises(FrameworkError, match="conv1"):
        split_model(_model(), "logits")


def test_evaluate_waits_for_a_live_server_and_fails_at_once_when_it_is_gone(tmp_path):
    from argofl.steps.checkpoint import save_checkpoint
    from argofl.steps.runinfo import RunError
    from argofl.steps.split.settings import SplitOptions, token_key, top_key
    from argofl.steps.split.steps import GONE_CHECKS, _await_top
    from argofl.steps.store import FileStore

    store, run = FileStore(tmp_path), "e/run-a"
    store.put_bytes(token_key(run), TOKEN.encode())
    options = SplitOptions(idle_timeout=3600)  # never the reason evaluate stops waiting
    _x, y = _data(32)
    server, _ = _server(y, np.zeros(len(y), np.int64), clients=["0"], mode="vanilla", run=run, round=1)
    # alive: evaluate waits (longer than it takes to deem a dead server gone) until the half is stored
    half = {"w": np.ones(2, np.float32)}
    threading.Timer(GONE_CHECKS + 2.0, save_checkpoint, (store, top_key(run, 1), half), {"round": 1}).start()
    _await_top(store, run, 1, options, server.url, 120)
    # gone (and round 2's half never stored): evaluate gives up after a few checks, naming the server
    server.close()
    with pytest.raises(RunError, match=f"round 2: .*never appear.*split server {server.url} is not running"):
        _await_top(store, run, 2, options, server.url, 120)
