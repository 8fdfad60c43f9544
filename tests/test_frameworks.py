"""Every backend (torch, Keras/TensorFlow): weights round trip, strict loading, learning, determinism,
factories, MLflow logging and lazy imports; then what only one backend has.

The shared tests run once per :data:`CASES` entry; a ``Case`` holds what differs between backends
(weight names and layouts, model types, MLflow flavour). The Keras cases carry the ``tensorflow``
marker, as the backend-specific Keras tests do. torch and TensorFlow are imported only by the fixtures
and tests that use them, so a machine without one still runs the other's tests.
"""

from __future__ import annotations

import importlib
import operator
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from argofl.steps.data import Dataset, DatasetError, load_dataset
from argofl.steps.frameworks import (
    BUILTIN_MODELS,
    Backend,
    FrameworkError,
    TrainingDiverged,
    WeightsMismatch,
    get_backend,
)
from argofl.steps.settings import EVAL_BATCH_SIZE
from tests.require import require_module

ROOT = Path(__file__).resolve().parents[1]
HPARAMS: dict[str, Any] = {"epochs": 1, "batch_size": 32, "lr": 0.03, "momentum": 0.9}


@dataclass(frozen=True)
class Case:
    """What the shared tests expect of one backend."""

    framework: str  # get_backend's name, also the module that must be importable
    conv_weight: str  # the built-in cnn's first convolution kernel and bias
    conv_bias: str
    fc1_weight: str  # the cnn's first dense layer's weight and its shape
    fc1_shape: tuple[int, int]
    logits_bias: str  # the cnn's last layer's bias
    model_type: str  # what a factory must return, as the error message names it
    tiny_factory: str  # examples/custom_models.py's factory for this backend
    mlflow_flavor: str  # mlflow.<flavor>.load_model reads the logged model

    def model_class(self) -> type:
        """The class named by ``model_type`` (imports the framework)."""
        module, _, path = self.model_type.partition(".")
        cls: type = operator.attrgetter(path)(importlib.import_module(module))
        return cls


TORCH = Case(
    framework="torch",
    conv_weight="conv1.weight",
    conv_bias="conv1.bias",
    fc1_weight="fc1.weight",
    fc1_shape=(128, 1568),
    logits_bias="logits.bias",
    model_type="torch.nn.Module",
    tiny_factory="examples.custom_models:torch_tiny_cnn",
    mlflow_flavor="pytorch",
)
KERAS = Case(
    framework="tensorflow",
    conv_weight="conv1/kernel",
    conv_bias="conv1/bias",
    fc1_weight="fc1/kernel",
    fc1_shape=(1568, 128),
    logits_bias="classifier/bias",
    model_type="keras.Model",
    tiny_factory="examples.custom_models:keras_tiny_cnn",
    mlflow_flavor="tensorflow",
)
CASES = [pytest.param(TORCH, id="torch"), pytest.param(KERAS, id="keras", marks=pytest.mark.tensorflow)]


def configured(framework: str) -> Backend:
    """The process's backend for ``framework`` (skipped, or failed under CI, when not installed)."""
    require_module(framework)
    b = get_backend(framework)
    b.configure(threads=1, deterministic=True)
    return b


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    return c


@pytest.fixture(scope="module")
def backend(case: Case) -> Backend:
    return configured(case.framework)


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


