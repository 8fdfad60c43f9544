"""Split learning with the Keras halves: same server, same wire format; equivalence with centralized Keras."""

from __future__ import annotations

import numpy as np

from tests.require import require_module

require_module("tensorflow")

from argofl.steps.frameworks import get_backend  # noqa: E402
from argofl.steps.split import keras_split  # noqa: E402
from argofl.steps.split.client import SplitClient, train_split  # noqa: E402
from argofl.steps.split.server import SplitServer  # noqa: E402

SHAPE = (28, 28, 1)
LR, MOMENTUM = 0.05, 0.9


def test_one_client_keras_split_equals_centralized_training():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, *SHAPE), dtype=np.uint8)
    y = rng.integers(0, 10, 96).astype(np.int64)
    backend = get_backend("tensorflow")
    backend.configure(threads=1)
    central = backend.build_model("cnn", input_shape=SHAPE, num_classes=10, seed=0)
    backend.train(central, x, y, epochs=1, batch_size=32, lr=LR, momentum=MOMENTUM, seed=7)
    want = backend.get_weights(central)

    full, bottom, top = keras_split.build_halves(
        "cnn", "pool2", input_shape=SHAPE, num_classes=10, seed=0, threads=1
    )
    server = SplitServer(
        make_top=lambda: keras_split.Top(keras_split.clone(top), lr=LR, momentum=MOMENTUM),
        labels_of=lambda client, idx: y[idx],
        token="t0ken",
        clients=["0"],
        mode="splitfed",
        activation_shape=keras_split.activation_shape(bottom, SHAPE),
    ).start()
    channel = SplitClient(server.url, "t0ken", client="0", timeout=30)
    train_split(
        keras_split.Bottom(bottom, lr=LR, momentum=MOMENTUM),
        channel,
        x,
        np.arange(len(x), dtype=np.int64),
        epochs=1,
        batch_size=32,
        seed=7,
    )
    channel.done()
    channel.close()
    result = server.wait(poll=0.05)
    got = {**keras_split.weights_of(bottom), **result.weights}
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # the reassembled weights load into a fresh full model
    backend.set_weights(full, got)
