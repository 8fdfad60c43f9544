"""The Keras (TensorFlow) backend: weights round trip, strict loading, learning, determinism, lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.require import require_module

require_module("tensorflow")

from argofl.steps.data import Dataset, DatasetError, load_dataset  # noqa: E402
from argofl.steps.frameworks import Backend, FrameworkError, TrainingDiverged, WeightsMismatch, get_backend  # noqa: E402

pytestmark = pytest.mark.tensorflow

ROOT = Path(__file__).resolve().parents[1]
HPARAMS: dict[str, Any] = {"epochs": 1, "batch_size": 32, "lr": 0.03, "momentum": 0.9}


@pytest.fixture(scope="module")
def backend() -> Backend:
    b = get_backend("tensorflow")
    b.configure(threads=1, deterministic=True)
    return b


@pytest.fixture(scope="module")
def fmnist() -> tuple[Dataset, Dataset]:
    try:
        train = load_dataset("fashion-mnist", "train", limit=2000)
        test = load_dataset("fashion-mnist", "test", limit=1000)
    except DatasetError as exc:
        pytest.skip(str(exc))
    return train, test


def build(
    backend: Backend, model: str = "cnn", seed: int = 0, input_shape: tuple[int, int, int] = (28, 28, 1)
) -> Any:
    return backend.build_model(model, input_shape=input_shape, num_classes=10, seed=seed)


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def differs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(a[k], b[k]) for k in a)


def test_backend_name_and_unknown_framework(backend: Backend) -> None:
    assert backend.name == "tensorflow"
    assert isinstance(backend, Backend)
    assert get_backend("tensorflow") is backend
    with pytest.raises(FrameworkError, match=r"'jax'.*torch, tensorflow"):
        get_backend("jax")


def test_same_seed_same_init_and_stable_names(backend: Backend) -> None:
    a, b, c = (backend.get_weights(build(backend, seed=s)) for s in (0, 0, 1))
    assert_same(a, b)
    assert differs(a, c)
    assert "conv1/kernel" in a
    assert all(v.dtype == np.float32 for v in a.values())


def test_get_set_round_trip_is_exact_and_copies(backend: Backend) -> None:
    source, target = build(backend, seed=0), build(backend, seed=1)
    weights = backend.get_weights(source)
    for array in weights.values():
        array.setflags(write=False)  # as loaded from a checkpoint buffer
    backend.set_weights(target, weights)
    assert_same(backend.get_weights(target), weights)
    weights = backend.get_weights(source)
    weights["conv1/bias"][:] = 123.0  # the returned arrays are copies
    assert not np.any(backend.get_weights(source)["conv1/bias"] == 123.0)


def bn_net(input_shape: tuple[int, int, int], num_classes: int) -> Any:
    """Auto-named layers, with non-trainable weights (BatchNormalization's moving statistics)."""
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(2, 3),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes),
        ]
    )


def test_non_trainable_weights_included_and_auto_names_stable(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("argofl_test_factories")
    module.bn_net = bn_net  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "argofl_test_factories", module)
    first = backend.get_weights(build(backend, "argofl_test_factories:bn_net", input_shape=(6, 6, 1)))
    second = backend.get_weights(build(backend, "argofl_test_factories:bn_net", input_shape=(6, 6, 1)))
    assert list(first) == list(second)
    assert {"batch_normalization/moving_mean", "batch_normalization/moving_variance"} <= set(first)
    assert len(first) == 8


def test_set_weights_is_strict_and_names_the_problem(backend: Backend) -> None:
    model = build(backend)
    good = backend.get_weights(model)
    bad = dict(good, **{"fc1/kernel": np.zeros((3, 3), np.float32)})
    with pytest.raises(WeightsMismatch, match=r"fc1/kernel \(3, 3\) != \(1568, 128\)"):
        backend.set_weights(model, bad)
    missing = {k: v for k, v in good.items() if k != "classifier/bias"}
    with pytest.raises(WeightsMismatch, match=r"missing classifier/bias"):
        backend.set_weights(model, missing)
    with pytest.raises(WeightsMismatch, match=r"unexpected extra\.weight"):
        backend.set_weights(model, dict(good, **{"extra.weight": np.zeros(1)}))
    assert_same(backend.get_weights(model), good)  # unchanged after a refused load


def test_training_improves_test_accuracy(backend: Backend, fmnist: tuple[Dataset, Dataset]) -> None:
    train, test = fmnist
    model = build(backend)
    before = backend.evaluate(model, test.x, test.y, batch_size=500)
    metrics = backend.train(model, train.x, train.y, seed=0, **HPARAMS)
    after = backend.evaluate(model, test.x, test.y, batch_size=500)
    assert set(metrics) == {"loss", "accuracy", "examples"}
    assert metrics["examples"] == len(train)
    assert after["examples"] == len(test)
    assert np.isfinite(metrics["loss"])
    assert after["accuracy"] > before["accuracy"] + 0.2
    assert after["loss"] < before["loss"]