def run_isolated(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_step_process(framework: str) -> str:
    """Python source that builds, trains and evaluates an mlp on ``framework`` as a step process does."""
    return (
        "import sys, numpy as np\n"
        "from argofl.steps.frameworks import get_backend\n"
        f"b = get_backend({framework!r}); b.configure(threads=1)\n"
        "m = b.build_model('mlp', input_shape=(28, 28, 1), num_classes=10, seed=0)\n"
        "x = np.zeros((8, 28, 28, 1), np.uint8); y = np.zeros(8, np.int64)\n"
        "b.set_weights(m, b.get_weights(m))\n"
        "b.train(m, x, y, epochs=1, batch_size=4, lr=0.01, momentum=0.9, seed=0)\n"
        "b.evaluate(m, x, y, batch_size=4)\n"
    )


# ---- every backend ------------------------------------------------------------------------------


def test_backend_name_and_unknown_framework(case: Case, backend: Backend) -> None:
    assert backend.name == case.framework
    assert isinstance(backend, Backend)
    assert get_backend(case.framework) is backend
    with pytest.raises(FrameworkError, match=r"'jax'.*torch, tensorflow"):
        get_backend("jax")


def test_same_seed_same_init_and_stable_names(case: Case, backend: Backend) -> None:
    a, b, c = (backend.get_weights(build(backend, seed=s)) for s in (0, 0, 1))
    assert_same(a, b)
    assert differs(a, c)
    assert case.conv_weight in a
    assert all(v.dtype == np.float32 for v in a.values())


def test_get_set_round_trip_is_exact_and_copies(case: Case, backend: Backend) -> None:
    source, target = build(backend, seed=0), build(backend, seed=1)
    weights = backend.get_weights(source)
    for array in weights.values():
        array.setflags(write=False)  # as loaded from a checkpoint buffer
    backend.set_weights(target, weights)
    assert_same(backend.get_weights(target), weights)
    weights = backend.get_weights(source)
    weights[case.conv_bias][:] = 123.0  # the returned arrays are copies
    assert not np.any(backend.get_weights(source)[case.conv_bias] == 123.0)


def test_set_weights_is_strict_and_names_the_problem(case: Case, backend: Backend) -> None:
    model = build(backend)
    good = backend.get_weights(model)
    bad = dict(good, **{case.fc1_weight: np.zeros((3, 3), np.float32)})
    expected = re.escape(f"{case.fc1_weight} (3, 3) != {case.fc1_shape}")
    with pytest.raises(WeightsMismatch, match=expected):
        backend.set_weights(model, bad)
    missing = {k: v for k, v in good.items() if k != case.logits_bias}
    with pytest.raises(WeightsMismatch, match=re.escape(f"missing {case.logits_bias}")):
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


def test_evaluation_does_not_depend_on_the_batch_size(
    backend: Backend, fmnist: tuple[Dataset, Dataset]
) -> None:
    """The default evaluation batch (256) was chosen for speed: the metrics are those of any batching."""
    train, test = fmnist
    model = build(backend)
    backend.train(model, train.x, train.y, seed=0, **HPARAMS)
    by_default = backend.evaluate(model, test.x, test.y, batch_size=EVAL_BATCH_SIZE)
    whole = backend.evaluate(model, test.x, test.y, batch_size=len(test))
    assert by_default["examples"] == whole["examples"] == len(test)
    assert by_default["accuracy"] == whole["accuracy"]
    assert by_default["loss"] == pytest.approx(whole["loss"], rel=1e-5)


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


def test_divergence_is_reported(case: Case, backend: Backend, fmnist: tuple[Dataset, Dataset]) -> None:
    train, _ = fmnist
    model = build(backend)
    weights = backend.get_weights(model)
    weights[case.logits_bias][0] = np.nan
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


@pytest.mark.parametrize("model", list(BUILTIN_MODELS))
def test_every_builtin_model_builds_and_trains(backend: Backend, model: str) -> None:
    """``BUILTIN_MODELS`` is what settings accept: each backend must build every name in it."""
    net = build(backend, model)
    x, y = np.zeros((4, 28, 28, 1), np.uint8), np.zeros(4, np.int64)
    assert backend.train(net, x, y, seed=0, **{**HPARAMS, "batch_size": 2})["examples"] == 4


def test_custom_factory(
    case: Case, backend: Backend, fmnist: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    train, test = fmnist
    model = build(backend, case.tiny_factory)
    assert isinstance(model, case.model_class())
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
        ("builtins:slice", "returned slice, not a {model_type}"),
        ("os.path:join", r"model 'os.path:join' could not be built for input \(28, 28, 1\), 10 classes"),
    ],
)
def test_bad_model_references(
    case: Case, backend: Backend, monkeypatch: pytest.MonkeyPatch, ref: str, match: str
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    with pytest.raises(FrameworkError, match=match.replace("{model_type}", re.escape(case.model_type))):
        build(backend, ref)


def test_log_model_to_the_active_run(
    case: Case, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    model = build(backend, "mlp")
    with pytest.raises(FrameworkError, match="no active mlflow run"):
        backend.log_model(model, name="global")
    # through the environment, as steps are configured: mlflow.set_tracking_uri would outlive this test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run():
        uri = backend.log_model(model, name="global", input_example=np.zeros((2, 28, 28, 1), np.uint8))
    loaded = getattr(mlflow, case.mlflow_flavor).load_model(uri)
    assert_same(backend.get_weights(loaded), backend.get_weights(model))


def test_package_import_loads_no_framework() -> None:
    out = run_isolated(
        "import sys, argofl.steps.frameworks, argofl.steps.data, argofl.steps.partition\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    )
    assert out.strip() == "[]"


# ---- torch only ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_backend() -> Backend:
    return configured("torch")


def torch_bn_net(input_shape: tuple[int, int, int], num_classes: int) -> Any:
    """A model with buffers (BatchNorm's running statistics and its int64 batch counter)."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(input_shape[2], 2, 3),
        torch.nn.BatchNorm2d(2),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(num_classes),
    )


def test_torch_buffers_are_included(torch_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = torch_backend
    module = types.ModuleType("argofl_test_factories")
    module.bn_net = torch_bn_net  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "argofl_test_factories", module)
    net = build(backend, "argofl_test_factories:bn_net", input_shape=(6, 6, 1))
    backend.evaluate(net, np.zeros((2, 6, 6, 1), np.uint8), np.zeros(2, np.int64), batch_size=2)  # init lazy
    weights = backend.get_weights(net)
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(weights)
    assert weights["1.num_batches_tracked"].dtype == np.int64
    other = build(backend, "argofl_test_factories:bn_net", input_shape=(6, 6, 1))
    backend.evaluate(other, np.zeros((2, 6, 6, 1), np.uint8), np.zeros(2, np.int64), batch_size=2)
    backend.set_weights(other, weights)
    assert_same(backend.get_weights(other), weights)


def test_torch_process_never_imports_tensorflow() -> None:
    require_module("torch")
    out = run_isolated(
        one_step_process("torch") + "heavy = ('tensorflow', 'keras', 'mlflow', 'torch._inductor')\n"
        "others = sorted(k for k in heavy if k in sys.modules)\n"
        "import torch; print('torch' in sys.modules, torch.are_deterministic_algorithms_enabled(), others)"
    )
    # deterministic algorithms on, without paying TorchInductor's import (torch.compile is never used)
    assert out.strip() == "True True []"


def torch_dropout_net(input_shape: tuple[int, int, int], num_classes: int) -> Any:
    """A model whose training draws from the seeded generator (dropout)."""
    import torch

    size = input_shape[0] * input_shape[1] * input_shape[2]
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(size, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, num_classes)
    )


def test_torch_on_the_cpu_seeds_as_manual_seed_does_without_queueing_accelerator_seeds(
    torch_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``torch.manual_seed`` queues a seed for CUDA, XPU and MTIA with a captured Python stack (~3 ms
    of a step's start); on the CPU the backend seeds the CPU generator alone, with the same weights."""
    import torch

    from argofl.steps.frameworks import torch_backend as module

    backend = torch_backend
    factories = types.ModuleType("argofl_test_factories")
    factories.dropout_net = torch_dropout_net  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "argofl_test_factories", factories)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(64, 6, 6, 1), dtype=np.uint8)
    y = rng.integers(0, 10, size=64).astype(np.int64)

    def trained(seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        net = build(backend, "argofl_test_factories:dropout_net", seed=seed, input_shape=(6, 6, 1))
        metrics = backend.train(net, x, y, **HPARAMS, seed=seed)
        return backend.get_weights(net), metrics

    accelerators = (getattr(torch, name, None) for name in ("cuda", "xpu", "mtia"))
    queues = [q for m in accelerators if isinstance(q := getattr(m, "_queued_calls", None), list)]
    queued = [len(q) for q in queues]
    ours = trained(4)
    assert queues
    assert [len(q) for q in queues] == queued
    monkeypatch.setattr(module, "_seed", lambda seed, device: torch.manual_seed(seed))
    public = trained(4)
    assert_same(ours[0], public[0])
    assert ours[1] == public[1]
    assert differs(ours[0], trained(5)[0])  # the seed matters (initial weights and dropout)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_momentum_sgd_matches_torch_optim_sgd_bit_for_bit(torch_backend: Backend, momentum: float) -> None:
    """The clients' SGD (no torch.optim, so no TorchDynamo import) is torch.optim.SGD, exactly."""
    import torch

    from argofl.steps.frameworks.torch_sgd import MomentumSGD

    backend = torch_backend
    ours = backend.build_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=3)
    theirs = backend.build_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=3)
    mine = MomentumSGD(ours.parameters(), lr=0.05, momentum=momentum)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=momentum)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.rand((16, 1, 28, 28), generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        for model, opt in ((ours, mine), (theirs, reference)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert_same(backend.get_weights(ours), backend.get_weights(theirs))
    initial = backend.build_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=3)
    assert differs(backend.get_weights(ours), backend.get_weights(initial))  # and training moved them


# ---- Keras (TensorFlow) only --------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_backend() -> Backend:
    return configured("tensorflow")


def keras_bn_net(input_shape: tuple[int, int, int], num_classes: int) -> Any:
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


@pytest.mark.tensorflow
def test_keras_non_trainable_weights_included_and_auto_names_stable(
    keras_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = keras_backend
    module = types.ModuleType("argofl_test_factories")
    module.bn_net = keras_bn_net  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "argofl_test_factories", module)
    first = backend.get_weights(build(backend, "argofl_test_factories:bn_net", input_shape=(6, 6, 1)))
    second = backend.get_weights(build(backend, "argofl_test_factories:bn_net", input_shape=(6, 6, 1)))
    assert list(first) == list(second)
    assert {"batch_normalization/moving_mean", "batch_normalization/moving_variance"} <= set(first)
    assert len(first) == 8


@pytest.mark.tensorflow
def test_tensorflow_process_never_imports_torch() -> None:
    require_module("tensorflow")
    out = run_isolated(
        one_step_process("tensorflow")
        + "print('tensorflow' in sys.modules, sorted(k for k in ('torch', 'mlflow') if k in sys.modules))"
    )
    assert out.strip().splitlines()[-1] == "True []"
