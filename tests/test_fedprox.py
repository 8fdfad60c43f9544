"""FedProx on both backends: μ = 0 is plain training bit for bit, μ > 0 is the proximal objective."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from argofl.steps.data import DatasetError, load_dataset
from argofl.steps.frameworks import Backend, FrameworkError, get_backend

FRAMEWORKS = ["torch", pytest.param("tensorflow", marks=pytest.mark.tensorflow)]
HPARAMS: dict[str, Any] = {"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "seed": 3}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    try:
        train = load_dataset("fashion-mnist", "train", limit=256)
    except DatasetError as exc:
        pytest.skip(str(exc))
    return train.x, train.y


def backend_for(framework: str) -> Backend:
    pytest.importorskip("torch" if framework == "torch" else "tensorflow")
    backend = get_backend(framework)
    backend.configure(threads=1)
    return backend


def trained(backend: Backend, data: tuple[np.ndarray, np.ndarray], **extra: Any) -> dict[str, np.ndarray]:
    model = backend.build_model("mlp", input_shape=(28, 28, 1), num_classes=10, seed=0)
    backend.train(model, data[0], data[1], **HPARAMS, **extra)
    return backend.get_weights(model)


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_prox_mu_zero_is_plain_training_bit_for_bit(framework, data):
    backend = backend_for(framework)
    plain, prox0 = trained(backend, data), trained(backend, data, prox_mu=0.0)
    assert all(plain[k].tobytes() == prox0[k].tobytes() for k in plain)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_proximal_term_keeps_weights_near_the_start(framework, data):
    backend = backend_for(framework)
    start = backend.get_weights(backend.build_model("mlp", input_shape=(28, 28, 1), num_classes=10, seed=0))
    free = distance(trained(backend, data), start)
    tiny = trained(backend, data, prox_mu=1e-9)
    held = distance(trained(backend, data, prox_mu=5.0), start)
    assert held < 0.6 * free, (held, free)
    # a negligible μ follows the plain training path closely (same loss, gradients and optimizer)
    assert distance(tiny, start) == pytest.approx(free, rel=1e-3)


def test_torch_proximal_gradient_equals_autograd_of_the_proximal_loss(data):
    torch = pytest.importorskip("torch")
    backend = backend_for("torch")
    mu = 0.7
    got = trained(backend, data, prox_mu=mu)

    model = backend.build_model("mlp", input_shape=(28, 28, 1), num_classes=10, seed=0)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=HPARAMS["lr"], momentum=HPARAMS["momentum"])
    x = torch.from_numpy(data[0].astype(np.float32) / 255).permute(0, 3, 1, 2)
    y = torch.from_numpy(data[1].astype(np.int64))
    order = np.random.default_rng(HPARAMS["seed"]).permutation(len(y))
    for begin in range(0, len(order), HPARAMS["batch_size"]):
        idx = torch.from_numpy(order[begin : begin + HPARAMS["batch_size"]])
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss = loss + mu / 2 * sum(
            ((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True)
        )
        loss.backward()
        optimizer.step()
    expected = backend.get_weights(model)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_proximal_step_adds_mu_times_the_distance_from_the_start(framework, data):
    # Li et al. 2020: ∇(F + μ/2·‖w − w_t‖²) = ∇F + μ·(w − w_t). Two plain SGD steps (no momentum) on two
    # half batches: the first is the same with or without the term (w = w_t there), so after the second
    # FedProx's weights differ from plain training's by exactly −lr·μ·(w_1 − w_t)
    backend = backend_for(framework)
    mu, lr, half = 2.0, 0.1, len(data[1]) // 2
    hparams = {**HPARAMS, "momentum": 0.0, "lr": lr, "batch_size": half}

    def train(x: np.ndarray, y: np.ndarray, **extra: Any) -> dict[str, np.ndarray]:
        model = backend.build_model("mlp", input_shape=(28, 28, 1), num_classes=10, seed=0)
        if len(y):
            backend.train(model, x, y, **hparams, **extra)
        return backend.get_weights(model)

    first = np.random.default_rng(HPARAMS["seed"]).permutation(len(data[1]))[:half]  # epoch_orders
    start = train(data[0][:0], data[1][:0])
    one_step = train(data[0][first], data[1][first])
    plain, prox = train(*data), train(*data, prox_mu=mu)
    for name, w0 in start.items():
        want = -lr * mu * (one_step[name].astype(np.float64) - w0)
        got = prox[name].astype(np.float64) - plain[name]
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-6, err_msg=name)
        assert np.abs(want).max() > 1e-4, name  # the term moved every tensor measurably


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_negative_prox_mu_is_refused(framework, data):
    backend = backend_for(framework)
    model = backend.build_model("mlp", input_shape=(28, 28, 1), num_classes=10, seed=0)
    with pytest.raises(FrameworkError, match=r"prox_mu=-1\.0 must be a finite number >= 0"):
        backend.train(model, data[0], data[1], **HPARAMS, prox_mu=-1.0)


def regularized_mlp(input_shape: tuple[int, int, int], num_classes: int) -> Any:
    """A Keras MLP with an L2 kernel regularizer: its penalty is part of the loss clients minimise."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", kernel_regularizer=keras.regularizers.L2(0.05)),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )


@pytest.mark.tensorflow
def test_keras_proximal_objective_keeps_the_models_own_regularization_losses(data):
    # FedProx minimises F_k(w) + μ/2·‖w − w_t‖², F_k the client's full objective: a negligible μ must
    # follow plain training (which adds the model's regularization losses), not drop the regularizer
    backend = backend_for("tensorflow")
    model_ref = "tests.test_fedprox:regularized_mlp"

    def train(epochs: int, **extra: Any) -> dict[str, np.ndarray]:
        model = backend.build_model(model_ref, input_shape=(28, 28, 1), num_classes=10, seed=0)
        if epochs:
            backend.train(model, data[0], data[1], **{**HPARAMS, "epochs": epochs}, **extra)
        return backend.get_weights(model)

    start, plain, tiny = train(0), train(1), train(1, prox_mu=1e-9)
    apart, moved = distance(tiny, plain), distance(plain, start)
    assert apart < 1e-3 * moved, (apart, moved)