def test_training_is_deterministic_and_depends_only_on_inputs(
    backend: Backend, fmnist: tuple[Dataset, Dataset]
) -> None:
    train, _ = fmnist
    x, y = train.x[:320], train.y[:320]
    start = backend.get_weights(build(backend))

    def run(seed: int, model: Any = None) -> dict[str, np.ndarray]:
        model = model if model is not None else build(backend, seed=99)  # other init, overwritten
        backend.set_weights(model, start)
        metrics = backend.train(model, x, y, seed=seed, **HPARAMS)
        return {**backend.get_weights(model), "metrics": np.array([metrics["loss"], metrics["accuracy"]])}

    reused = build(backend, seed=5)
    first = run(7, reused)
    assert_same(run(7), first)  # a fresh model object
    assert_same(run(7, reused), first)  # the same object again: no optimizer state carried over
    assert differs(run(8), first)


def test_divergence_is_reported(backend: Backend, fmnist: tuple[Dataset, Dataset]) -> None:
    train, _ = fmnist
    model = build(backend)
    weights = backend.get_weights(model)
    weights["classifier/bias"][0] = np.nan
    backend.set_weights(model, weights)
    with pytest.raises(TrainingDiverged, match=r"epoch 1/1, batch 1\b"):
        backend.train(model, train.x[:64], train.y[:64], seed=0, **HPARAMS)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"lr": 0.0}, "lr=0.0"), ({"batch_size": 0}, "batch_size=0"), ({"momentum": 1.0}, "momentum=1.0")],
)
def test_bad_hyperparameters(
    backend: Backend, fmnist: tuple[Dataset, Dataset], change: dict[str, float], match: str
) -> None:
    train, _ = fmnist
    with pytest.raises(FrameworkError, match=match):
        backend.train(build(backend), train.x[:8], train.y[:8], seed=0, **{**HPARAMS, **change})


def test_bad_inputs(backend: Backend) -> None:
    model = build(backend)
    with pytest.raises(FrameworkError, match="uint8"):
        backend.evaluate(model, np.zeros((2, 28, 28, 1), np.float32), np.zeros(2, np.int64), batch_size=2)
    with pytest.raises(FrameworkError, match="labels"):
        backend.evaluate(model, np.zeros((2, 28, 28, 1), np.uint8), np.zeros(3, np.int64), batch_size=2)


def test_mlp_and_cifar_shapes(backend: Backend) -> None:
    for model, shape in (("mlp", (28, 28, 1)), ("cnn", (32, 32, 3)), ("mlp", (32, 32, 3))):
        net = build(backend, model, input_shape=shape)
        x = np.zeros((3, *shape), np.uint8)
        result = backend.evaluate(net, x, np.zeros(3, np.int64), batch_size=2)
        assert result["examples"] == 3


def test_custom_factory(
    backend: Backend, fmnist: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    train, test = fmnist
    model = build(backend, "examples.custom_models:keras_tiny_cnn")
    import keras

    assert isinstance(model, keras.Model)
    weights = backend.get_weights(model)
    metrics = backend.train(model, train.x[:500], train.y[:500], seed=0, **HPARAMS)
    assert np.isfinite(metrics["loss"])
    assert differs(backend.get_weights(model), weights)
    assert backend.evaluate(model, test.x[:100], test.y[:100], batch_size=50)["examples"] == 100


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("resnet9000", r"unknown model 'resnet9000'.*cnn, mlp"),
        ("no_such_module_xyz:factory", "cannot import model factory module 'no_such_module_xyz'"),
        ("examples.custom_models:nope", r"'examples.custom_models:nope' is not a callable"),
        ("builtins:slice", "returned slice, not a keras.Model"),
        ("os.path:join", r"model 'os.path:join' could not be built for input \(28, 28, 1\), 10 classes"),
    ],
)
def test_bad_model_references(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, ref: str, match: str
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    with pytest.raises(FrameworkError, match=match):
        build(backend, ref)


def test_log_model_to_the_active_run(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    model = build(backend, "mlp")
    with pytest.raises(FrameworkError, match="no active mlflow run"):
        backend.log_model(model, name="global")
    # through the environment, as steps are configured: mlflow.set_tracking_uri would outlive this test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run():
        uri = backend.log_model(model, name="global", input_example=np.zeros((2, 28, 28, 1), np.uint8))
    loaded = mlflow.tensorflow.load_model(uri)
    assert_same(backend.get_weights(loaded), backend.get_weights(model))


def run_isolated(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tensorflow_process_never_imports_torch() -> None:
    out = run_isolated(
        "import sys, numpy as np\n"
        "from argofl.steps.frameworks import get_backend\n"
        "b = get_backend('tensorflow'); b.configure(threads=1)\n"
        "m = b.build_model('mlp', input_shape=(28, 28, 1), num_classes=10, seed=0)\n"
        "x = np.zeros((8, 28, 28, 1), np.uint8); y = np.zeros(8, np.int64)\n"
        "b.set_weights(m, b.get_weights(m))\n"
        "b.train(m, x, y, epochs=1, batch_size=4, lr=0.01, momentum=0.9, seed=0)\n"
        "b.evaluate(m, x, y, batch_size=4)\n"
        "print('tensorflow' in sys.modules, sorted(k for k in ('torch', 'mlflow') if k in sys.modules))"
    )
    assert out.strip().splitlines()[-1] == "True []"
